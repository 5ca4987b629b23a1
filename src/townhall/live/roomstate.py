"""Room state for listeners, as in-memory tallies: the listener count and the
reaction totals of each space, and the single-flight cache of the state.json
document computed from them (``server/api_state.py`` serves it).

The listener count is who is listening now: a HyperLogLog sketch of the
distinct listener token ids that said "still here" (join, renewal, or the
page's presence beat every third of ``listener_presence_s``) within the last
one to two generations of half ``listener_presence_s`` each; memory is fixed
per space whatever the crowd (4 KiB per generation, about 1.6 % standard
error). A listener who leaves, closes the tab or loses the network drops out
within ``listener_presence_s``. At shutdown the sketch is saved beside the
data and loaded by the next process (for one presence window), so a restart
does not read 0 while the pages come back.

With ``redis_url`` set, the count and the reaction totals are those of every
node, kept in Redis (``store/shared.py``); the tallies here then only hold
this node's own count, answered while Redis cannot be reached.

Pure but for the cache's awaiting of one computation; no HTTP here.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson


class ListenerSink(Protocol):
    """What join feeds (memory only, must not block): a listener token id seen."""

    def add(self, space_id: str, token_id: str) -> None: ...


class ReactionSink(Protocol):
    """What an accepted reaction feeds (memory only, must not block)."""

    def add(self, space_id: str, emoji: str) -> None: ...


HLL_BITS = 12
HLL_REGISTERS = 1 << HLL_BITS
_HLL_ALPHA = 0.7213 / (1 + 1.079 / HLL_REGISTERS)
_HLL_REST_BITS = 64 - HLL_BITS


def hll_estimate(registers: bytes | bytearray) -> int:
    """Cardinality estimate of a HyperLogLog register array (with the usual
    small-range correction)."""
    m = len(registers)
    harmonic = sum(2.0**-r for r in registers)
    estimate = _HLL_ALPHA * m * m / harmonic
    zeros = registers.count(0)
    if estimate <= 2.5 * m and zeros:
        estimate = m * math.log(m / zeros)
    return round(estimate)


class ListenerCounter:
    """Distinct listener token ids per space seen within the last one to two
    generations of ``ttl_s`` (half ``listener_presence_s`` in the server).

    Two generations of registers per space: the current one takes new ids and
    becomes the previous one after ``ttl_s``; the count is their union, so an
    id is counted for between one and two generations after it was last seen.
    """

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        # space_id -> [generation start, current registers, previous registers]
        self._spaces: dict[str, tuple[float, bytearray, bytearray]] = {}

    def _generation(self, space_id: str) -> tuple[float, bytearray, bytearray]:
        now = self._clock()
        gen = self._spaces.get(space_id)
        if gen is None or now - gen[0] >= 2 * self.ttl_s:
            gen = (now, bytearray(HLL_REGISTERS), bytearray(HLL_REGISTERS))
            self._spaces[space_id] = gen
        elif now - gen[0] >= self.ttl_s:
            gen = (now, bytearray(HLL_REGISTERS), gen[1])
            self._spaces[space_id] = gen
        return gen

    def add(self, space_id: str, token_id: str) -> None:
        value = int.from_bytes(hashlib.blake2b(token_id.encode(), digest_size=8).digest())
        index = value >> _HLL_REST_BITS
        rest = value & ((1 << _HLL_REST_BITS) - 1)
        rank = _HLL_REST_BITS - rest.bit_length() + 1
        registers = self._generation(space_id)[1]
        if registers[index] < rank:
            registers[index] = rank

    def count(self, space_id: str) -> int:
        if space_id not in self._spaces:
            return 0
        _, current, previous = self._generation(space_id)
        union = bytes(max(a, b) for a, b in zip(current, previous, strict=True))
        return hll_estimate(union)

    def snapshot(self) -> dict[str, bytes]:
        """The registers (union of both generations) of every space still
        counting someone: what a restarted process takes over (``restore``)."""
        saved = {}
        for space_id in list(self._spaces):
            if self.count(space_id) > 0:
                _, current, previous = self._spaces[space_id]
                saved[space_id] = bytes(max(a, b) for a, b in zip(current, previous, strict=True))
        return saved

    def restore(self, saved: dict[str, bytes]) -> None:
        """Take over a snapshot as the current generation: those listeners
        count for up to two generations (one presence window), by when the
        ones still listening said so again; registers of the wrong size are
        ignored."""
        now = self._clock()
        for space_id, registers in saved.items():
            if len(registers) == HLL_REGISTERS:
                self._spaces[space_id] = (now, bytearray(registers), bytearray(HLL_REGISTERS))


def save_presence(counter: ListenerCounter, path: Path, *, now_s: float) -> None:
    """Write ``counter``'s snapshot to ``path`` (temp file, then rename)."""
    doc = {
        "saved_at": now_s,
        "spaces": {space_id: regs.hex() for space_id, regs in counter.snapshot().items()},
    }
    temp = path.with_suffix(".tmp")
    temp.write_bytes(orjson.dumps(doc))
    temp.replace(path)


