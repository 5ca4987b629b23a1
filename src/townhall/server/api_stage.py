"""The stage of a space: requests to speak, invites, mute, move to the
audience, block. Rules are ``policy.roles``; seats are ``store.spaces``; the
live stage (``room.stage``) is told about mutes and removals when the room runs.

Scaled out, mute, unmute, demote and block of a live room run on another
node reach that node (``server/forward.py`` passes them on); one that lands
here anyway (no owner known, passing on turned off, or the room moved away
since it was passed on) is refused with 503 before anything changes, never
applied to this node's copy. After a change the room's seats are published
at once, so every node's state.json shows it (``live/seats.py``).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from townhall.errors import NotFound, NotRunningHere
from townhall.policy import roles
from townhall.server.auth import PROBLEM_RESPONSES, Session, iso, services_of
from townhall.server.services import Services

log = logging.getLogger("townhall.access")

router = APIRouter(prefix="/api/spaces/{space_id}", tags=["stage"], responses=PROBLEM_RESPONSES)

SpaceId = Annotated[str, Field(min_length=1, max_length=64)]
AccountId = Annotated[str, Field(min_length=1, max_length=64)]


class InviteIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    username: str = Field(min_length=1, max_length=64)
    role: Literal["speaker", "cohost"]


class BlockIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    account_id: str = Field(min_length=1, max_length=64)


class RequestOut(BaseModel):
    account_id: str
    username: str
    display_name: str
    requested_at: str


class RequestsOut(BaseModel):
    requests: list[RequestOut]


class StageChangeOut(BaseModel):
    account_id: str
    role: Literal["host", "cohost", "speaker", "listener"] | None = None
    muted: bool | None = None
    blocked: bool | None = None


async def _actor_role(services: Services, space_id: str, account_id: str) -> str | None:
    return await services.spaces.current_role(space_id, account_id)


async def _target_role(services: Services, space_id: str, account_id: str) -> str | None:
    if await services.accounts.by_id(account_id) is None:
        raise NotFound("There is no such account.")
    return await services.spaces.current_role(space_id, account_id)


async def _authorize(
    services: Services, space_id: str, actor_id: str, action: roles.Action, target_id: str
) -> str | None:
    """Raise unless ``actor_id`` may do ``action`` to ``target_id`` in the space;
    returns the target's current role."""
    actor = await _actor_role(services, space_id, actor_id)
    target = await _target_role(services, space_id, target_id)
    roles.check(actor, action, target, is_self=target_id == actor_id)
    return target


@router.post("/requests", status_code=202, response_model=StageChangeOut, summary="Ask to speak")
async def request_to_speak(space_id: SpaceId, claims: Session, request: Request) -> StageChangeOut:
    services = services_of(request)
    roles.check(await _actor_role(services, space_id, claims.subject), "request_to_speak")
    await services.spaces.add_request(space_id, claims.subject)
    return StageChangeOut(account_id=claims.subject, role="listener")


@router.get("/requests", response_model=RequestsOut, summary="Requests to speak (host, co-hosts)")
async def list_requests(space_id: SpaceId, claims: Session, request: Request) -> RequestsOut:
    services = services_of(request)
    roles.check(await _actor_role(services, space_id, claims.subject), "list_requests")
    pending = await services.spaces.list_requests(space_id)
    return RequestsOut(
        requests=[
            RequestOut(
                account_id=r.account.id,
                username=r.account.username,
                display_name=r.account.display_name,
                requested_at=iso(r.requested_at) or "",
            )
            for r in pending
        ]
    )


@router.post(
    "/requests/{account_id}/approve", response_model=StageChangeOut, summary="Bring up to speak"
)
async def approve_request(
    space_id: SpaceId, account_id: AccountId, claims: Session, request: Request
) -> StageChangeOut:
    services = services_of(request)
    await _authorize(services, space_id, claims.subject, "approve_request", account_id)
    if not await services.spaces.has_request(space_id, account_id):
        raise NotFound("That account has not asked to speak (or the request was answered).")
    await services.spaces.grant(space_id, account_id, "speaker")
    return StageChangeOut(account_id=account_id, role="speaker")


