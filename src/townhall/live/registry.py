"""The rooms running in this process, one per live space (and, scaled out,
the rooms this node follows: see ``live/scaleout.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from townhall import metrics
from townhall.config import Settings

if TYPE_CHECKING:
    from townhall.live.room import Room
    from townhall.live.scaleout import Scaleout


class RoomRegistry:
    """Starts and ends rooms; ``get`` is a dict lookup for the hot path."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rooms: dict[str, Room] = {}
        self._lock = asyncio.Lock()
        self.scaleout: Scaleout | None = None
        """Set when ``bus_enabled``: leases decide where a room runs."""
        self.on_room: Callable[[Room], None] | None = None
        """Called with each new room before it starts (the media process taps it)."""

    def get(self, space_id: str) -> Room | None:
        return self._rooms.get(space_id)

    def listener_source(self, space_id: str) -> Any:
        """What answers listeners of a live space on this node: the program of
        the room running here, else (scaled out) the followed room's copy, or
        None. Both have ``window``, ``progressive`` and ``ended``."""
        room = self._rooms.get(space_id)
        if room is not None:
            return room.program
        if self.scaleout is not None:
            return self.scaleout.listener_source(space_id)
        return None

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

    def followed(self) -> list[dict[str, Any]]:
        """Scaled out: the rooms this node follows, how far behind each is
        (for /healthz); empty otherwise."""
        return self.scaleout.followed_health() if self.scaleout is not None else []

    def space_ids(self) -> list[str]:
        """The spaces with a room on this node, now (a copy)."""
        return list(self._rooms)

    async def start(self, space_id: str) -> Room | None:
        """Start the room of a live space; a second call returns the same room.
        Scaled out: only if this node gets the room's lease (else None: it follows)."""
        if self.scaleout is not None:
            return await self.scaleout.claim(space_id)
        return await self.start_local(space_id)

    async def start_local(self, space_id: str) -> Room:
        async with self._lock:
            room = self._rooms.get(space_id)
            if room is None:
                # here, not at the top: a server whose rooms run in the media
                # process (the default) never loads the speaker plane (aiortc, av)
                from townhall.live.room import Room

                room = Room(space_id, self.settings)
                if self.on_room is not None:
                    self.on_room(room)
                if self.scaleout is not None:
                    self.scaleout.attach(room)
                try:
                    await room.start()
                except BaseException:
                    if self.scaleout is not None:
                        await self.scaleout.detach(space_id, release=True)
                    raise
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
            if self.scaleout is not None:
                await self.scaleout.detach(space_id, release=True)

    async def suspend(self, space_id: str) -> None:
        """Stop running the room here without ending the talk (lost its lease)."""
        async with self._lock:
            room = self._rooms.pop(space_id, None)
            metrics.SPACES_LIVE.set(len(self._rooms))
        if room is not None:
            await room.suspend()
            if self.scaleout is not None:
                await self.scaleout.detach(space_id, release=False)

    async def close(self) -> None:
        """Process shutdown: suspend every room (they resume at the next start)."""
        async with self._lock:
            rooms = list(self._rooms.values())
            self._rooms.clear()
            metrics.SPACES_LIVE.set(0)
        for room in rooms:
            await room.suspend()
            if self.scaleout is not None:
                await self.scaleout.detach(room.space_id, release=True)
        if self.scaleout is not None:
            await self.scaleout.close()