def load_presence(counter: ListenerCounter, path: Path, *, now_s: float, max_age_s: float) -> int:
    """Restore a snapshot written less than ``max_age_s`` ago (then remove the
    file: it is used once); the number of spaces restored. A missing, stale or
    unreadable file restores nothing."""
    try:
        doc = orjson.loads(path.read_bytes())
        path.unlink()
        if not 0 <= now_s - float(doc["saved_at"]) < max_age_s:
            return 0
        saved = {str(k): bytes.fromhex(v) for k, v in dict(doc["spaces"]).items()}
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return 0
    counter.restore(saved)
    return len(saved)


class ReactionTotals:
    """Reaction totals per space since the process started (in memory)."""

    def __init__(self) -> None:
        self._totals: dict[str, Counter[str]] = {}

    def add(self, space_id: str, emoji: str) -> None:
        self._totals.setdefault(space_id, Counter())[emoji] += 1

    def totals(self, space_id: str) -> dict[str, int]:
        return dict(self._totals.get(space_id, {}))


@dataclass(frozen=True, slots=True)
class StateEntry:
    body: bytes
    etag: str
    computed_at: float
    # when the document was last computed successfully (== computed_at unless stale)
    fresh_at: float = 0.0
    stale: bool = False


class StateCache:
    """One shared computation per space per interval (single flight)."""

    def __init__(
        self,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_spaces: int = 10_000,
    ) -> None:
        self.interval_s = interval_s
        self.max_spaces = max_spaces
        self._clock = clock
        self._entries: dict[str, StateEntry] = {}
        self._inflight: dict[str, asyncio.Future[StateEntry]] = {}

    async def get(
        self,
        space_id: str,
        compute: Callable[[], Awaitable[bytes]],
        *,
        stale_on: tuple[type[BaseException], ...] = (),
    ) -> StateEntry:
        """The document of ``space_id``, computed at most once per interval.

        When ``compute`` raises one of ``stale_on`` and a document was computed
        before, that document is answered instead, marked ``"stale": true``
        with its age (``stale_age_s``), and kept for one interval before the
        next attempt; without an earlier document the error propagates."""
        entry = self._entries.get(space_id)
        if entry is not None and self._clock() - entry.computed_at < self.interval_s:
            return entry
        pending = self._inflight.get(space_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[StateEntry] = asyncio.get_running_loop().create_future()
        self._inflight[space_id] = future
        try:
            try:
                body = await compute()
            except stale_on:
                if entry is None:
                    raise
                entry = self._stale(entry)
            else:
                now = self._clock()
                entry = StateEntry(body, _etag(body), now, now)
            if len(self._entries) >= self.max_spaces and space_id not in self._entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[space_id] = entry
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here so a lone computation logs no warning
            raise
        finally:
            del self._inflight[space_id]

    def fresh(self, space_id: str) -> StateEntry | None:
        """The document ``get`` would answer at once (computed within the
        interval), or None: no I/O, for the HTTP driver (issue 10)."""
        entry = self._entries.get(space_id)
        if entry is not None and self._clock() - entry.computed_at < self.interval_s:
            return entry
        return None

    def _stale(self, last: StateEntry) -> StateEntry:
        now = self._clock()
        fresh_at = last.fresh_at if last.stale else last.computed_at
        doc = orjson.loads(last.body)
        doc.pop("stale_age_s", None)
        doc["stale"] = True
        doc["stale_age_s"] = round(now - fresh_at, 1)
        body = orjson.dumps(doc)
        return StateEntry(body, _etag(body), now, fresh_at, stale=True)


def _etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
