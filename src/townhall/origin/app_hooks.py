"""What the listener rules (``origin/rules.py``) look up in an app built by
``create_app``: its running programs, its media gate, its playlist limit and
whether the host has ended a space.
Each lookup finds the app's services lazily (they exist once the lifespan
started) by attribute, so ``origin`` never imports ``townhall.server``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from townhall.errors import TownhallError
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


# a space's "has the host ended it" as last read from the database: ended is
# final, so kept; anything else is read again after this long
_ENDED_RECHECK_S = 0.5
_ENDED_MEMO_MAX = 1024


def talk_ended_of(app: Any) -> Callable[[str], Awaitable[bool]]:
    """Whether the host has ended a space: this node's space index, else the
    database (a follower's index lags its refresh; the database does not), read
    at most every 0.5 s per space. False when neither can say (not started, no
    database), so the caller keeps its "still live" answer."""
    memo: OrderedDict[str, tuple[float, bool]] = OrderedDict()

    async def ended(space_id: str) -> bool:
        spaces = getattr(getattr(app.state, "services", None), "spaces", None)
        if spaces is None:
            return False  # not started yet
        entry = spaces.index.get(space_id)
        if entry is not None and entry.state == "ended":
            return True
        now = time.monotonic()
        known = memo.get(space_id)
        if known is not None and (known[1] or now - known[0] < _ENDED_RECHECK_S):
            return known[1]
        try:
            view = await spaces.get(space_id)
        except TownhallError:  # no such space, the database unreachable
            return False
        result = bool(view.state == "ended")
        memo[space_id] = (now, result)
        memo.move_to_end(space_id)
        while len(memo) > _ENDED_MEMO_MAX:
            memo.popitem(last=False)
        return result

    return ended
