"""A connection paused for ignoring Retry-After (origin/retry_penalty.py) whose
peer closes is closed within ``http_refused_pause_check_s``, not at the end
of its pause (origin/peer_gone.py): an attacker that reconnects once paused
leaves nothing behind it."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

from tests.origin.http1_helpers import driver, port_of, running
from tests.server.test_fastproto import Conn, request
from townhall import metrics
from townhall.config import Settings
from townhall.origin.peer_gone import TCP_CLOSE_WAIT, peer_closed, tcp_state

ESTABLISHED = 1
LONG_WAIT_S = 10  # each pause at least this long: the old code kept the connection as long


def gone_closes() -> float:
    return float(metrics.HTTP_CONNECTIONS_CLOSED.labels(reason="peer_gone_paused")._value.get())


def test_a_socket_whose_peer_closed_is_known_to_be_gone() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with accepted:
            assert tcp_state(accepted) == ESTABLISHED and not peer_closed(accepted)
            client.sendall(b"GET / HTTP/1.1\r\n\r\n" * 10)  # unread, as a paused connection's
            client.close()
            for _ in range(100):
                if peer_closed(accepted):
                    break
                time.sleep(0.01)
            assert tcp_state(accepted) == TCP_CLOSE_WAIT
    assert tcp_state(None) is None and not peer_closed(None)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        assert not peer_closed(unix)  # not TCP: cannot say, so not gone


class LongBusy:
    """Every request: 429 with Retry-After: ``wait_s``."""

    def __init__(self, wait_s: int = LONG_WAIT_S) -> None:
        self.wait_s = wait_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            return
        headers = [(b"content-length", b"5"), (b"retry-after", b"%d" % self.wait_s)]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b"busy\n"})


async def _paused(port: int, i: int, pipelined: int = 20) -> Conn:
    """A connection from its own loopback address, paused by the driver: it
    pipelined ``pipelined`` requests and got the first two answers."""
    source = f"127.0.{1 + i // 250}.{1 + i % 250}"
    conn = await Conn.open(port, local_addr=(source, 0))
    conn.send(*[request("/x")] * pipelined)
    for _ in range(2):  # the second was sent during the first's wait: paused from here
        assert (await asyncio.wait_for(conn.reply(), 10)).status == 429
    return conn


async def test_reconnecting_attackers_leave_no_paused_connection_behind(tmp_path: Path) -> None:
    n = 300
    before = gone_closes()
    settings = Settings(data_dir=tmp_path, http_refused_pause_check_s=0.2)
    s = driver(LongBusy(), settings)
    async with running(s):
        conns = await asyncio.gather(*(_paused(port_of(s), i) for i in range(n)))
        assert len(s.server_state.connections) == n
        started = time.monotonic()
        for conn in conns:  # as an attacker that reconnects does: drop and go
            conn.writer.close()
        while s.server_state.connections and time.monotonic() - started < 5:
            await asyncio.sleep(0.05)
        left, took_s = len(s.server_state.connections), time.monotonic() - started
    # the pauses run for LONG_WAIT_S and more: without the check all n were still open
    assert left == 0, f"{left} of {n} closed connections still held after {took_s:.1f} s"
    assert took_s < LONG_WAIT_S / 2
    assert gone_closes() >= before + n


async def test_a_paused_connection_whose_peer_stays_is_still_answered(tmp_path: Path) -> None:
    """The check closes only a connection whose peer has gone: one that waits
    out its pause, still connected, gets its remaining answers after it."""
    settings = Settings(data_dir=tmp_path, http_refused_pause_check_s=0.1)
    s = driver(LongBusy(wait_s=1), settings)
    async with running(s):
        conn = await _paused(port_of(s), 0, pipelined=3)
        started = time.monotonic()
        reply = await asyncio.wait_for(conn.reply(), 5)  # after the pause (1 s, at most 1.5)
        assert reply.status == 429 and time.monotonic() - started >= 0.8
        await conn.close()
