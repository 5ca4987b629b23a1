"""CORS for listener resources (issue 12): which pages on other origins may
read the playlists, media, state.json and their problem+json answers.

``cors_origins = "*"`` (the default: a public space is meant to be embedded)
puts ``Access-Control-Allow-Origin: *`` in the bytes themselves, so the fast
path and any cache in front serve them as they are. A list of origins needs an
answer per requesting origin: the listener resources then go through the app,
where :class:`CorsMiddleware` writes the header for an allowed ``Origin`` and
``Vary: Origin`` on every answer (so a cache keeps one copy per origin).

The policy (:class:`Cors`) is pure; the middleware only edits response heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ANY = "*"
ALLOW_ORIGIN = b"access-control-allow-origin"
# what a player on another origin may read besides the safelisted headers: the
# wait before retrying a 429/503, and the validators it revalidates with
EXPOSE = b"Retry-After, ETag, Age"
# pages of a person, not resources a player reads
_PAGES = frozenset({"host"})


@dataclass(frozen=True, slots=True)
class Cors:
    """``any_origin``, or the exact origins (scheme://host[:port]) allowed."""

    any_origin: bool
    origins: frozenset[str]

    @classmethod
    def parse(cls, value: str) -> Cors:
        """From the setting: ``*``, or origins separated by commas. An entry
        with a path or no scheme is refused with a sentence naming it."""
        items = [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
        if not items or ANY in items:
            return cls(True, frozenset())
        for item in items:
            scheme, sep, rest = item.partition("://")
            if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
                raise ValueError(
                    f"cors_origins: {item!r} is not an origin such as https://news.example "
                    "(scheme and host, an optional port, no path), nor '*'"
                )
        return cls(False, frozenset(items))

    def allow(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from ``origin``."""
        if self.any_origin:
            return ANY
        return origin if origin is not None and origin in self.origins else None

    def head(self, origin: str | None) -> list[tuple[bytes, bytes]]:
        """The CORS header lines of an answer to a request from ``origin``."""
        lines: list[tuple[bytes, bytes]] = []
        allowed = self.allow(origin)
        if allowed is not None:
            lines.append((ALLOW_ORIGIN, allowed.encode("latin-1")))
            lines.append((b"access-control-expose-headers", EXPOSE))
        if not self.any_origin:
            lines.append((b"vary", b"Origin"))
        return lines


def is_listener_resource(path: str) -> bool:
    """``/spaces/{id}/<name>``: what players and embeds read (not the pages)."""
    if not path.startswith("/spaces/"):
        return False
    _, slash, name = path[8:].partition("/")
    return bool(slash and name) and name not in _PAGES


class CorsMiddleware:
    """Writes the CORS header lines of every answer on a listener resource,
    whoever rendered it (the rules, a route, the problem+json handlers)."""

    def __init__(self, app: ASGIApp, cors: Cors) -> None:
        self.app = app
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_listener_resource(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        origin = None
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value.decode("latin-1")
                break
        extra = self.cors.head(origin)

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                if self.cors.any_origin and any(n.lower() == ALLOW_ORIGIN for n, _ in headers):
                    await send(message)  # the rules' bytes already say so, as the fast path sends
                    return
                kept = [
                    (n, v)
                    for n, v in headers
                    if n.lower() not in (ALLOW_ORIGIN, b"access-control-expose-headers")
                    and not (n.lower() == b"vary" and v == b"Origin")
                ]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, with_cors)
