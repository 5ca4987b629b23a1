"""`townhall bench attack`'s connection shapes: slowloris (a header byte every
few seconds, held) and endless headers (one header value sent as fast as the
connection takes it, up to a rate). Both reconnect when the server cuts them,
until the deadline, so the pressure lasts the whole attack; both are bounded
(connections, bytes per second each, time) and loopback only (the caller
checked the target).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Protocol

SLOW_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: "
ENDLESS_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: "
SLOW_BYTE_EVERY_S = 5.0
RAMP_PER_S = 1000.0  # slow connections opened per second at the start
ENDLESS_CHUNK = b"a" * 16384


class Tally(Protocol):
    attempts: int
    successes: int
    open_slow: int
    statuses: Counter[str]


async def _connect(
    port: int, source: str, tally: Tally
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 5.0
        )
    except (OSError, TimeoutError):
        tally.statuses["connect_error"] += 1
        await asyncio.sleep(0.5)
        return None


def _cut(tally: Tally) -> None:
    tally.statuses["cut_by_server"] += 1


async def slowloris(
    port: int, sources: list[str], count: int, deadline_s: float, tally: Tally
) -> None:
    """``count`` connections that send a header byte every few seconds; each
    reconnects when cut. ``successes``: connections still held at the end."""

    async def one(i: int) -> None:
        source = sources[i % len(sources)]
        await asyncio.sleep(i / RAMP_PER_S)  # no SYN storm: the listen backlog is finite
        while time.monotonic() < deadline_s:
            found = await _connect(port, source, tally)
            if found is None:
                continue
            reader, writer = found
            tally.attempts += 1
            tally.open_slow += 1
            try:
                writer.write(SLOW_HEAD)
                while time.monotonic() < deadline_s:
                    left_s = deadline_s - time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        # the server's answer (408) or its close ends the wait early
                        await asyncio.wait_for(reader.read(4096), min(SLOW_BYTE_EVERY_S, left_s))
                        raise ConnectionResetError  # answered or closed: it cut us
                    writer.write(b"a")
                    await writer.drain()
                else:
                    tally.successes += 1  # held until the end
            except OSError:
                _cut(tally)
            finally:
                tally.open_slow -= 1
                writer.close()

    await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)


async def endless_headers(
    port: int,
    sources: list[str],
    count: int,
    deadline_s: float,
    tally: Tally,
    rate_bytes_per_s: float,
) -> int:
    """``count`` connections each sending one endless header value at up to
    ``rate_bytes_per_s``; each reconnects when cut. Returns the bytes sent."""
    sent = [0]

    async def one(i: int) -> None:
        source = sources[i % len(sources)]
        while time.monotonic() < deadline_s:
            found = await _connect(port, source, tally)
            if found is None:
                continue
            _reader, writer = found
            tally.attempts += 1
            tally.open_slow += 1
            try:
                writer.write(ENDLESS_HEAD)
                started = time.monotonic()
                mine = 0
                while time.monotonic() < deadline_s:
                    writer.write(ENDLESS_CHUNK)
                    mine += len(ENDLESS_CHUNK)
                    sent[0] += len(ENDLESS_CHUNK)
                    await writer.drain()
                    ahead_s = mine / rate_bytes_per_s - (time.monotonic() - started)
                    if ahead_s > 0:
                        await asyncio.sleep(min(ahead_s, max(0.0, deadline_s - time.monotonic())))
                else:
                    tally.successes += 1  # never cut
            except OSError:
                _cut(tally)
            finally:
                tally.open_slow -= 1
                writer.close()

    await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    return sent[0]
