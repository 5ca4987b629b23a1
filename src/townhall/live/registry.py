"""The rooms running in this process, one per live space."""

from __future__ import annotations

import asyncio

from townhall import metrics
from townhall.config import Settings
from townhall.live.room import Room


class RoomRegistry:
    """Starts and ends rooms; ``get`` is a dict lookup for the hot path."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rooms: dict[str, Room] = {}
        self._lock = asyncio.Lock()

    def get(self, space_id: str) -> Room | None:
        return self._rooms.get(space_id)

    def __len__(self) -> int:
        return len(self._rooms)

    def problems(self) -> list[dict[str, str]]:
        """What is wrong with the rooms of this process now (for /healthz): one
        entry per failing program or recording, with a sentence."""
        return [
            {"space_id": space_id, "problem": problem}
            for space_id, room in self._rooms.items()
            for problem in room.program.health().problems()
        ]

    def space_ids(self) -> list[str]:
        """The spaces with a room on this node, now (a copy)."""
        return list(self._rooms)

    async def start(self, space_id: str) -> Room:
        """Start the room of a live space; a second call returns the same room."""
        async with self._lock:
            room = self._rooms.get(space_id)
            if room is None:
                room = Room(space_id, self.settings)
                await room.start()
                self._rooms[space_id] = room
                metrics.SPACES_LIVE.set(len(self._rooms))
            return room

    async def end(self, space_id: str) -> None:
        """End the talk: the recording is finished and served as VOD."""
        async with self._lock:
            room = self._rooms.pop(space_id, None)
            metrics.SPACES_LIVE.set(len(self._rooms))
        if room is not None:
            await room.end()

    async def close(self) -> None:
        """Process shutdown: suspend every room (they resume at the next start)."""
        async with self._lock:
            rooms = list(self._rooms.values())
            self._rooms.clear()
            metrics.SPACES_LIVE.set(0)
        for room in rooms:
            await room.suspend()
