"""The ASGI application: one FastAPI app with the control-plane API under
``/api/``, the listener plane (playlists, parts, state.json) and the pages.

``create_app(settings)`` is the only constructor; tests build one per test with
their own data directory.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from townhall import __version__, problems
from townhall.config import Settings
from townhall.errors import PayloadTooLarge
from townhall.server.services import Services


class BodyLimit:
    """Refuse bodies over ``max_body_bytes`` with 413 before the app reads them.

    Checks Content-Length up front and counts streamed bytes for chunked bodies.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_body_bytes or declared < 0:
                    await self._refuse(scope, send)
                    return
        seen = 0
        limit = self.max_body_bytes

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        err = PayloadTooLarge(
            f"The request body is larger than {self.max_body_bytes} bytes; send a smaller body."
        )
        response = problems.problem_response(err.to_problem(scope.get("path")))
        await response(scope, _noop_receive, send)


class _TooLarge(Exception):
    pass


async def _noop_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application. Services open in the lifespan, not here."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.open(settings)
        app.state.services = services
        if settings.worker_role == "primary":  # HTTP workers without Redis
            from townhall.origin.entry_log import EntryLog
            from townhall.server.local_bus import publish_primary

            if hasattr(services.rooms, "local_log"):
                services.rooms.local_log = EntryLog(settings.local_bus_entries)
            publish_primary(settings)
        # what start-up built lives for the whole process: keep it out of the
        # collector's full passes, which otherwise stall the mixer clock
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="townhall",
        version=__version__,
        description="Live audio spaces: control-plane API. Listener URLs (playlists, parts, state.json) are plain cacheable HTTP outside /api/.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.started_at = time.time()
    problems.install(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        # "degraded" (a space's program restarting or failed, a recording
        # failing to write) still answers 200: the node serves listeners and
        # its other spaces, and a balancer that drained it on a 503 would cut
        # every listener of every space to fix one. Monitors read "status".
        services = getattr(app.state, "services", None)
        problems = services.rooms.problems() if services is not None else []
        followed = services.rooms.followed() if services is not None else []
        problems += [
            {
                "space_id": room["space_id"],
                "problem": f"This node's copy of the room is {room['lag_ms'] or 0} ms behind its owner"
                + (f" ({room['last_error']})" if room["last_error"] else "")
                + "; listeners here hear it late until it catches up or resyncs.",
            }
            for room in followed
            if room["behind"]
        ]
        return JSONResponse(
            {
                "status": "degraded" if problems else "ok",
                "problems": problems,
                "followed": followed,
                "version": __version__,
                "uptime_s": round(time.time() - app.state.started_at, 1),
            },
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        text = generate_latest().decode()
        services = getattr(app.state, "services", None)
        rooms = services.rooms if services is not None else None
        media = getattr(rooms, "media_metrics", None)
        if media is not None:  # media_process: the clock's families come from there
            text = rooms.metrics_text(text, await media())  # type: ignore[union-attr]
        if settings.worker_role == "primary":  # and its listener workers'
            from townhall.server.worker_metrics import with_workers

            text = with_workers(text, settings.data_dir)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    from townhall.server import routes

    routes.include_all(app)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes)
    from townhall.server.defense import AuthFailureShield

    app.add_middleware(
        AuthFailureShield,
        failures_per_10s=settings.refusals_per_network_per_10s,
        max_keys=settings.rate_limit_max_keys,
    )
    # presence beats, before the shield and the router (issue 12: cheap at scale)
    from townhall.server.api_queue import PresenceFront

    app.add_middleware(PresenceFront, max_body_bytes=settings.max_body_bytes)
    # outermost of ours: an unexpected error becomes a 500 that keeps the connection
    app.add_middleware(problems.KeepAlive)
    # CORS on every answer of a listener resource, problem+json included (issue 12)
    from townhall.origin.cors import Cors, CorsMiddleware

    app.add_middleware(CorsMiddleware, cors=Cors.parse(settings.cors_origins))
    # the API answers the HTTP/1.1 driver gives before all of the above (issue 10)
    from townhall.server.lean import lean_api_of

    app.state.lean_api = lean_api_of(app)
    return app
