"""The owner's side of a room's seats on every node (``live/seats.py``): one
task per node publishes the seats of every room it runs, every
``seat_status_interval_ms``, and at once when told (``changed``: a mute, an
unmute, a demote, a block), so another node's state.json shows a mute one
state interval later at most. Followers read them in
``Scaleout.seat_view``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from townhall import metrics
from townhall.live.seats import encode_seats, room_fields
from townhall.store.seat_board import SeatBoard

log = logging.getLogger("townhall.media")

OwnedRooms = Callable[[], list[tuple[str, str, Any]]]
"""(space id, lease token, room) of every room this node runs now."""


class SeatPublisher:
    """Publishes the seats of this node's rooms (see the module docstring)."""

    def __init__(self, board: SeatBoard, rooms: OwnedRooms, *, interval_s: float) -> None:
        self.board = board
        self.interval_s = interval_s
        self._rooms = rooms
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def changed(self) -> None:
        """A seat changed here: publish now, not at the next interval."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="townhall-seats")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def publish_all(self) -> int:
        """One round: every room this node runs; the number written. A room
        whose write fails (Redis away) is counted and tried again next round."""
        written = 0
        for space_id, token, room in self._rooms():
            doc = encode_seats(room.stage.speaker_status(), room_fields(room))
            try:
                written += await self.board.publish(space_id, token, doc)
            except Exception as exc:  # the client's errors: Redis away or slow
                metrics.BUS_FAILURES.labels(op="seats").inc()
                if not self._failing:
                    log.warning("cannot publish the seats of room %s (%s)", space_id, exc)
                self._failing = True
            else:
                self._failing = False
        return written

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before the round: a change during it wakes the next
            try:
                await self.publish_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # the task's top level: log, count, go on next round
                metrics.TASK_FAILURES.labels(task="seats").inc()
                log.exception("publishing seats failed; next round in %.1f s", self.interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
