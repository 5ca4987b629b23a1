"""The web app's pages and static files, served by townhall itself.

Pages are plain HTML shells rendered from ``townhall/web/templates`` (no
template engine: ``string.Template`` with escaped values); everything dynamic
is fetched by vanilla JS modules from the public API and the cacheable
``state.json``. No page touches the database, so a flood of share-link clicks
costs one small cacheable response each. Pages are not in the OpenAPI schema.
"""

from __future__ import annotations

import html
import logging
import re
import string
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from townhall import __version__
from townhall.errors import NotFound

log = logging.getLogger("townhall.web")

router = APIRouter(include_in_schema=False)

# Space ids are 12 lowercase base32 characters (docs/CONTRACTS.md).
_SPACE_ID = re.compile(r"[a-z2-7]{12}")

_WEB = resources.files("townhall.web")
_STATIC_DIR = str(_WEB / "static")

# Caching of the page shells: they hold no per-user data.
CACHE_SHORT = "public, max-age=30"
CACHE_NONE = "no-store"
# Static assets have stable URLs (no build step, no hashed names): revalidate by ETag.
CACHE_STATIC = "no-cache"

# The pages run only our own modules: no inline script, media from blob: (MSE).
_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "media-src 'self' blob: data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    )
)

_PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
}


@cache
def _template(name: str) -> string.Template:
    return string.Template((_WEB / "templates" / name).read_text(encoding="utf-8"))


def render(page: str, *, title: str, cache_control: str, space_id: str = "") -> HTMLResponse:
    """Render ``templates/<page>.html`` inside ``layout.html``.

    Values are HTML-escaped; the page's module is ``/static/js/pages/<page>.js``.
    """
    values = {
        "title": html.escape(title),
        "page": page,
        "space_id": html.escape(space_id),
        "version": html.escape(__version__),
    }
    body = _template(f"{page}.html").substitute(values)
    document = _template("layout.html").substitute(values, body=body)
    headers = {"Cache-Control": cache_control, **_PAGE_HEADERS}
    return HTMLResponse(document, headers=headers)


def _space_id(space_id: str) -> str:
    if not _SPACE_ID.fullmatch(space_id):
        raise NotFound(
            "There is no space with this id; check the link (space ids are 12 letters and digits)."
        )
    return space_id


@router.get("/")
async def home_page() -> HTMLResponse:
    return render("home", title="townhall: live audio spaces", cache_control=CACHE_SHORT)


@router.get("/signin")
async def signin_page() -> HTMLResponse:
    return render("signin", title="Sign in · townhall", cache_control=CACHE_SHORT)


@router.get("/signup")
async def signup_page() -> HTMLResponse:
    return render("signup", title="Sign up · townhall", cache_control=CACHE_SHORT)


@router.get("/new")
async def new_space_page() -> HTMLResponse:
    return render("new", title="New space · townhall", cache_control=CACHE_SHORT)


@router.get("/spaces/{space_id}")
async def listener_page(space_id: str) -> HTMLResponse:
    return render(
        "listener",
        title="Live space · townhall",
        cache_control=CACHE_SHORT,
        space_id=_space_id(space_id),
    )


@router.get("/spaces/{space_id}/host")
async def host_page(space_id: str) -> HTMLResponse:
    return render(
        "host",
        title="Host console · townhall",
        cache_control=CACHE_NONE,
        space_id=_space_id(space_id),
    )


@router.get("/spaces/{space_id}/replay")
async def replay_page(space_id: str) -> HTMLResponse:
    return render(
        "replay",
        title="Replay · townhall",
        cache_control=CACHE_SHORT,
        space_id=_space_id(space_id),
    )


_static = StaticFiles(directory=_STATIC_DIR, check_dir=False)


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
async def static_file(path: str, request: Request) -> Response:
    """Files under ``web/static``. Paths with ``..`` are refused here, and
    StaticFiles also refuses anything that resolves outside the directory."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or any(part == ".." or "\\" in part or "\x00" in part for part in parts):
        raise NotFound("There is no such file; check the URL.")
    response = await _static.get_response("/".join(parts), request.scope)
    response.headers["Cache-Control"] = CACHE_STATIC
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
