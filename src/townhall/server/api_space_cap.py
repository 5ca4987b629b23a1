"""``PATCH /api/spaces/{id}``: the host changes a space's listener cap, before
or during the talk. Lowering it cuts nobody off (listeners in keep renewing);
new joins queue until the space is under the new cap."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from townhall.server.api_spaces import SpaceId, SpaceOut, space_out
from townhall.server.auth import PROBLEM_RESPONSES, Session, request_base, services_of
from townhall.server.space_cap import CAP_DOC, check_cap

router = APIRouter(prefix="/api", tags=["spaces"], responses=PROBLEM_RESPONSES)


class SpacePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_listeners: StrictInt | None = Field(description=CAP_DOC)


@router.patch(
    "/spaces/{space_id}",
    response_model=SpaceOut,
    summary="Change a space's listener cap (host)",
)
async def update_space(
    space_id: SpaceId, body: SpacePatch, claims: Session, request: Request
) -> SpaceOut:
    services = services_of(request)
    check_cap(services.settings, body.max_listeners)
    space = await services.spaces.set_max_listeners(space_id, claims.subject, body.max_listeners)
    return space_out(space, request_base(request))
