"""Errors to problem+json (RFC 9457): one place maps every failure a client can
cause to a status and a sentence, so no request ever sees a traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from townhall import metrics
from townhall.errors import TownhallError

log = logging.getLogger("townhall.access")

PROBLEM_JSON = "application/problem+json"


# A browser navigating to an address that does not exist gets a page, not JSON:
# the web layer registers how to render one (set_html_renderer).
_html_renderer: Callable[[int, str], Response] | None = None


def set_html_renderer(renderer: Callable[[int, str], Response]) -> None:
    """Render 404s as a page for requests that ask for ``text/html``."""
    global _html_renderer
    _html_renderer = renderer


def _wants_page(request: Request, status: int) -> bool:
    if status != 404 or _html_renderer is None or request.method not in ("GET", "HEAD"):
        return False
    return "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(
        "/api/"
    )


def problem_response(
    problem: dict[str, Any],
    *,
    retry_after_s: float | None = None,
    headers: dict[str, str] | None = None,
    cache_control: str = "no-store",
) -> Response:
    """A problem+json response; adds Retry-After (whole seconds, rounded up) when given."""
    import orjson

    headers = {**(headers or {}), "Cache-Control": cache_control}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, int(-(-retry_after_s // 1))))
    return Response(
        orjson.dumps(problem),
        status_code=int(problem["status"]),
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_problem(exc: RequestValidationError, path: str) -> dict[str, Any]:
    errors = []
    for err in exc.errors():
        field = _field_name(err.get("loc", ()))
        if err.get("type") == "json_invalid":
            return {
                "type": "https://townhall.invalid/problems/malformed-json",
                "title": "Malformed JSON",
                "status": 400,
                "detail": "The request body is not valid JSON; send a JSON object with the documented fields.",
                "instance": path,
            }
        errors.append({"field": field, "message": str(err.get("msg", "invalid"))})
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    detail = f"Field '{first['field']}' is invalid: {first['message']}."
    if len(errors) > 1:
        detail += f" ({len(errors) - 1} more field error(s) listed in 'errors'.)"
    return {
        "type": "https://townhall.invalid/problems/invalid-field",
        "title": "Invalid field",
        "status": 422,
        "detail": detail,
        "instance": path,
        "errors": errors,
    }


_STATUS_SENTENCES = {
    404: "There is nothing at this address; check the URL.",
    405: "This address does not accept that method; see /api/openapi.json.",
}


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(TownhallError)
    async def _townhall(request: Request, exc: TownhallError) -> Response:
        if exc.status >= 500:
            log.log(exc.log_level, "townhall error on %s: %s", request.url.path, exc.detail)
        metrics.PROBLEMS.labels(status=str(exc.status)).inc()
        if _html_renderer is not None and _wants_page(request, exc.status):
            return _html_renderer(exc.status, exc.detail)
        return problem_response(
            exc.to_problem(request.url.path),
            retry_after_s=exc.retry_after_s,
            cache_control=exc.cache_control,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problem = _validation_problem(exc, request.url.path)
        metrics.PROBLEMS.labels(status=str(problem["status"])).inc()
        return problem_response(problem)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = (
            exc.detail
            if isinstance(exc.detail, str) and exc.detail not in ("Not Found", "Method Not Allowed")
            else None
        )
        sentence = detail or _STATUS_SENTENCES.get(
            exc.status_code, "The request could not be served."
        )
        metrics.PROBLEMS.labels(status=str(exc.status_code)).inc()
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.scope))
        if _html_renderer is not None and _wants_page(request, exc.status_code):
            return _html_renderer(exc.status_code, sentence)
        return problem_response(
            {
                "type": "about:blank",
                "title": _title(exc.status_code),
                "status": exc.status_code,
                "detail": sentence,
                "instance": request.url.path,
            },
            headers=headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        metrics.PROBLEMS.labels(status="500").inc()
        return problem_response(_internal_problem(request.url.path))


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route of ``app`` answers at this request's path (for
    ``Allow``: Starlette names only the first route whose path matched, and a
    path such as /api/spaces has one route per method)."""
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**scope, "method": method})[0] is Match.FULL
            for route in app.router.routes
        )
    ]


def _internal_problem(path: str | None) -> dict[str, Any]:
    return {
        "type": "https://townhall.invalid/problems/internal",
        "title": "Internal error",
        "status": 500,
        "detail": "Something went wrong on our side; it has been logged. Try again in a moment.",
        "instance": path or "",
    }


class KeepAlive:
    """Answer an unexpected error with the 500 problem and keep the connection.

    Starlette's outermost error middleware re-raises after its 500, and the
    server then closes the connection, so the client's next request on it (a
    playlist, /healthz) fails too. This middleware, placed inside it, renders
    the same problem and returns normally. An error after the response has
    started still propagates: that connection cannot be saved."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            metrics.PROBLEMS.labels(status="500").inc()
            response = problem_response(_internal_problem(scope.get("path")))
            await response(scope, receive, send)


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
