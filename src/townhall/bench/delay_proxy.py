"""A TCP forwarder that adds a round trip: what a benchmark's clients see of
a network when the kernel has no netem (``tc qdisc ... netem delay`` answers
"Specified qdisc kind is unknown" without sch_netem).

Each direction's bytes are held ``rtt/2`` before they are passed on, in
order, and a new connection's first bytes also wait out the handshake a real
network would have cost (connect returns on loopback at once; over a path
of round trip ``rtt`` the request reaches the server 1.5 rtt after connect).
Closing is passed on after the same delay. Bounded: at most
``max_connections`` at once (more are closed on accept), and a direction
holding more than ``max_buffered`` bytes stops reading its source until it
drains.

    python -m townhall.bench.delay_proxy --listen 127.0.0.1:8081 --to 127.0.0.1:8080 --rtt-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DelayConfig:
    rtt_s: float
    max_connections: int = 8192
    max_buffered: int = 1 << 20  # bytes held in one direction before its source is paused


class _Direction:
    """Bytes from one side held until their time, then written to the other."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float, cfg: DelayConfig) -> None:
        self.loop = loop
        self.delay_s = delay_s
        self.cfg = cfg
        self.held: deque[tuple[float, bytes | None]] = deque()  # (due, data); None: close
        self.held_bytes = 0
        self.not_before = 0.0  # the handshake: nothing leaves before this
        self.timer: asyncio.TimerHandle | None = None
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.paused = False
        self.closed = False

    def push(self, data: bytes | None) -> None:
        if self.closed:
            return
        due = max(self.loop.time(), self.not_before) + self.delay_s
        if self.held:
            due = max(due, self.held[-1][0])  # in order
        self.held.append((due, data))
        if data is not None:
            self.held_bytes += len(data)
            if self.held_bytes > self.cfg.max_buffered and self.source and not self.paused:
                self.paused = True
                self.source.pause_reading()
        if self.timer is None:
            self.timer = self.loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self.timer = None
        if self.sink is None:
            return  # not connected yet: the connect reschedules
        now = self.loop.time()
        while self.held and self.held[0][0] <= now:
            _, data = self.held.popleft()
            if data is None:
                self.closed = True
                self.held.clear()
                if self.sink is not None:
                    self.sink.close()
                return
            self.held_bytes -= len(data)
            if self.sink is not None and not self.sink.is_closing():
                self.sink.write(data)
        if self.paused and self.held_bytes <= self.cfg.max_buffered // 2 and self.source:
            self.paused = False
            self.source.resume_reading()
        if self.held:
            self.timer = self.loop.call_at(self.held[0][0], self._flush)

    def abort(self) -> None:
        self.closed = True
        self.held.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Side(asyncio.Protocol):
    def __init__(self, out: _Direction, back: _Direction) -> None:
        self.out = out  # what this side sends
        self.back = back  # what is sent to this side

    def data_received(self, data: bytes) -> None:
        self.out.push(data)

    def eof_received(self) -> bool:
        self.out.push(None)
        return True  # keep the transport open for what is still coming back

    def connection_lost(self, exc: Exception | None) -> None:
        self.out.push(None)


class DelayProxy:
    """Listens on ``listen``, forwards each connection to ``target``."""

    def __init__(self, target: tuple[str, int], cfg: DelayConfig) -> None:
        self.target = target
        self.cfg = cfg
        self.active = 0
        self.accepted = 0
        self.refused = 0
        self.server: asyncio.Server | None = None

    async def serve(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._client_side, host, port, backlog=4096)
        return int(self.server.sockets[0].getsockname()[1])

    def _client_side(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        half = self.cfg.rtt_s / 2
        up, down = _Direction(loop, half, self.cfg), _Direction(loop, half, self.cfg)
        return _Client(self, up, down)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class _Client(_Side):
    """The client's side: on accept, connects to the target at once (loopback)
    and holds the client's bytes for the handshake's round trip."""

    def __init__(self, proxy: DelayProxy, up: _Direction, down: _Direction) -> None:
        super().__init__(up, down)
        self.proxy = proxy
        self.counted = False
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self.proxy.active >= self.proxy.cfg.max_connections:
            self.proxy.refused += 1
            transport.abort()
            return
        self.proxy.active += 1
        self.proxy.accepted += 1
        self.counted = True
        loop = asyncio.get_running_loop()
        self.out.source, self.back.sink = transport, transport
        # SYN, SYN-ACK: the request leaves the client one round trip after connect
        self.out.not_before = loop.time() + self.proxy.cfg.rtt_s
        self.connecting = loop.create_task(self._connect(transport))

    async def _connect(self, client: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            server, _ = await loop.create_connection(
                lambda: _Side(self.back, self.out), *self.proxy.target
            )
        except OSError:
            self.out.abort()
            self.back.abort()
            client.abort()
            return
        assert isinstance(server, asyncio.Transport)
        self.out.sink, self.back.source = server, server
        if self.out.closed or client.is_closing():
            server.close()
            return
        if self.back.paused:
            server.pause_reading()
        # bytes that came due before the connection was up
        if self.out.held and self.out.timer is None:
            self.out.timer = loop.call_at(self.out.held[0][0], self.out._flush)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.counted = False
            self.proxy.active -= 1
        super().connection_lost(exc)


async def _main(listen: str, to: str, rtt_ms: float, max_connections: int) -> None:
    lhost, lport = listen.rsplit(":", 1)
    thost, tport = to.rsplit(":", 1)
    proxy = DelayProxy((thost, int(tport)), DelayConfig(rtt_ms / 1000, max_connections))
    port = await proxy.serve(lhost, int(lport))
    print(f"delay proxy {lhost}:{port} -> {to}, rtt {rtt_ms:g} ms", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await proxy.close()
    print(f"delay proxy: {proxy.accepted} accepted, {proxy.refused} refused", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="host:port (port 0: any free one)")
    ap.add_argument("--to", required=True, help="host:port to forward to")
    ap.add_argument("--rtt-ms", type=float, required=True)
    ap.add_argument("--max-connections", type=int, default=8192)
    args = ap.parse_args(argv)
    asyncio.run(_main(args.listen, args.to, args.rtt_ms, args.max_connections))


if __name__ == "__main__":
    main()
