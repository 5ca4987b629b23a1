"""What the listener rules (``origin/rules.py``) look up in an app built by
``create_app``: its running programs, its media gate and its playlist limit.
Each lookup finds the app's services lazily (they exist once the lifespan
started) by attribute, so ``origin`` never imports ``townhall.server``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from townhall.origin.answers import Rendered
from townhall.origin.asgi_cycle import Request
from townhall.origin.follower import ListenerSource
from townhall.origin.gate import gate_of as gate_of
from townhall.origin.netlimit import ClientLimit, Headers


def programs_of(app: Any) -> Callable[[str], ListenerSource | None]:
    """The lookup of running programs in an app."""

    found: list[Any] = []

    def lookup(space_id: str) -> ListenerSource | None:
        if not found:
            rooms = getattr(getattr(app.state, "services", None), "rooms", None)
            if rooms is None:
                return None  # not started yet
            found.append(rooms)
        source: ListenerSource | None = found[0].listener_source(space_id)
        return source

    return lookup


def refusal_of(app: Any) -> EarlyRefusal:
    """The HTTP driver's answers before any ASGI work (``server.defense``):
    a client network, or a bearer token, whose API requests keep being refused
    gets its 429 from a dict lookup; a state.json that is cached gets its
    bytes (or its network's 429). (An object, not a function: it is kept as a
    class attribute.)"""
    return EarlyRefusal(app)


class EarlyRefusal:
    """(peer, request) -> an answer to send at once, or None (the app answers)."""

    __slots__ = ("app",)

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, peer: str | None, req: Request) -> Rendered | None:
        url = req.url
        if url.startswith(b"/api/"):
            defense = getattr(getattr(self.app.state, "services", None), "defense", None)
            if defense is None:
                return None
            found: Rendered | None = defense.refusals.early(peer, url, req.headers, defense.vouched)
            return found
        if url.startswith(b"/spaces/") and req.method in (b"GET", b"HEAD"):
            services = getattr(self.app.state, "services", None)
            if services is None or services.defense is None or not services.settings.fast_path:
                return None
            cached: Rendered | None = services.defense.cached_state(services, peer, req)
            return cached
        return None


def limit_of(app: Any) -> ClientLimit:
    """The per-network playlist limit of an app (``server.defense.Defense``);
    before the lifespan started, and without a defense, nothing is limited."""

    def limit(peer: str | None, headers: Headers) -> float:
        defense = getattr(getattr(app.state, "services", None), "defense", None)
        if defense is None:
            return 0.0
        wait_s: float = defense.allow_listener_playlist(peer, headers)
        return wait_s

    return limit
