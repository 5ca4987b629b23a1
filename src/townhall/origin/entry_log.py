"""The newest window calls of each room a primary runs, for the listener
workers that copy its rooms (server/local_bus.py, issue 11). Pure but for
the asyncio event a long poll waits on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from townhall.origin.bus import Entry


class _RoomLog:
    __slots__ = ("arrived", "entries")

    def __init__(self, max_entries: int) -> None:
        self.entries: deque[Entry] = deque(maxlen=max_entries)
        self.arrived = asyncio.Event()


class EntryLog:
    """The newest ``max_entries`` window calls of each room running on the
    primary, as its media process numbered them; a reader that asks for what
    follows a number older than the log holds sees a gap in the numbers (its
    follower restores from a snapshot)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._rooms: dict[str, _RoomLog] = {}

    def add(self, space_id: str, entry: Entry) -> None:
        room = self._rooms.get(space_id)
        if room is None:
            room = self._rooms[space_id] = _RoomLog(self.max_entries)
        room.entries.append(entry)
        room.arrived.set()
        room.arrived = asyncio.Event()

    def drop(self, space_id: str) -> None:
        """The room is gone from the primary: its readers are woken (and told so)."""
        room = self._rooms.pop(space_id, None)
        if room is not None:
            room.arrived.set()

    def drop_if_idle(self, space_id: str, running: Any) -> None:
        """:meth:`drop`, unless the room runs again (in ``running``)."""
        if space_id not in running:
            self.drop(space_id)

    def after(self, space_id: str, seq: int) -> list[Entry] | None:
        """The entries after ``seq`` (None: no such room here)."""
        room = self._rooms.get(space_id)
        if room is None:
            return None
        return [e for e in room.entries if e.seq > seq]

    async def wait_after(self, space_id: str, seq: int, block_s: float) -> list[Entry] | None:
        """:meth:`after`, waiting up to ``block_s`` while there is nothing new."""
        deadline = time.monotonic() + block_s
        while True:
            found = self.after(space_id, seq)
            if found is None or found:
                return found
            left = deadline - time.monotonic()
            room = self._rooms.get(space_id)
            if left <= 0 or room is None:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(room.arrived.wait(), left)


class NoLog(EntryLog):
    """Keeps nothing: the log of a server without listener workers."""

    def add(self, space_id: str, entry: Entry) -> None:
        return None
