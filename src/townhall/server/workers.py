"""HTTP workers: several processes serving one port (issue 11).

``townhall serve`` runs one HTTP worker per core by default (``http_workers``
0; the cores this process may use, so a server pinned to one core runs one;
``--workers N`` for N). Each worker binds the port itself with SO_REUSEPORT
(the kernel spreads new connections over them). What a worker is depends on
the deployment:

- **Scaled out** (PostgreSQL, Redis, the segment bus): each worker is a node
  of the deployment: node id ``<node_id>-w<k>``, its own data directory
  ``DATA_DIR/workers/w<k>`` (a follower keeps its own copy of each
  recording; a recording its copy lacks is served from the most complete
  copy on this machine, ``recording_copies``: the supervisor's
  ``DATA_DIR/recordings`` and the other workers'), and a loopback port of its
  own where the others pass it the requests only a room's owner can answer
  (server/forward.py).
- **Embedded** (SQLite, no Redis): the control plane's state (admission
  lines, rate buckets, presence) lives in one process, so worker 1 is the
  **primary**, the whole server on ``DATA_DIR`` with its media process, and
  the others are **listener workers**: they answer the listener plane from
  copies of the primary's rooms and pass every other request on to it
  (server/local_bus.py). Rooms in the HTTP process (``media_process`` off)
  allow one process only.

Loopback is added to each worker's ``trusted_proxies``, so a passed-on
request counts against the client's network (X-Forwarded-For), not
127.0.0.1's; only a request that also carries the supervisor's secret
(another worker's pass: a listener worker's, or scaled out a request passed
on to a room's owner) is believed so (``secret_proxies``), unless the
operator trusts loopback itself. All workers share the signing keys of ``DATA_DIR`` (copied in
once, so a token from one worker is good on all).

The supervisor holds the port (a bound socket, never listening, so the port
stays ours while a worker restarts), restarts a worker that dies after
``worker_restart_backoff_ms`` (doubled after each death that came soon after
a start, up to ``worker_restart_backoff_max_ms``), and on SIGTERM or SIGINT
passes the signal on and waits for every worker to drain (``shutdown_drain_s``
and a margin), killing those that do not. A worker learns its settings from
its stdin (JSON), not its environment, and dies with the supervisor
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from townhall.config import Settings

log = logging.getLogger("townhall.http")

PRIMARY_START_WAIT_S = 180.0  # a listener worker waits this long at most for the primary
_QUICK_DEATH_S = 10.0  # a worker that dies sooner after its start backs off longer
_STOP_MARGIN_S = 10.0  # past shutdown_drain_s: the lifespan's close (recordings)
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


def scaled_out(settings: Settings) -> bool:
    """The deployment whose state every node shares (PostgreSQL, Redis, the bus)."""
    return settings.bus_enabled and bool(settings.database_url) and bool(settings.redis_url)


def resolve_workers(settings: Settings) -> int:
    """How many workers ``settings`` asks for (0, the default: one per core).
    Without the scaled-out mode that is one primary and listener workers
    (server/local_bus.py), which need the media process; with it off, one
    process."""
    wanted = settings.http_workers
    if not scaled_out(settings) and not settings.media_process:
        if wanted > 1:
            raise SystemExit(
                f"townhall serve --workers {wanted}: more than one HTTP worker needs the media "
                "process (TOWNHALL_MEDIA_PROCESS=true) or the scaled-out mode "
                "(TOWNHALL_DATABASE_URL to PostgreSQL, TOWNHALL_REDIS_URL and "
                "TOWNHALL_BUS_ENABLED=true), or run one worker."
            )
        return 1
    if wanted == 0:
        return usable_cores()
    return wanted


def usable_cores() -> int:
    """The cores this process may run on (taskset, a container's CPU set),
    which is what "one worker per core" counts."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def worker_settings(
    settings: Settings, index: int, port: int, count: int = 1, secret: str = ""
) -> Settings:
    """The settings of worker ``index`` (from 1 to ``count``) of a supervisor
    on ``port``. Scaled out, each is a node with a data directory of its own;
    without Redis, worker 1 is the primary (``DATA_DIR``) and the others are
    listener workers reaching it with ``secret`` (server/local_bus.py)."""
    from townhall.live.scaleout import node_name

    base = settings.node_id or node_name(settings.model_copy(update={"port": port}))
    # the other workers pass requests on from loopback with X-Forwarded-For:
    # the client's network, not 127.0.0.1, is what limits and caps count
    proxies = ",".join(p for p in (settings.trusted_proxies, "127.0.0.1/32") if p.strip())
    common = {"port": port, "http_workers": 1, "trusted_proxies": proxies}
    common["node_id"] = f"{base}-w{index}"
    # loopback's X-Forwarded-For only with the secret (another worker's pass),
    # unless the operator trusts it (nginx on this machine)
    loopback = ipaddress.ip_address("127.0.0.1")
    own = [p.strip() for p in settings.trusted_proxies.split(",") if p.strip()]
    trusted = any(loopback in ipaddress.ip_network(p, strict=False) for p in own)
    common["local_bus_secret"] = secret
    common["secret_proxies"] = "" if trusted else "127.0.0.1/32"
    if not scaled_out(settings):
        role = "primary" if index == 1 else "listener"
        return settings.model_copy(update={**common, "worker_role": role})
    # every other recording folder on this machine: the supervisor's (what was
    # recorded before workers) and the other workers' copies (store/recordings.py)
    copies = [settings.recordings_dir] + [
        settings.data_dir / "workers" / f"w{k}" / "recordings"
        for k in range(1, count + 1)
        if k != index
    ]
    copies += list(settings.recording_copy_dirs)
    return settings.model_copy(
        update={
            **common,
            "data_dir": settings.data_dir / "workers" / f"w{index}",
            "recording_copies": ",".join(str(c) for c in copies),
        }
    )


