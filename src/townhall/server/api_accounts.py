"""Accounts and sessions: sign up, sign in, who am I.

Sign-out revokes on the server: ``DELETE /api/sessions/current`` (or ``POST
/api/sessions/current/revoke``) stops the session token that calls it, and
``POST /api/sessions/revoke-all`` every session of the account ("sign out
everywhere"); with Redis, every node learns of it within
``revocation_sync_ms``.

Sign-in is rate-limited twice: per client network (/24 or /64, every attempt;
behind a trusted proxy the client is read from X-Forwarded-For) and per
account (failed attempts only; checked before the password is hashed, so a
locked account costs the server nothing). With Redis, both limits hold across
nodes; when Redis cannot be reached, sign-in answers 503 (fails closed).
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from townhall import metrics
from townhall.errors import NotFound, Unauthorized
from townhall.server.auth import (
    PROBLEM_RESPONSES,
    Session,
    client_host,
    client_network,
    iso_epoch,
    refuse_if,
    services_of,
)
from townhall.store.accounts import normalize_username

log = logging.getLogger("townhall.access")

router = APIRouter(prefix="/api", tags=["accounts"], responses=PROBLEM_RESPONSES)


class SignUp(BaseModel):
    model_config = ConfigDict(extra="ignore")

    username: str = Field(
        min_length=3,
        max_length=32,
        pattern=r"^[A-Za-z0-9_]+$",
        description="3-32 letters, digits or underscores; case-insensitive.",
    )
    password: str = Field(min_length=10, max_length=256)
    display_name: str | None = Field(default=None, max_length=64)


class SignIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class AccountOut(BaseModel):
    id: str
    username: str
    display_name: str


class SessionOut(BaseModel):
    token: str
    expires_at: str
    account: AccountOut


@router.post("/accounts", status_code=201, response_model=AccountOut, summary="Sign up")
async def sign_up(body: SignUp, request: Request) -> AccountOut:
    services = services_of(request)
    network = client_network(client_host(request))
    refuse_if(
        await services.limits.signup_network.hit(network),
        "signup_network",
        "Too many sign-ups from your network; wait and try again.",
    )
    account = await services.accounts.create(body.username, body.password, body.display_name)
    log.info("account %s created", account.id)
    return AccountOut(**account.public())


@router.post("/sessions", response_model=SessionOut, summary="Sign in")
async def sign_in(body: SignIn, request: Request) -> SessionOut:
    services = services_of(request)
    network = client_network(client_host(request))
    refuse_if(
        await services.limits.signin_network.hit(network),
        "signin_network",
        "Too many sign-in attempts from your network; wait and try again.",
    )
    account_key = normalize_username(body.username)
    refuse_if(
        await services.limits.signin_account.check(account_key),
        "signin_account",
        "Too many failed sign-ins for this account; wait and try again.",
    )
    account = await services.accounts.authenticate(body.username, body.password)
    if account is None:
        await services.limits.signin_account.hit(account_key)
        metrics.SIGNINS.labels(outcome="failed").inc()
        raise Unauthorized("Wrong username or password.")
    metrics.SIGNINS.labels(outcome="ok").inc()
    revocations = services.tokens.revocations
    not_before = revocations.not_before(account.id) if revocations is not None else None
    token, claims = services.tokens.mint(
        "session",
        account.id,
        services.settings.session_ttl_s,
        # a sign-in in the same second as "sign out everywhere" must outlive it
        issued_at=None if not_before is None else not_before + 1,
    )
    return SessionOut(
        token=token,
        expires_at=iso_epoch(claims.expires_at),
        account=AccountOut(**account.public()),
    )


@router.get("/me", response_model=AccountOut, summary="The signed-in account")
async def me(claims: Session, request: Request) -> AccountOut:
    account = await services_of(request).accounts.by_id(claims.subject)
    if account is None:
        raise NotFound("Your account no longer exists; sign up again.")
    return AccountOut(**account.public())


async def _revoke_current(claims: Session, request: Request) -> Response:
    services = services_of(request)
    if services.revoked is not None:
        await services.revoked.revoke(claims.token_id, claims.expires_at)
    elif services.tokens.revocations is not None:
        services.tokens.revocations.revoke(claims.token_id, claims.expires_at)
    metrics.REVOCATIONS.labels(kind="session").inc()
    log.info("session of %s signed out", claims.subject)
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


router.add_api_route(
    "/sessions/current",
    _revoke_current,
    methods=["DELETE"],
    status_code=204,
    response_class=Response,
    summary="Sign out (revoke this session token)",
    responses={204: {"description": "Signed out: the token is refused from now on."}},
)
router.add_api_route(
    "/sessions/current/revoke",
    _revoke_current,
    methods=["POST"],
    status_code=204,
    response_class=Response,
    summary="Sign out (revoke this session token; same as DELETE /api/sessions/current)",
    responses={204: {"description": "Signed out: the token is refused from now on."}},
    operation_id="revoke_current_session_post",
)


@router.post(
    "/sessions/revoke-all",
    status_code=204,
    response_class=Response,
    summary="Sign out everywhere (revoke every session of this account)",
    responses={204: {"description": "Every session of the account issued until now is refused."}},
)
async def revoke_all(claims: Session, request: Request) -> Response:
    services = services_of(request)
    not_before = int(time.time())
    if services.revoked is not None:
        await services.revoked.revoke_all(claims.subject, not_before)
    elif services.tokens.revocations is not None:
        services.tokens.revocations.revoke_all(claims.subject, not_before)
    metrics.REVOCATIONS.labels(kind="account").inc()
    log.info("every session of %s signed out", claims.subject)
    return Response(status_code=204, headers={"Cache-Control": "no-store"})
