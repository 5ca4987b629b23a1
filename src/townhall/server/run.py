"""Running the app: uvicorn with the listener plane's own HTTP/1.1 driver
(origin/http1.py) for every request; with ``http_workers`` above 1, worker
processes of this (server/workers.py) share the port."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from townhall.config import Settings

log = logging.getLogger("townhall.http")
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def listen_backlog(wanted: int, somaxconn: Path = SOMAXCONN) -> int:
    """``http_listen_backlog``, capped at the kernel's ``somaxconn`` (which
    silently truncates a larger one): logged when it caps, so the operator
    knows to raise the sysctl. Without /proc the setting is used as is."""
    try:
        ceiling = int(somaxconn.read_text().strip())
    except (OSError, ValueError):
        return wanted
    if 0 < ceiling < wanted:
        log.warning(
            "listen backlog %d capped at %d by %s; raise it (sysctl net.core.somaxconn) for more",
            wanted,
            ceiling,
            somaxconn,
        )
        return ceiling
    return wanted


def space_full_gc_passes(every: int) -> tuple[int, int, int]:
    """Python's cyclic collector: ``every`` middle-generation passes between
    two full ones (``gc_full_pass_every``), the young thresholds as they are.
    Returns the thresholds now in force."""
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, every)
    return gc.get_threshold()


def run_server(
    settings: Settings,
    *,
    on_startup: Callable[[Any], Any] | None = None,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Run the app on uvicorn (uvloop where available) until a signal; with
    ``http_workers`` above 1 (or 0 when scaled out on a machine of several
    cores), run that many worker processes of it on the port instead
    (server/workers.py). ``sockets``: bound sockets to serve (a worker's),
    instead of binding ``host:port``.

    One HTTP driver: townhall's own (httptools underneath) answers the listener
    plane's hot requests itself when ``fast_path`` is on and hands everything
    else to the app; uvicorn's h11 protocol is the fallback only where httptools
    is missing. At start the soft file-descriptor limit is raised to the hard
    one (and logged): the connection caps stay well below it.

    Shutdown: stop accepting, let open requests finish for ``shutdown_drain_s``,
    then cancel the rest; rooms finish their recordings in the lifespan close.
    """
    import uvicorn

    from townhall.server import workers

    if sockets is None and workers.resolve_workers(settings) > 1:
        if on_startup is None:
            raise SystemExit(workers.Supervisor(settings).run())
        log.warning("one HTTP process: what runs at its start (the demo's bots) needs it")
    from townhall import memdebug
    from townhall.origin.conn_limits import raise_fd_limit
    from townhall.server import logs
    from townhall.server.app import create_app
    from townhall.server.auth import public_url_warning

    logs.configure(settings.log_level, json=settings.log_json)
    warning = public_url_warning(settings)
    if warning is not None:
        logging.getLogger("townhall.access").warning("%s", warning)
    raise_fd_limit()
    log.info("cyclic collector thresholds: %s", space_full_gc_passes(settings.gc_full_pass_every))
    memdebug.install(settings.memory_report_on_sigusr2, settings.memory_trace_frames)
    app: Any
    if settings.worker_role == "listener":  # HTTP workers without Redis (server/local_bus.py)
        from townhall.server.local_bus import ListenerApp

        app = ListenerApp(settings)
    else:
        app = create_app(settings)
    if on_startup is not None:
        app.state.on_startup = on_startup
    loop = settings.workers_loop
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http: Any
    if importlib.util.find_spec("httptools"):
        from townhall.origin.http1 import protocol_for_app

        http = protocol_for_app(app, settings)
    else:
        log.warning(
            "httptools is missing: serving through uvicorn's h11 protocol, without the fast path and the connection limits"
        )
        http = "h11"
    served: Any = app
    if settings.bus_enabled and settings.forward_owner_only and not settings.worker_role:
        from townhall.server.forward import OwnerForward

        served = OwnerForward(app, settings)  # owner-only requests go to the room's owner
    config = uvicorn.Config(
        served,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=http,
        ws="none",  # no route uses WebSocket; the driver answers upgrades 501
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_keep_alive=max(1, round(settings.http_keepalive_idle_s)),
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) or None,
        server_header=False,
        backlog=listen_backlog(settings.http_listen_backlog),
    )
    server = uvicorn.Server(config)
    if settings.http_handoff and not isinstance(http, str):  # our driver (origin/handoff.py)
        from townhall.server.handoff import PrimaryServer, handoff_sender

        if settings.worker_role == "primary":
            server = PrimaryServer(config, settings)
        elif settings.worker_role == "listener":
            http.handoff = handoff_sender(settings)
    server.run(sockets=sockets)
