"""Running the app: uvicorn with the listener plane's own HTTP/1.1 driver."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from townhall.config import Settings


def run_server(settings: Settings, *, on_startup: Callable[[Any], Any] | None = None) -> None:
    """Run the app on uvicorn (uvloop and httptools where available) until a signal.

    Shutdown: stop accepting, let open requests finish for ``shutdown_drain_s``,
    then cancel the rest; rooms finish their recordings in the lifespan close.
    """
    import uvicorn

    from townhall.server import logs
    from townhall.server.app import create_app
    from townhall.server.auth import public_url_warning

    logs.configure(settings.log_level, json=settings.log_json)
    warning = public_url_warning(settings)
    if warning is not None:
        logging.getLogger("townhall.access").warning("%s", warning)
    app = create_app(settings)
    if on_startup is not None:
        app.state.on_startup = on_startup
    loop = settings.workers_loop
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    http: Any = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if settings.fast_path and http == "httptools":
        # the listener plane's hot GETs below the framework (server/fastproto.py)
        from townhall.origin.fastproto import protocol_for_app

        http = protocol_for_app(app, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=http,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) or None,
        server_header=False,
    )
    uvicorn.Server(config).run()
