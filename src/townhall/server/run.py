"""Running the app: uvicorn with the listener plane's own HTTP/1.1 driver
(origin/http1.py) for every request."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from townhall.config import Settings

log = logging.getLogger("townhall.http")


def run_server(settings: Settings, *, on_startup: Callable[[Any], Any] | None = None) -> None:
    """Run the app on uvicorn (uvloop where available) until a signal.

    One HTTP driver: townhall's own (httptools underneath) answers the listener
    plane's hot requests itself when ``fast_path`` is on and hands everything
    else to the app; uvicorn's h11 protocol is the fallback only where httptools
    is missing. At start the soft file-descriptor limit is raised to the hard
    one (and logged): the connection caps stay well below it.

    Shutdown: stop accepting, let open requests finish for ``shutdown_drain_s``,
    then cancel the rest; rooms finish their recordings in the lifespan close.
    """
    import uvicorn

    from townhall.origin.conn_limits import raise_fd_limit
    from townhall.server import logs
    from townhall.server.app import create_app
    from townhall.server.auth import public_url_warning

    logs.configure(settings.log_level, json=settings.log_json)
    warning = public_url_warning(settings)
    if warning is not None:
        logging.getLogger("townhall.access").warning("%s", warning)
    raise_fd_limit()
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
    config = uvicorn.Config(
        app,
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
    )
    uvicorn.Server(config).run()
