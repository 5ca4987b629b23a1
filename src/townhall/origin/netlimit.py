"""The per-client-network bucket on playlists without delivery directives
(issue 10), as the listener rules (``origin/rules.py``) see it: one callable
that says how long a client must wait, 0.0 when it may have its playlist now.

Blocking reloads (``_HLS_msn``), parts, segments and inits are never limited
here: they are the legitimate LL-HLS path and cost a memo lookup. A player
without LL-HLS polls the playlist once per target duration, far below the
bucket; a flood of plain playlist requests from one network is answered 429
with Retry-After before any rendering.

The rules stay pure: the drivers pass the TCP peer and the request headers
(for X-Forwarded-For behind ``trusted_proxies``), the server's defense layer
(``server/defense.py``) keys and counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from townhall.errors import TooManyRequests
from townhall.origin.answers import Problem

Headers = Sequence[tuple[bytes, bytes]]
Client = tuple[str | None, Headers]
Peer = Client | None  # a request's client, when the driver says
"""(TCP peer address, request headers) of one request."""

ClientLimit = Callable[[str | None, Headers], float]
"""(peer, headers) -> seconds to wait, 0.0 when allowed (consumes one unit)."""


def refusal(
    limit: ClientLimit | None, client: Client | None, name: bytes, msn: int | None
) -> Problem | None:
    """The 429 of a playlist request (``name``: live.m3u8 or plain.m3u8; ``msn``:
    its ``_HLS_msn``, which plain.m3u8 ignores) over its network's bucket, or
    None: allowed, a blocking reload, or no limit or client given."""
    if limit is None or client is None or (msn is not None and name != b"plain.m3u8"):
        return None
    wait_s = limit(client[0], client[1])
    if not wait_s:
        return None
    return Problem(
        TooManyRequests(
            "Too many playlist requests from your network: a player reloads the playlist "
            f"once per segment; wait {wait_s:.1f} s (Retry-After), or use a cache in front.",
            retry_after_s=wait_s,
        )
    )
