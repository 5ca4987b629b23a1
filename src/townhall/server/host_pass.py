"""The host's own actions pass a crowd's spent network buckets (issue 10).

The refusal record (``server/refusals.py``) is keyed by client network, and
a crowd (or an attacker) sharing the host's network spends it: without this,
the host's ``POST /api/spaces/{id}/start`` got the crowd's 429. A request on
``/api/spaces/{id}[/...]`` authenticated as a host or co-host of that space
is limited by its own token's key (and the account limits of its route)
only, never by its network's:

- the HTTP driver (:func:`vouched`, before any ASGI work) lets such a request
  on when its token's signature is good (one HMAC): a session, or a speaker
  token of that space whose role is host or co-host;
- the ASGI shield (:func:`host_of_space`) then checks that the session's
  account is the host or a co-host of that space (one store read, made only
  when the network is being refused); anyone else gets the network's 429 as
  before, and the refusal is counted against their token too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from townhall.errors import NotFound, Unauthorized
from townhall.policy.tokens import Claims, TokenSigner

if TYPE_CHECKING:
    from townhall.server.services import Services

Header = tuple[bytes, bytes]
HOST_ROLES = frozenset({"host", "cohost"})


def space_of(path: str) -> str | None:
    """The space id of an ``/api/spaces/{id}[/...]`` path, else None."""
    parts = path.split("?", 1)[0].split("/", 4)
    if len(parts) < 4 or parts[1] != "api" or parts[2] != "spaces" or not parts[3]:
        return None
    return parts[3]


def _bearer(headers: Sequence[Header]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, raw = value.decode("latin-1").partition(" ")
            raw = raw.strip()
            return raw if scheme.lower() == "bearer" and raw else None
    return None


def _claims(tokens: TokenSigner, path: str, headers: Sequence[Header]) -> Claims | None:
    """The claims of a good session, or of a host's speaker token of the
    path's space; None for anything else."""
    space_id = space_of(path)
    raw = _bearer(headers) if space_id is not None else None
    if raw is None:
        return None
    try:
        claims = tokens.decode(raw)
    except Unauthorized:
        return None
    if claims.kind == "session":
        return claims
    if claims.kind == "speaker" and claims.space_id == space_id and claims.role in HOST_ROLES:
        return claims
    return None


def vouched(tokens: TokenSigner, url: bytes, headers: Sequence[Header]) -> bool:
    """The driver's check: may this request pass its network's refusal (the
    shield decides)? Costs a path split and, for a space's API path with a
    bearer token, one HMAC."""
    if not url.startswith(b"/api/spaces/"):
        return False
    return _claims(tokens, url.decode("latin-1"), headers) is not None


async def host_of_space(services: Services, path: str, headers: Sequence[Header]) -> bool:
    """True when the request is authenticated as a host or co-host of the
    path's space (a session not signed out, or a host's speaker token)."""
    claims = _claims(services.tokens, path, headers)
    if claims is None:
        return False
    if claims.kind == "speaker":
        return True
    space_id = space_of(path)
    assert space_id is not None
    try:
        services.tokens.verify(_bearer(headers) or "", kind="session")  # not signed out
        role = await services.spaces.current_role(space_id, claims.subject)
    except (Unauthorized, NotFound):
        return False
    return role in HOST_ROLES
