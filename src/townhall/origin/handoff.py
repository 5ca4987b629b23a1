"""Handing a connection from a listener worker to the primary (issue 11).

HTTP workers without Redis (server/local_bus.py): a listener worker answers
the listener plane itself and the primary answers everything else. When a
connection's *first* request is one the listener worker would pass on (a
join, a page, the API), the worker hands the whole connection over instead
of relaying it through loopback HTTP: it sends the socket's file descriptor
and every byte it has read from it so far to the primary over a Unix socket
(``DATA_DIR/run/handoff.sock``, mode 0600, SOCK_SEQPACKET so that one message
is one handoff; SCM_RIGHTS), and closes its own copy once the primary says it
took it. The primary wraps the socket in a transport of its own event loop
(``loop.connect_accepted_socket``) with the same HTTP protocol uvicorn runs
for it, feeds it the bytes already read, and serves the connection as if it
had accepted it: its limits, counters, connection caps and shutdown apply,
and it sees the client's own address.

Bounded both ways: a message says by when (``time.monotonic()``, one clock
for every process of the machine) it must be taken; the primary drops one
that arrives later, and the worker, once that time and a margin have passed
without the primary's word, answers 503 itself and shuts the socket down (so
a copy the primary took at the last moment cannot answer too). A worker that
cannot reach the socket (the primary restarting, handoffs off) or whose send
would block falls back to passing the request on over HTTP.

The primary takes handoffs only on that socket and only from a process of its
own user (SO_PEERCRED). Pure parts: the message format; the rest is wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from townhall import metrics
from townhall.origin.conn_limits import in_networks, parse_networks

log = logging.getLogger("townhall.http")

HANDOFF_FILE = Path("run") / "handoff.sock"
# the supervisor's secret on what a listener worker passes on (server/local_bus.py)
SECRET_HEADER = b"x-townhall-local"
# what a worker hands over at most besides the head: a body's first bytes
HIGH_WATER_BYTES = 64 * 1024
HEADER = struct.Struct("!Qd")  # handoff id, deadline (time.monotonic())
ACK = struct.Struct("!Q")
ACK_MARGIN_S = 0.05  # past the deadline: the primary's word on the way
_RECONNECT_S = 0.5  # a worker asks the socket again after this once it failed
_BACKLOG = 64
_READS_PER_WAKE = 64

TAKEN = metrics.HANDOFFS.labels(outcome="taken")
TIMEOUT = metrics.HANDOFFS.labels(outcome="timeout")
ADOPTED = metrics.HANDOFFS.labels(outcome="adopted")
LATE = metrics.HANDOFFS.labels(outcome="late")
FAILED = metrics.HANDOFFS.labels(outcome="failed")
FALLBACKS = {
    reason: metrics.HANDOFF_FALLBACKS.labels(reason=reason)
    for reason in ("later", "unavailable", "busy", "large", "tls")
}


class SecretProxies:
    """Peers whose X-Forwarded-For counts only with the local secret
    (``secret_proxies``; the listener workers' loopback)."""

    def __init__(self, networks: str, secret: str) -> None:
        self.networks = parse_networks(networks)
        self.secret = secret.encode()

    def covers(self, host: str | None) -> bool:
        return in_networks(self.networks, host)

    def vouched(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``headers`` as they are when they carry the secret, else without
        X-Forwarded-For (the request is keyed on the peer's own address)."""
        for name, value in headers:
            if name == SECRET_HEADER and hmac.compare_digest(value, self.secret):
                return headers
        return [(k, v) for k, v in headers if k != b"x-forwarded-for"]


def pack(handoff_id: int, deadline: float, data: bytes) -> bytes:
    return HEADER.pack(handoff_id, deadline) + data


def unpack(message: bytes) -> tuple[int, float, bytes] | None:
    if len(message) < HEADER.size:
        return None
    handoff_id, deadline = HEADER.unpack_from(message)
    return handoff_id, deadline, message[HEADER.size :]


# -- a listener worker's side --------------------------------------------------------


class HandoffSender:
    """A listener worker's end: one connection to the primary's socket, made
    on the first handoff and again after it broke."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_id = 0
        self._retry_at = 0.0
        self._waiting: dict[int, tuple[asyncio.TimerHandle, Callable[[bool], None]]] = {}

    def send(self, fd: int, data: bytes, done: Callable[[bool], None]) -> str | None:
        """Hand the socket ``fd`` (``data`` read from it so far) to the
        primary. None: sent, and ``done(True)`` follows once the primary took
        it, or ``done(False)`` when it did not in time. Otherwise nothing was
        sent and the fallback's reason is returned."""
        for attempt in (0, 1):
            sock = self._connected()
            if sock is None:
                return "unavailable"
            self._next_id += 1
            handoff_id = self._next_id
            message = pack(handoff_id, time.monotonic() + self.timeout_s, data)
            try:
                socket.send_fds(sock, [message], [fd])
            except BlockingIOError:
                return "busy"
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    return "large"
                self._drop()  # the primary went away: its socket may be back
                if attempt:
                    return "unavailable"
                self._retry_at = 0.0
                continue
            assert self._loop is not None
            timer = self._loop.call_later(self.timeout_s + ACK_MARGIN_S, self._expired, handoff_id)
            self._waiting[handoff_id] = (timer, done)
            return None
        return "unavailable"

    def _connected(self) -> socket.socket | None:
        if self._sock is not None:
            return self._sock
        now = time.monotonic()
        if now < self._retry_at:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            self._retry_at = now + _RECONNECT_S
            return None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._acks)
        self._sock = sock
        return sock

    def _acks(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                message = sock.recv(ACK.size)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if len(message) != ACK.size:
                self._drop()  # the primary closed it (restarting): asked again next time
                return
            (handoff_id,) = ACK.unpack(message)
            found = self._waiting.pop(handoff_id, None)
            if found is not None:
                found[0].cancel()
                TAKEN.inc()
                found[1](True)

    def _expired(self, handoff_id: int) -> None:
        self._acks()  # a word already here counts
        found = self._waiting.pop(handoff_id, None)
        if found is not None:
            TIMEOUT.inc()
            found[1](False)

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def close(self) -> None:
        self._drop()


def cut(fd: int) -> None:
    """Shut a handed socket down for every process holding it (a copy the
    primary took at the last moment must not answer after our 503)."""
    with contextlib.suppress(OSError):
        dup = socket.socket(fileno=os.dup(fd))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


# -- the primary's side ----------------------------------------------------------------


class HandoffReceiver:
    """The primary's socket for handoffs: ``protocol(data)`` makes the HTTP
    protocol of an adopted connection (``data``: the bytes the worker read)."""

    def __init__(self, path: Path, protocol: Callable[[bytes], Any], max_bytes: int) -> None:
        self.path = path
        self.protocol = protocol
        self.bufsize = HEADER.size + max_bytes
        self._sock: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mask = os.umask(0o177)  # 0600 from its first moment
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(mask)
        os.chmod(self.path, 0o600)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._accept)
        log.info("the primary takes handed connections at %s", self.path)

    def _accept(self) -> None:
        assert self._sock is not None and self._loop is not None
        for _ in range(_BACKLOG):
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("handoff socket: accept failed (%s)", exc)
                return
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            if uid != os.getuid():
                log.warning("handoff socket: refused a process of user %d", uid)
                conn.close()
                continue
            conn.setblocking(False)
            self._conns.add(conn)
            self._loop.add_reader(conn.fileno(), self._readable, conn)

    def _readable(self, conn: socket.socket) -> None:
        for _ in range(_READS_PER_WAKE):
            try:
                data, fds, flags, _ = socket.recv_fds(conn, self.bufsize, 1)
            except BlockingIOError:
                return
            except OSError:
                self._forget(conn)
                return
            if not data and not fds:
                self._forget(conn)  # the worker went away
                return
            self._take(conn, data, fds, flags)

    def _take(self, conn: socket.socket, data: bytes, fds: list[int], flags: int) -> None:
        found = unpack(data)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or found is None or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            FAILED.inc()
            log.warning("handoff socket: a message that is not a handoff; dropped")
            return
        handoff_id, deadline, preread = found
        if time.monotonic() > deadline:
            os.close(fds[0])  # the worker answered it 503 already
            LATE.inc()
            return
        try:
            sock = socket.socket(fileno=fds[0])
        except OSError:
            os.close(fds[0])
            FAILED.inc()
            return
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.close()
            FAILED.inc()
            return
        try:
            conn.send(ACK.pack(handoff_id))  # before any answer can go out
        except OSError:
            sock.close()  # the worker is gone, or not reading: it answers 503
            FAILED.inc()
            return
        assert self._loop is not None
        task = self._loop.create_task(self._adopt(sock, preread))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _adopt(self, sock: socket.socket, preread: bytes) -> None:
        assert self._loop is not None
        sock.setblocking(False)
        try:
            await self._loop.connect_accepted_socket(lambda: self.protocol(preread), sock)
        except Exception as exc:
            sock.close()
            FAILED.inc()
            log.warning("could not adopt a handed connection (%s)", exc)
            return
        ADOPTED.inc()

    def _forget(self, conn: socket.socket) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            if self._loop is not None:
                self._loop.remove_reader(conn.fileno())
            conn.close()

    def close(self) -> None:
        """No more handoffs (shutdown): those not read yet are closed by the kernel."""
        for conn in list(self._conns):
            self._forget(conn)
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
