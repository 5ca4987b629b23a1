"""The media gate of a capped space: its playlists, parts, segments, init and
live.aac need a valid listener token, so a client that skips the line and
fetches media directly is refused. Pure: a signature check, no lookup.

The token travels as ``?t=<token>`` on the URL (players that cannot send
cookies) or in the ``th_listener`` cookie that join sets, scoped to the
space's path (browsers carry it on every media request by themselves, and the
playlists stay one cache object: the token is never part of a media URL
that a cache keys on).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from townhall import metrics
from townhall.errors import Unauthorized
from townhall.policy.tokens import Claims, TokenSigner

COOKIE = "th_listener"
QUERY = "t"

MISSING = (
    "This space has a listener limit, so its media needs a listener token: join the space "
    "(POST /api/spaces/{space_id}/join, or open its page) and send the token as ?t= or the "
    "th_listener cookie."
)


class TokenMissing(Unauthorized):
    """401 for media of a capped space asked for without any token: the same
    answer for every such client, so a shared cache may keep it a second
    (``s-maxage``; browsers do not, ``max-age=0``). Behind
    deploy/nginx-cache.conf only requests without a good link (which reach
    the origin without cookies) share it, so a joined listener never gets it."""

    cache_control = "max-age=0, s-maxage=1"


def token_of(query: str, cookie_header: str | None) -> str | None:
    """The listener token of a request: ``?t=`` first, else the cookie."""
    if query:
        values = parse_qs(query, keep_blank_values=False).get(QUERY)
        if values:
            return values[0]
    if cookie_header:
        try:
            jar = SimpleCookie(cookie_header)
        except CookieError:
            return None
        morsel = jar.get(COOKIE)
        if morsel is not None and morsel.value:
            return morsel.value
    return None


def check(tokens: TokenSigner, space_id: str, query: str, cookie_header: str | None) -> Claims:
    """The claims of the request's listener token for ``space_id``; raises
    :class:`Unauthorized` (401) naming what is wrong: missing, malformed,
    forged or tampered, expired, wrong kind or wrong space."""
    token = token_of(query, cookie_header)
    if token is None:
        raise TokenMissing(MISSING.format(space_id=space_id))
    return tokens.verify(token, kind="listener", space_id=space_id)


# Verified tokens remembered (token -> (space, expiry)), so a listener's
# every part costs a dict lookup after its first; cleared when full.
MAX_REMEMBERED = 100_000


class MediaGate:
    """The gate as the listener rules use it: ``refuse`` answers None (let
    the media through) or the error to answer (401). ``tokens()`` gives the
    signer once the server has started (None before: everything refused);
    ``capped(space_id)`` whether a space has a cap (spaces without one pass)."""

    def __init__(
        self,
        tokens: Callable[[], TokenSigner | None],
        *,
        capped: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tokens = tokens
        self._capped = capped  # None: every space is gated (the deployment's cap)
        self._clock = clock
        self._known: dict[str, tuple[str | None, int]] = {}

    def refuse(
        self, space_id: str, query: bytes | None, cookie: bytes | None
    ) -> Unauthorized | None:
        if self._capped is not None and not self._capped(space_id):
            return None  # no cap on this space (a host's own cap gates only its space)
        token = token_of(
            (query or b"").decode("latin-1"), None if cookie is None else cookie.decode("latin-1")
        )
        if token is None:
            metrics.MEDIA_GATE_REFUSALS.labels(reason="missing").inc()
            return TokenMissing(MISSING.format(space_id=space_id))
        known = self._known.get(token)
        if known is not None and known[0] == space_id and known[1] > self._clock():
            return None
        signer = self._tokens()
        if signer is None:
            return Unauthorized(MISSING.format(space_id=space_id))
        try:
            claims = signer.verify(token, kind="listener", space_id=space_id)
        except Unauthorized as exc:
            metrics.MEDIA_GATE_REFUSALS.labels(reason="invalid").inc()
            return exc
        if len(self._known) >= MAX_REMEMBERED:
            self._known.clear()
        self._known[token] = (claims.space_id, claims.expires_at)
        return None