def share_keys(settings: Settings, data_dir: Path) -> None:
    """Give a worker's data directory the keys of the supervisor's (made once
    if missing): the signing keys, so every worker verifies every token, and
    the evidence keys, so they sign as one server."""
    from townhall.policy.tokens import KEYS_FILE, load_keys
    from townhall.store.evidence_store import HASH_KEY_FILE, SIGNING_KEY_FILE, load_or_create_keys

    load_keys(settings.signing_keys, settings.data_dir)
    load_or_create_keys(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in (KEYS_FILE, SIGNING_KEY_FILE, HASH_KEY_FILE):
        source, target = settings.data_dir / name, data_dir / name
        if source.exists() and not target.exists():
            shutil.copy2(source, target)


@dataclass
class _Worker:
    index: int
    settings: Settings
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff_s: float = 0.0


class Supervisor:
    """The parent of the HTTP workers (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = resolve_workers(settings)
        self._stopping = False
        self._signal = signal.SIGTERM

    def run(self) -> int:
        """Run the workers until SIGTERM/SIGINT; the exit status."""
        from townhall.server import logs

        logs.configure(self.settings.log_level, json=self.settings.log_json)
        try:
            holder = reuseport_socket(self.settings.host, self.settings.port)
        except OSError as exc:
            raise SystemExit(
                f"townhall serve: cannot listen on {self.settings.host}:{self.settings.port} "
                f"({exc.strerror or exc}); choose another --port or stop what holds it."
            ) from None
        port = int(holder.getsockname()[1])
        first_s = self.settings.worker_restart_backoff_ms / 1000
        secret = secrets.token_urlsafe(32)  # the listener workers' key to the primary
        workers = [
            _Worker(
                k, worker_settings(self.settings, k, port, self.count, secret), backoff_s=first_s
            )
            for k in range(1, self.count + 1)
        ]
        for worker in workers:
            share_keys(self.settings, worker.settings.data_dir)
        from townhall.server.local_bus import PRIMARY_FILE

        # a primary of an earlier run published an address that is gone
        (self.settings.data_dir / PRIMARY_FILE).unlink(missing_ok=True)
        from townhall.server.worker_metrics import METRICS_DIR

        # and listener workers of an earlier run wrote their metrics
        shutil.rmtree(self.settings.data_dir / METRICS_DIR, ignore_errors=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        log.info("%d HTTP workers on %s:%d", self.count, self.settings.host, port)
        try:
            for worker in workers:
                self._start(worker)
            while not self._stopping:
                self._check(workers)
                time.sleep(_POLL_S)
        finally:
            self._stop_all(workers)
            holder.close()
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signal = signal.Signals(signum)
        self._stopping = True

    def _start(self, worker: _Worker) -> None:
        worker.proc = subprocess.Popen(
            [sys.executable, "-m", "townhall.server.workers"],
            stdin=subprocess.PIPE,
            process_group=0,  # a terminal's Ctrl-C reaches it once, through us
            preexec_fn=_die_with_parent,
        )
        assert worker.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            worker.proc.stdin.write(worker.settings.model_dump_json().encode())
        worker.proc.stdin.close()
        worker.started_at = time.monotonic()
        log.info("HTTP worker %s started (pid %d)", worker.settings.node_id, worker.proc.pid)

    def _check(self, workers: list[_Worker]) -> None:
        now = time.monotonic()
        for worker in workers:
            proc = worker.proc
            if proc is not None and proc.poll() is not None:
                lived_s = now - worker.started_at
                if lived_s >= _QUICK_DEATH_S:
                    worker.backoff_s = self.settings.worker_restart_backoff_ms / 1000
                worker.restart_at = now + worker.backoff_s
                log.warning(
                    "HTTP worker %s (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                    worker.settings.node_id,
                    proc.pid,
                    proc.returncode,
                    lived_s,
                    worker.backoff_s,
                )
                worker.backoff_s = min(
                    worker.backoff_s * 2, self.settings.worker_restart_backoff_max_ms / 1000
                )
                worker.proc = None
            elif proc is None and now >= worker.restart_at:
                self._start(worker)

    def _stop_all(self, workers: list[_Worker]) -> None:
        running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self._signal)
        deadline = time.monotonic() + self.settings.shutdown_drain_s + _STOP_MARGIN_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("HTTP worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                proc.wait(timeout=5)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_main() -> None:
    """A worker: settings from stdin; serve the port and a loopback port of its own."""
    from townhall.server.run import run_server

    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    public = reuseport_socket(settings.host, settings.port)
    if settings.worker_role == "listener":  # its requests go to the primary's port
        import uvicorn  # noqa: F401  # imported before the wait: on the port right after it

        from townhall.origin import http1  # noqa: F401
        from townhall.server import app, logs  # noqa: F401  # run_server imports them
        from townhall.server.local_bus import ListenerApp, wait_for_primary

        ListenerApp(settings)
        public.close()  # not on the port until the primary serves: nothing to pass on to
        wait_for_primary(settings.data_dir, PRIMARY_START_WAIT_S)
        run_server(settings, sockets=[reuseport_socket(settings.host, settings.port)])
        return
    internal = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    internal.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{internal.getsockname()[1]}"
    settings = settings.model_copy(update={"forward_url": url})
    run_server(settings, sockets=[public, internal])


if __name__ == "__main__":
    worker_main()
