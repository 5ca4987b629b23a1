"""Numbering a space's new arrivals in short windows, by priority (issues 9
and 10): the arrivals that must queue during one ``window_s`` are numbered
together at its end, those with a "seen before" mark first, then solvers of
the challenge (and everyone when nothing was asked), then the clients that
could not solve; in arrival order within each (``policy.priority``).

Across windows the line stays first come, first served. What waits here is
bounded (``max_pending`` per space; an arrival beyond is numbered at once, in
arrival order), and an arrival that went away before its window closed takes
no number. A window adds at most ``window_s`` to a queued join's answer,
which is a ticket for a wait of seconds or more anyway; and it opens only
for an arrival with something to order by (a mark, a challenge asked): a
"normal" arrival with no window open is numbered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from townhall.policy.priority import Priority, rank

Issue = Callable[[str], Awaitable[int]]
"""The store's numbering: the next arrival index of a space."""


@dataclass(frozen=True, slots=True)
class WindowStatistics:
    spaces: int
    pending: int
    overflowed: int


class ArrivalWindow:
    def __init__(self, issue: Issue, window_s: float, max_pending: int) -> None:
        self._issue = issue
        self.window_s = window_s
        self.max_pending = max_pending
        self._pending: dict[str, list[tuple[int, int, asyncio.Future[int]]]] = {}
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._overflowed = 0

    async def number(self, space_id: str, priority: Priority) -> int:
        """The arrival index of one arrival that must queue (raises what the
        store raised)."""
        batch = self._pending.get(space_id)
        if self.window_s <= 0 or (batch is None and priority == "normal"):
            return await self._issue(space_id)  # nobody to order it against
        if batch is None:
            batch = self._pending[space_id] = []
            task = asyncio.get_running_loop().create_task(self._close(space_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif len(batch) >= self.max_pending:
            self._overflowed += 1
            return await self._issue(space_id)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        batch.append((rank(priority), next(self._seq), future))
        return await future

    async def _close(self, space_id: str) -> None:
        await asyncio.sleep(self.window_s)
        batch = self._pending.pop(space_id, [])
        batch.sort(key=lambda item: (item[0], item[1]))
        for _, _, future in batch:
            if future.done():  # its join went away: no number
                continue
            try:
                index = await self._issue(space_id)
            except Exception as exc:  # handed to the waiting join, which answers 503
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(index)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for batch in self._pending.values():
            for _, _, future in batch:
                future.cancel()
        self._pending.clear()

    def statistics(self) -> WindowStatistics:
        return WindowStatistics(
            len(self._pending), sum(len(b) for b in self._pending.values()), self._overflowed
        )
