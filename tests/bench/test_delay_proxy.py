"""The delaying forwarder plan_validate.py's --rtt-ms runs between the storm
and nginx: a round trip per exchange, one more for a new connection's
handshake, bytes in order, closes passed on, a bound on connections."""

from __future__ import annotations

import asyncio
import time

from townhall.bench.delay_proxy import DelayConfig, DelayProxy

RTT = 0.15  # the bounds below leave a loaded machine's scheduler < 1 RTT of slack


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _proxied(cfg: DelayConfig) -> tuple[asyncio.Server, DelayProxy, int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = DelayProxy(("127.0.0.1", port), cfg)
    return server, proxy, await proxy.serve("127.0.0.1", 0)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> float:
    t0 = time.monotonic()
    writer.write(data)
    assert await reader.readexactly(len(data)) == data
    return time.monotonic() - t0


def test_a_new_connection_costs_two_round_trips_a_kept_one_one() -> None:
    async def run() -> tuple[float, float, float]:
        server, proxy, port = await _proxied(DelayConfig(RTT))
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _exchange(reader, writer, b"GET / HTTP/1.1\r\n\r\n")
        first = time.monotonic() - t0  # connect + request: handshake + round trip
        second = await _exchange(reader, writer, b"x" * 10)
        big = await _exchange(reader, writer, bytes(range(256)) * 2000)  # in order
        writer.close()
        await proxy.close()
        server.close()
        return first, second, big

    first, second, big = asyncio.run(run())
    assert 2 * RTT - 0.005 <= first < 3 * RTT  # two round trips, not one or three
    assert RTT - 0.005 <= second < 2 * RTT
    assert RTT - 0.005 <= big < 2 * RTT


def test_a_close_is_passed_on_after_the_delay_and_the_count_goes_back() -> None:
    async def run() -> tuple[float, int]:
        server, proxy, port = await _proxied(DelayConfig(RTT))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await _exchange(reader, writer, b"hello")
        t0 = time.monotonic()
        writer.write_eof()  # the echo server closes when it reads EOF
        assert await reader.read() == b""
        closed_in = time.monotonic() - t0
        writer.close()
        await asyncio.sleep(2 * RTT)
        active = proxy.active
        await proxy.close()
        server.close()
        return closed_in, active

    closed_in, active = asyncio.run(run())
    assert RTT - 0.005 <= closed_in < 2 * RTT
    assert active == 0


def test_connections_beyond_the_bound_are_closed_on_accept() -> None:
    async def run() -> tuple[bytes, bytes, int]:
        server, proxy, port = await _proxied(DelayConfig(0.01, max_connections=1))
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        await _exchange(r1, w1, b"one")
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        w2.write(b"two")
        try:
            second = await asyncio.wait_for(r2.read(), 1.0)
        except ConnectionError:
            second = b""
        w1.write(b"again")
        first = await r1.readexactly(5)
        w1.close()
        w2.close()
        await proxy.close()
        server.close()
        return first, second, proxy.refused

    first, second, refused = asyncio.run(run())
    assert first == b"again"
    assert second == b""
    assert refused == 1
