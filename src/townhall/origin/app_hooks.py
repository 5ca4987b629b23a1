"""What the listener rules (``origin/rules.py``) look up in an app built by
``create_app``: its running programs, its media gate and its playlist limit.
Each lookup finds the app's services lazily (they exist once the lifespan
started) by attribute, so ``origin`` never imports ``townhall.server``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
