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

from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from townhall.errors import Unauthorized
from townhall.policy.tokens import Claims, TokenSigner

COOKIE = "th_listener"
QUERY = "t"

MISSING = (
    "This space has a listener limit, so its media needs a listener token: join the space "
    "(POST /api/spaces/{space_id}/join, or open its page) and send the token as ?t= or the "
    "th_listener cookie."
)


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
        raise Unauthorized(MISSING.format(space_id=space_id))
    return tokens.verify(token, kind="listener", space_id=space_id)
