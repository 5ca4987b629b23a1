"""Whether a connection's peer has closed its side, asked of the kernel
without reading: for a connection the HTTP/1.1 driver has stopped reading
(origin/retry_penalty.py's pause), which therefore cannot see the FIN that
sits behind the requests it has not read.

An attacker that reconnects once paused leaves every paused connection
behind it closed on its side; unread, each would keep its parser, its queued
requests and its descriptor for the rest of its pause (up to
``http_refused_pause_max_s``, 30 s), thousands of them at a time. On Linux
``TCP_INFO``'s first byte is the socket's TCP state: CLOSE_WAIT once the peer
sent its FIN, CLOSE after a reset. Elsewhere (no ``TCP_INFO``) the answer is
always "not known to be gone" and the pause runs as before.
"""

from __future__ import annotations

import socket
from typing import Any

# linux/include/net/tcp_states.h
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
GONE_STATES = frozenset((TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LAST_ACK))
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)


def tcp_state(sock: Any) -> int | None:
    """The kernel's TCP state of ``sock`` (a socket or uvloop's stand-in for
    one), or None when it cannot say (not Linux, not TCP, closed)."""
    if _TCP_INFO is None or sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)
    except (OSError, ValueError, TypeError):
        return None
    return info[0] if info else None


def peer_closed(sock: Any) -> bool:
    """True when the peer of ``sock`` has closed its side (FIN or reset)."""
    return tcp_state(sock) in GONE_STATES
