"""What a listener's player can do, as far as one request tells: whether it
plays LL-HLS. RFC 8216bis has no signal for it on a client's first playlist
request (hls.js, Shaka and AVPlayer ask for it without delivery directives,
like ffmpeg does), so the User-Agent decides: the player families known to
play LL-HLS, and townhall's own LL-HLS bench client. Anything else is treated
as a player that needs whole segments, the answer every player can use."""

from __future__ import annotations

from townhall.origin.netlimit import Client

# browsers (hls.js, Shaka, video.js, Safari's own player), Apple's AVPlayer
# in apps, townhall's bench client (its LL-HLS runner does blocking reloads)
_LL_PREFIXES = (b"Mozilla/", b"AppleCoreMedia/", b"townhall-bench")
_LL_ANYWHERE = (b"ExoPlayerLib/",)  # apps put their own name first


def plays_ll_hls(client: Client | None) -> bool:
    """True when the request comes from a player known to play LL-HLS (from
    its first playlist on, with parts only); False when unknown."""
    if client is None:
        return False
    agent = next((value for name, value in client[1] if name == b"user-agent"), b"")
    return agent.startswith(_LL_PREFIXES) or any(mark in agent for mark in _LL_ANYWHERE)
