"""origin/handoff.py in one process: a real TCP connection handed over a real
Unix socket (SCM_RIGHTS) to a receiver that adopts it with its own protocol;
a receiver that never answers makes the sender give up in time; one that
gets a handoff after its deadline drops it; the secret rule for
X-Forwarded-For."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from townhall.origin.handoff import (
    HandoffReceiver,
    HandoffSender,
    SecretProxies,
    pack,
    unpack,
)


class Echo(asyncio.Protocol):
    """The adopted connection's protocol: what was read before, then echoes."""

    def __init__(self, preread: bytes) -> None:
        self.preread = preread

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        transport.write(b"adopted from %s:%d after %s;" % (peer[0].encode(), peer[1], self.preread))

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


async def tcp_pair() -> tuple[socket.socket, asyncio.StreamReader, asyncio.StreamWriter]:
    """An accepted server-side socket and the client's streams."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    reader, writer = await asyncio.open_connection(*listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    return accepted, reader, writer


async def test_a_connection_is_handed_over_and_served_by_the_receiver(tmp_path: Path) -> None:
    path = tmp_path / "run" / "handoff.sock"
    receiver = HandoffReceiver(path, Echo, 1024)
    receiver.start()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    sender = HandoffSender(path, timeout_s=2.0)
    accepted, reader, writer = await tcp_pair()
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    assert sender.send(accepted.fileno(), b"GET / (read)", outcome.set_result) is None
    assert await asyncio.wait_for(outcome, 2.0) is True
    accepted.close()  # the sender's copy: the connection lives on in the receiver
    local = writer.get_extra_info("sockname")
    head = await asyncio.wait_for(reader.readuntil(b";"), 2.0)
    assert head == b"adopted from %s:%d after GET / (read);" % (local[0].encode(), local[1])
    writer.write(b"more")
    assert await asyncio.wait_for(reader.readexactly(4), 2.0) == b"MORE"
    writer.close()
    receiver.close()
    sender.close()
    assert not path.exists()


async def test_no_socket_means_the_fallback(tmp_path: Path) -> None:
    sender = HandoffSender(tmp_path / "handoff.sock", timeout_s=1.0)
    accepted, _, writer = await tcp_pair()
    assert sender.send(accepted.fileno(), b"", lambda taken: None) == "unavailable"
    accepted.close()
    writer.close()


async def test_a_handoff_not_taken_in_time_is_given_up(tmp_path: Path) -> None:
    path = tmp_path / "handoff.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.bind(str(path))
    silent.listen(1)  # accepts, never reads: a primary that is stuck
    sender = HandoffSender(path, timeout_s=0.2)
    accepted, _, writer = await tcp_pair()
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    assert sender.send(accepted.fileno(), b"x", outcome.set_result) is None
    assert await asyncio.wait_for(outcome, 2.0) is False
    assert 0.2 <= time.monotonic() - started < 1.0
    accepted.close()
    writer.close()
    sender.close()
    silent.close()


async def test_a_late_handoff_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "handoff.sock"
    adopted: list[bytes] = []

    def protocol(preread: bytes) -> Echo:
        adopted.append(preread)
        return Echo(preread)

    receiver = HandoffReceiver(path, protocol, 1024)
    receiver.start()
    accepted, reader, writer = await tcp_pair()
    late = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    late.connect(str(path))
    socket.send_fds(late, [pack(1, time.monotonic() - 1.0, b"old")], [accepted.fileno()])
    accepted.close()  # the receiver's copy was the last: dropped means closed
    assert await asyncio.wait_for(reader.read(), 2.0) == b""
    assert adopted == []
    late.close()
    writer.close()
    receiver.close()


def test_the_message_format() -> None:
    assert unpack(pack(7, 12.5, b"head")) == (7, 12.5, b"head")
    assert unpack(b"short") is None


def test_x_forwarded_for_counts_only_with_the_secret() -> None:
    rule = SecretProxies("127.0.0.1/32", "s3cret")
    assert rule.covers("127.0.0.1") and not rule.covers("127.0.1.5") and not rule.covers(None)
    forged = [(b"host", b"x"), (b"x-forwarded-for", b"198.51.100.7")]
    assert rule.vouched(forged) == [(b"host", b"x")]
    wrong = [*forged, (b"x-townhall-local", b"guess")]
    assert (b"x-forwarded-for", b"198.51.100.7") not in rule.vouched(wrong)
    right = [*forged, (b"x-townhall-local", b"s3cret")]
    assert rule.vouched(right) == right
