"""state.json from the HTTP/1.1 driver (issue 10): while a space's document
is cached (``live.roomstate.StateCache.fresh``), the driver answers it itself,
after the per-network bucket, with the same bytes and headers as the route in
``server/api_state.py`` (200 with ETag, or 304 on If-None-Match), so a flood
of state.json costs a dict lookup and a write, not an ASGI cycle. When the
document is stale or missing, or the space unknown, the app answers (and
computes it, once per interval).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.responses import Response

from townhall.errors import TooManyRequests
from townhall.origin.answers import CORS_HEADERS, Problem, Rendered
from townhall.origin.asgi_cycle import Request

if TYPE_CHECKING:
    from townhall.server.services import Services

_SUFFIX = b"/state.json"
STATE_REFUSED = (
    "Too many state.json requests from your network: the page refreshes it by itself every "
    "few seconds; wait {wait_s:.1f} s (Retry-After)."
)


def max_age_s(interval_s: float) -> int:
    """The Cache-Control max-age of state.json (the route's rule)."""
    return max(1, min(2, int(interval_s)))


def not_modified(if_none_match: str | None, etag: str) -> bool:
    """Whether If-None-Match matches (the route's rule)."""
    if if_none_match is None:
        return False
    return if_none_match.strip() == "*" or etag in {t.strip() for t in if_none_match.split(",")}


def state_response(
    body: bytes, etag: str, interval_s: float, *, modified: bool, cors: bool = False
) -> Response:
    """The one renderer of a state.json answer (the route's and the driver's):
    200 with the document, or 304 when not ``modified``; ``cors``: with the
    header lines ``origin/cors.py`` adds to the route's answer."""
    headers = {"Cache-Control": f"public, max-age={max_age_s(interval_s)}", "ETag": etag}
    if cors:
        headers.update(CORS_HEADERS)
    if not modified:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


class CachedState:
    """Rendered state.json answers, one pair (200, 304) per space's current ETag."""

    def __init__(self, *, any_origin: bool, max_spaces: int = 10_000) -> None:
        # a list of CORS origins is answered per request by the app (origin/cors.py)
        self.any_origin = any_origin
        self.max_spaces = max_spaces
        self._rendered: dict[str, tuple[str, Rendered, Rendered]] = {}

    def answer(self, services: Services, peer: str | None, req: Request) -> Rendered | None:
        path, _, _query = req.url.partition(b"?")
        if not self.any_origin or not path.endswith(_SUFFIX) or b"%" in path:
            return None
        raw_id = path[8 : -len(_SUFFIX)]
        if not raw_id.isascii() or b"/" in raw_id:
            return None
        space_id = raw_id.decode("ascii")
        defense = services.defense
        if defense is None or services.spaces.index.get(space_id) is None:
            return None
        entry = services.state.fresh(space_id)
        if entry is None:
            return None
        client = defense.refusals.client(peer, req.headers)
        wait_s = defense.allow_state(space_id, client, time.monotonic())
        if wait_s:
            error = TooManyRequests(STATE_REFUSED.format(wait_s=wait_s), retry_after_s=wait_s)
            return Problem(error).render(path.decode("ascii"))
        found = self._rendered.get(space_id)
        if found is None or found[0] != entry.etag:
            if found is None and len(self._rendered) >= self.max_spaces:
                self._rendered.pop(next(iter(self._rendered)))
            interval_s = services.state.interval_s
            found = (
                entry.etag,
                Rendered.of(
                    state_response(entry.body, entry.etag, interval_s, modified=True, cors=True),
                    "state",
                ),
                Rendered.of(
                    state_response(entry.body, entry.etag, interval_s, modified=False, cors=True),
                    "state",
                ),
            )
            self._rendered[space_id] = found
        inm = next((v for n, v in req.headers if n == b"if-none-match"), None)
        return (
            found[2]
            if not_modified(None if inm is None else inm.decode("latin-1"), entry.etag)
            else found[1]
        )
