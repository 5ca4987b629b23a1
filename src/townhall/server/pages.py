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
import time
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from townhall import __version__, problems
from townhall.errors import NotFound
from townhall.server.api_spaces import SpaceIn
from townhall.server.auth import request_base
from townhall.server.event_ics import event_ics
from townhall.store.spaces import SpaceView

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


def _max_length(model: Any, field: str) -> int:
    """The server's own limit for a field, so a form never accepts more."""
    for item in model.model_fields[field].metadata:
        limit = getattr(item, "max_length", None)
        if isinstance(limit, int):
            return limit
    raise LookupError(f"{model.__name__}.{field} has no max_length")


_LIMITS = {
    "title_max": str(_max_length(SpaceIn, "title")),
    "description_max": str(_max_length(SpaceIn, "description")),
}


def render(
    page: str,
    *,
    title: str,
    cache_control: str,
    space_id: str = "",
    meta: dict[str, str] | None = None,
    status_code: int = 200,
    message: str = "",
) -> HTMLResponse:
    """Render ``templates/<page>.html`` inside ``layout.html``.

    Values are HTML-escaped; the page's module is ``/static/js/pages/<page>.js``.
    ``meta`` adds ``<meta property=... content=...>`` tags (Open Graph).
    """
    values = {
        "title": html.escape(title),
        "page": page,
        "space_id": html.escape(space_id),
        "version": html.escape(__version__),
        "message": html.escape(message),
        **_LIMITS,
    }
    tags = "".join(
        f"<meta {'name' if key.startswith('twitter:') or key == 'description' else 'property'}"
        f'="{html.escape(key)}" content="{html.escape(value)}">\n'
        for key, value in (meta or {}).items()
        if value
    )
    links = (
        # players and apps that read the page find the stream (and its codec) here
        f'<link rel="alternate" type="application/vnd.apple.mpegurl" title="Live audio (HLS)" '
        f'href="/spaces/{html.escape(space_id)}/master.m3u8">\n'
        if page == "listener" and space_id
        else ""
    )
    body = _template(f"{page}.html").substitute(values)
    document = _template("layout.html").substitute(values, body=body, meta=tags, links=links)
    headers = {"Cache-Control": cache_control, **_PAGE_HEADERS}
    return HTMLResponse(document, status_code=status_code, headers=headers)


def human_error_page(status: int, sentence: str) -> HTMLResponse:
    """A page a person can read for a browser that asked for HTML (not raw JSON)."""
    title = "Page not found" if status == 404 else "Something went wrong"
    return render(
        "error",
        title=f"{title} · townhall",
        cache_control=CACHE_NONE,
        status_code=status,
        message=sentence,
    )


problems.set_html_renderer(human_error_page)

# Link previews (Open Graph) read the space's title: one database read per
# space per _PREVIEW_TTL_S per process, whatever the number of clicks.
_PREVIEW_TTL_S = 30.0
_PREVIEW_MAX = 2048
_previews: dict[str, tuple[float, SpaceView | None]] = {}


async def _space_preview(request: Request, space_id: str) -> SpaceView | None:
    now = time.monotonic()
    hit = _previews.get(space_id)
    if hit is not None and hit[0] > now:
        return hit[1]
    view: SpaceView | None
    try:
        view = await request.app.state.services.spaces.get(space_id)
    except NotFound:
        view = None
    except Exception:  # the page works without a preview; the database may be down
        log.warning("no link preview for space %s", space_id, exc_info=True)
        return None
    if len(_previews) >= _PREVIEW_MAX:
        _previews.clear()
    _previews[space_id] = (now + _PREVIEW_TTL_S, view)
    return view


def _preview_meta(request: Request, view: SpaceView | None, path: str) -> dict[str, str]:
    base = request_base(request)
    meta = {
        "og:site_name": "townhall",
        "og:type": "website",
        "og:url": f"{base}{path}",
        "og:image": f"{base}/static/favicon.svg",
        "twitter:card": "summary",
    }
    if view is None:
        meta["og:title"] = "A live space on townhall"
        return meta
    host = view.host.display_name or view.host.username
    when = {
        "live": "Live now",
        "scheduled": "Scheduled",
        "ended": "Replay",
    }.get(view.state, "")
    summary = view.description.strip() or f"{when}: a live audio space hosted by {host}."
    meta["og:title"] = view.title
    meta["og:description"] = summary[:300]
    meta["description"] = summary[:300]
    meta["twitter:title"] = view.title
    return meta


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
async def listener_page(space_id: str, request: Request) -> HTMLResponse:
    view = await _space_preview(request, _space_id(space_id))
    title = f"{view.title} · townhall" if view is not None else "Live space · townhall"
    return render(
        "listener",
        title=title,
        cache_control=CACHE_SHORT,
        space_id=space_id,
        meta=_preview_meta(request, view, f"/spaces/{space_id}"),
    )


@router.get("/spaces/{space_id}/event.ics")
async def event_calendar(space_id: str, request: Request) -> Response:
    """The space as a calendar entry (scheduled start, or when it went live)."""
    view: SpaceView = await request.app.state.services.spaces.get(_space_id(space_id))
    starts_at = view.scheduled_for or view.started_at or view.created_at
    document = event_ics(
        space_id=view.id,
        title=view.title,
        description=view.description,
        starts_at=starts_at,
        page_url=f"{request_base(request)}/spaces/{view.id}",
        host_name=view.host.display_name or view.host.username,
        now=datetime.now(UTC),
    )
    return Response(
        document,
        media_type="text/calendar; charset=utf-8",
        headers={
            "Cache-Control": CACHE_SHORT,
            "Content-Disposition": f'attachment; filename="townhall-{view.id}.ics"',
            "X-Content-Type-Options": "nosniff",
        },
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

if not (_WEB / "static" / "vendor" / "hls.min.js").is_file():
    log.warning(
        "hls.js is not installed in %s/vendor: the listener page plays only in Safari; "
        "install townhall from a built wheel, or run scripts/setup.sh (npm ci)",
        _STATIC_DIR,
    )


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