@router.post("/requests/{account_id}/deny", response_model=StageChangeOut, summary="Decline")
async def deny_request(
    space_id: SpaceId, account_id: AccountId, claims: Session, request: Request
) -> StageChangeOut:
    services = services_of(request)
    await _authorize(services, space_id, claims.subject, "deny_request", account_id)
    if not await services.spaces.remove_request(space_id, account_id):
        raise NotFound("That account has not asked to speak (or the request was answered).")
    return StageChangeOut(account_id=account_id, role="listener")


@router.post("/invites", response_model=StageChangeOut, summary="Seat an account at once")
async def invite(
    space_id: SpaceId, body: InviteIn, claims: Session, request: Request
) -> StageChangeOut:
    services = services_of(request)
    account = await services.accounts.by_username(body.username)
    if account is None:
        raise NotFound(f"There is no account '{body.username}'.")
    actor = await _actor_role(services, space_id, claims.subject)
    target = await services.spaces.current_role(space_id, account.id)
    roles.check(actor, "invite", target, is_self=account.id == claims.subject)
    await services.spaces.grant(space_id, account.id, body.role)
    return StageChangeOut(account_id=account.id, role=body.role)


NOT_HERE = (
    "This space's audio runs on another server, and this one could not pass your request on "
    "to it (the room may be moving between servers); nothing was changed. Try again in a few "
    "seconds."
)


def running_room(services: Services, space_id: str) -> Any:
    """The room of the space if it runs here, None if it runs nowhere (not
    live); raises NotRunningHere when it is live on another node."""
    room = services.rooms.get(space_id)
    scaleout = services.rooms.scaleout
    if room is None and scaleout is not None and scaleout.is_live(space_id):
        raise NotRunningHere(NOT_HERE, retry_after_s=2.0)
    return room


def _seats_changed(services: Services) -> None:
    if services.rooms.scaleout is not None:
        services.rooms.scaleout.seats_changed()


async def _set_muted(
    space_id: str, account_id: str, muted: bool, claims_subject: str, services: Services
) -> StageChangeOut:
    target = await _authorize(
        services, space_id, claims_subject, "mute" if muted else "unmute", account_id
    )
    room = running_room(services, space_id)
    if room is not None:
        await room.stage.set_muted(account_id, muted)
        _seats_changed(services)
    return StageChangeOut(account_id=account_id, role=target, muted=muted)


@router.post("/speakers/{account_id}/mute", response_model=StageChangeOut, summary="Mute")
async def mute(
    space_id: SpaceId, account_id: AccountId, claims: Session, request: Request
) -> StageChangeOut:
    return await _set_muted(space_id, account_id, True, claims.subject, services_of(request))


@router.post("/speakers/{account_id}/unmute", response_model=StageChangeOut, summary="Unmute")
async def unmute(
    space_id: SpaceId, account_id: AccountId, claims: Session, request: Request
) -> StageChangeOut:
    return await _set_muted(space_id, account_id, False, claims.subject, services_of(request))


@router.post(
    "/speakers/{account_id}/demote", response_model=StageChangeOut, summary="Move to the audience"
)
async def demote(
    space_id: SpaceId, account_id: AccountId, claims: Session, request: Request
) -> StageChangeOut:
    services = services_of(request)
    await _authorize(services, space_id, claims.subject, "demote", account_id)
    room = running_room(services, space_id)
    await services.spaces.revoke(space_id, account_id)
    if room is not None:
        await room.stage.disconnect(account_id)
        _seats_changed(services)
    return StageChangeOut(account_id=account_id, role="listener")


@router.post("/blocks", response_model=StageChangeOut, summary="Remove and block an account")
async def block(
    space_id: SpaceId, body: BlockIn, claims: Session, request: Request
) -> StageChangeOut:
    services = services_of(request)
    await _authorize(services, space_id, claims.subject, "block", body.account_id)
    room = running_room(services, space_id)
    await services.spaces.block(space_id, body.account_id, claims.subject)
    if room is not None:
        await room.stage.disconnect(body.account_id)
        _seats_changed(services)
    log.info("space %s: %s blocked %s", space_id, claims.subject, body.account_id)
    return StageChangeOut(account_id=body.account_id, role=None, blocked=True)
