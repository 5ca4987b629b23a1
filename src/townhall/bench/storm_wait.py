"""How simulated waiters look at the shared queue document, cheaply.

A waiting page reads queue.json about once a second, each on its own phase,
and decides: my turn (post the ticket), give up, renew, or wait on. With the
shared copy (``--poll shared``) that is pure arithmetic, so instead of one
coroutine per waiter waking every second (9,000 waiters cost a quarter of
the generator's core), one ``Lookouts`` task keeps every waiter's next look
in a heap and wakes a waiter only when it must act. Each waiter keeps its
own phase (0.5-1.5 s between looks, drawn anew each time), so when it
notices its turn is unchanged.

``look`` is the decision of one look; the storm's per-waiter loop (``--poll
each``, where every look is a real request) uses it too.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from townhall.bench.storm_report import Arrival

TTL_POST_S = 40.0  # a numbered ticket is posted again this often (the page renews it)
TICK_S = 0.05


def look(
    a: Arrival,
    doc: dict[str, Any],
    *,
    now: float,
    posted_at: float,
    retry_s: float,
    jitter: float,
    eta_of: Callable[..., float | None],
) -> bool:
    """One look at ``doc`` (monotonic ``now``): True when the ticket must be
    posted (its turn, the draw, a renewal). Records the ETAs the page would
    show, one look in five."""
    through = int(doc.get("admitting_through", 0))
    if a.number is not None and random.random() < 0.2:
        wall = time.time()
        eta = eta_of(doc, a.number - through, wall)
        if eta is None:
            a.unknown_etas += 1
        else:
            a.shown_etas.append((wall, eta))
        previous = eta_of(doc, a.number - through, wall, settled=False)
        if previous is not None:
            a.shown_etas_measured.append((wall, previous))
        # the model before (position / the line's recent speed), side by side
        line_rate = float(doc.get("line_rate_per_s") or 0.0)
        if line_rate > 0:
            a.shown_etas_old.append((wall, max(0, a.number - through) / line_rate))
    if a.number is not None and a.number <= through:
        return True
    if a.number is None and doc.get("drawn") and now - posted_at > jitter * 2:
        return True
    return now - posted_at > min(TTL_POST_S, max(retry_s, 1.0)) and (
        a.number is None or now - posted_at > TTL_POST_S
    )


@dataclass(slots=True)
class _Watch:
    a: Arrival
    posted_at: float
    retry_s: float
    since: float
    done: asyncio.Future[bool]


class Lookouts:
    """Every waiter's next look at the shared document, in one heap."""

    def __init__(self, doc: Callable[[], dict[str, Any]], eta_of: Callable[..., float | None]):
        self._doc = doc
        self._eta_of = eta_of
        self._heap: list[tuple[float, int, _Watch]] = []  # (next look, seq, waiter)
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def wait(
        self, a: Arrival, posted_at: float, retry_s: float, since: float
    ) -> asyncio.Future[bool]:
        """A future: True when the ticket must be posted, False when the
        waiter gave up (``a.gave_up_at`` set) or the run ended."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        at = time.monotonic() + 0.5 + random.random()
        heapq.heappush(
            self._heap, (at, next(self._seq), _Watch(a, posted_at, retry_s, since, done))
        )
        return done

    def step(self, now: float) -> None:
        """Every look due by ``now`` (monotonic)."""
        heap = self._heap
        doc = self._doc()
        while heap and heap[0][0] <= now:
            _, seq, w = heapq.heappop(heap)
            if w.done.done():
                continue
            a = w.a
            if a.give_up_after_s is not None and now - w.since > a.give_up_after_s:
                a.gave_up_at = time.time()
                w.done.set_result(False)
                continue
            jitter = random.random()
            if doc and look(
                a,
                doc,
                now=now,
                posted_at=w.posted_at,
                retry_s=w.retry_s,
                jitter=jitter,
                eta_of=self._eta_of,
            ):
                w.done.set_result(True)
                continue
            heapq.heappush(heap, (now + 0.5 + jitter, seq, w))

    async def run(self, deadline: float) -> None:
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(TICK_S)
                self.step(time.monotonic())
        finally:
            for _, _, w in self._heap:
                if not w.done.done():
                    w.done.set_result(False)
            self._heap.clear()
