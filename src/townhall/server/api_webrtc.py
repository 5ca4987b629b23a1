"""WebRTC signalling for speakers: one POST with the SDP offer, the answer in
the reply (non-trickle: the answer carries every ICE candidate).

Who may speak is checked twice: the speaker token (signed for this space) and
the account's current role (a speaker demoted after the token was issued is
refused). The stage itself enforces the seat limit and the SDP rules.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from townhall.errors import Conflict, Forbidden, NotRunningHere
from townhall.server.auth import PROBLEM_RESPONSES, Bearer, services_of, verify

log = logging.getLogger("townhall.media")

router = APIRouter(prefix="/api/spaces/{space_id}", tags=["webrtc"], responses=PROBLEM_RESPONSES)

SpaceId = Annotated[str, Field(min_length=1, max_length=64)]
SPEAKING_ROLES = frozenset({"host", "cohost", "speaker"})


class OfferIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sdp: str = Field(max_length=32 * 1024, description="The SDP offer, with its ICE candidates.")
    type: Literal["offer"] = Field(description="Always 'offer'.")


class AnswerOut(BaseModel):
    sdp: str
    type: Literal["answer"]


@router.post(
    "/webrtc/offer",
    response_model=AnswerOut,
    summary="Connect as a speaker: SDP offer in, SDP answer out (speaker token)",
)
async def webrtc_offer(
    space_id: SpaceId, body: OfferIn, request: Request, _bearer: Bearer
) -> JSONResponse:
    claims = verify(request, "speaker", space_id)
    services = services_of(request)
    role = await services.spaces.current_role(space_id, claims.subject)
    if role not in SPEAKING_ROLES:
        raise Forbidden(
            "You are not on the stage of this space any more"
            + (f" (your role is now {role})" if role else "")
            + "; ask the host to invite you, then get a new speaker token."
        )
    room = services.rooms.get(space_id)
    if room is None:
        space = await services.spaces.get(space_id)
        if space.state == "scheduled":
            raise Conflict("This space has not started yet; connect once the host starts it.")
        if space.state == "ended":
            raise Conflict("This space has ended; nobody can speak in it any more.")
        raise NotRunningHere(
            "This space is live but its audio is not running on this server yet; try again shortly.",
            retry_after_s=2.0,
        )
    assert role is not None
    sdp, type_ = await room.stage.accept_offer(claims.subject, role, body.sdp, body.type)
    return JSONResponse({"sdp": sdp, "type": type_}, headers={"Cache-Control": "no-store"})
