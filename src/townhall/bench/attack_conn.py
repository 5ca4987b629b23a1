"""`townhall bench attack`'s connection shapes: slowloris (a header byte every
few seconds, held) and endless headers (one header value sent as fast as the
connection takes it, up to a rate). Both reconnect when the server cuts them,
until the deadline, so the pressure lasts the whole attack; both are bounded
(connections, bytes per second each, time) and loopback only (the caller
checked the target).

The connections live in a child process of their own (``python -m
townhall.bench.attack_conn``, uvloop), which reports its tally as one JSON
line every ``REPORT_EVERY_S``: 10,000 slow connections in the bench's own
event loop saturated it, and the legitimate listeners measured in that same
loop then stalled for the load generator's sake, not the server's. Apart,
the kernel shares the bench's core between the two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from collections import Counter
from typing import Any, Protocol

import orjson

SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
ENDLESS_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: "
SLOW_BYTE_EVERY_S = 5.0
RAMP_PER_S = 1000.0  # slow connections opened per second at the start
ENDLESS_CHUNK = b"a" * 16384
CONNECT_TIMEOUT_S = 5.0
REPORT_EVERY_S = 0.5
CHILD_GRACE_S = 5.0  # after the deadline, for the child's last tally


class Tally(Protocol):
    attempts: int
    successes: int
    open_slow: int
    statuses: Counter[str]


class _Count:
    def __init__(self) -> None:
        self.attempts = 0
        self.successes = 0
        self.open_slow = 0
        self.statuses: Counter[str] = Counter()
        self.sent = 0

    def line(self) -> bytes:
        return orjson.dumps(
            {
                "attempts": self.attempts,
                "successes": self.successes,
                "open": self.open_slow,
                "statuses": self.statuses,
                "sent": self.sent,
            }
        )


async def _connect(port: int, source: str, tally: _Count) -> socket.socket | None:
    """A connected non-blocking socket from ``source``, or None (counted)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        sock.close()
        kind = "connect_timeout" if isinstance(exc, TimeoutError) else "connect_error"
        tally.statuses[kind] += 1
        await asyncio.sleep(0.5)
        return None
    return sock


async def _slowloris(
    port: int, sources: list[str], count: int, deadline_s: float, tally: _Count
) -> None:
    """``count`` connections that send a header byte every few seconds; each
    reconnects when cut. ``successes``: connections still held at the end."""
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        source = sources[i % len(sources)]
        await asyncio.sleep(i / RAMP_PER_S)  # no SYN storm: the listen backlog is finite
        while time.monotonic() < deadline_s:
            sock = await _connect(port, source, tally)
            if sock is None:
                continue
            tally.attempts += 1
            tally.open_slow += 1
            try:
                await loop.sock_sendall(sock, SLOW_HEAD)
                while time.monotonic() < deadline_s:
                    left_s = deadline_s - time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        # the server's answer (408) or its close ends the wait early
                        await asyncio.wait_for(
                            loop.sock_recv(sock, 4096), min(SLOW_BYTE_EVERY_S, left_s)
                        )
                        raise ConnectionResetError  # answered or closed: it cut us
                    await loop.sock_sendall(sock, b"a")
                else:
                    tally.successes += 1  # held until the end
            except OSError:
                tally.statuses["cut_by_server"] += 1
            finally:
                tally.open_slow -= 1
                sock.close()

    await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)


async def _endless(
    port: int, sources: list[str], count: int, deadline_s: float, tally: _Count, rate: float
) -> None:
    """``count`` connections each sending one endless header value at up to
    ``rate`` bytes/s; each reconnects when cut."""
    loop = asyncio.get_running_loop()

    async def one(i: int) -> None:
        source = sources[i % len(sources)]
        while time.monotonic() < deadline_s:
            sock = await _connect(port, source, tally)
            if sock is None:
                continue
            tally.attempts += 1
            tally.open_slow += 1
            try:
                await loop.sock_sendall(sock, ENDLESS_HEAD)
                started = time.monotonic()
                mine = 0
                while (now := time.monotonic()) < deadline_s:
                    await asyncio.wait_for(loop.sock_sendall(sock, ENDLESS_CHUNK), deadline_s - now)
                    mine += len(ENDLESS_CHUNK)
                    tally.sent += len(ENDLESS_CHUNK)
                    ahead_s = mine / rate - (time.monotonic() - started)
                    if ahead_s > 0:
                        await asyncio.sleep(min(ahead_s, max(0.0, deadline_s - time.monotonic())))
                else:
                    tally.successes += 1  # never cut
            except TimeoutError:
                tally.successes += 1  # still sending (its writes held back) at the end
            except OSError:
                tally.statuses["cut_by_server"] += 1
            finally:
                tally.open_slow -= 1
                sock.close()

    await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)


async def _child_main(params: dict[str, Any]) -> None:
    tally = _Count()
    deadline_s = float(params["deadline_s"])
    args = (int(params["port"]), list(params["sources"]), int(params["count"]), deadline_s, tally)
    if params["shape"] == "slowloris":
        work = asyncio.create_task(_slowloris(*args))
    else:
        work = asyncio.create_task(_endless(*args, float(params["rate"])))
    out = sys.stdout.buffer
    while not work.done() and time.monotonic() < deadline_s + CHILD_GRACE_S:
        await asyncio.wait([work], timeout=REPORT_EVERY_S)
        out.write(tally.line() + b"\n")
        out.flush()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    out.write(tally.line() + b"\n")
    out.flush()


def _apply(line: bytes, tally: Tally) -> int:
    data = orjson.loads(line)
    tally.attempts = int(data["attempts"])
    tally.successes = int(data["successes"])
    tally.open_slow = int(data["open"])
    tally.statuses.clear()
    tally.statuses.update(data["statuses"])
    return int(data["sent"])


async def _in_child(params: dict[str, Any], tally: Tally) -> int:
    """Run one shape in a child process; ``tally`` follows its reports.
    Returns the bytes it sent. Cancelled, it still waits (bounded) for the
    child's last report."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "townhall.bench.attack_conn",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(orjson.dumps(params))
    proc.stdin.close()
    sent = 0

    async def follow() -> None:
        nonlocal sent
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            sent = _apply(line, tally)

    reading = asyncio.ensure_future(follow())
    try:
        await asyncio.shield(reading)
    except asyncio.CancelledError:
        left_s = float(params["deadline_s"]) + CHILD_GRACE_S + 1 - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reading, max(0.1, left_s))
        raise
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
    return sent


async def slowloris(
    port: int, sources: list[str], count: int, deadline_s: float, tally: Tally
) -> None:
    """``count`` connections that send a header byte every few seconds, each
    reconnecting when cut, from a child process. ``successes``: connections
    still held at the end."""
    params = {"shape": "slowloris", "port": port, "sources": sources, "count": count}
    await _in_child({**params, "deadline_s": deadline_s}, tally)


async def endless_headers(
    port: int,
    sources: list[str],
    count: int,
    deadline_s: float,
    tally: Tally,
    rate_bytes_per_s: float,
) -> int:
    """``count`` connections each sending one endless header value at up to
    ``rate_bytes_per_s``, each reconnecting when cut, from a child process.
    Returns the bytes sent."""
    params = {"shape": "headers", "port": port, "sources": sources, "count": count}
    return await _in_child({**params, "deadline_s": deadline_s, "rate": rate_bytes_per_s}, tally)


def main() -> None:
    params = orjson.loads(sys.stdin.buffer.read())
    try:
        import uvloop

        uvloop.run(_child_main(params))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(_child_main(params))


if __name__ == "__main__":
    main()
