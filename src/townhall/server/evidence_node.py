"""The evidence adapter of one node: the book, its store, the stall-report
limits and the task that closes intervals every ``evidence_interval_s``.

Routes and the join path feed it through :meth:`EvidenceNode.request` and
friends (counter bumps, no I/O); the tick writes the closed records to the
chain files beside the recordings and seals the chain of a space that ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from townhall import metrics
from townhall.config import Settings
from townhall.evidence.book import EvidenceBook, make_document
from townhall.evidence.recorder import IntervalRecorder
from townhall.evidence.rule import Thresholds
from townhall.policy.ratelimit import Limit, MemoryLimiter
from townhall.store.evidence_store import EvidenceStore, load_or_create_keys

log = logging.getLogger("townhall.evidence")

# A space's state as the index knows it ("live", "ended", ...); None if unknown.
StateOf = Callable[[str], str | None]


class EvidenceNode:
    def __init__(
        self, settings: Settings, state_of: StateOf, load_of: Callable[[str], int] | None = None
    ) -> None:
        """``state_of``: a space's state; ``load_of``: its listener count on
        this node (recorded as ``load`` beside ``capacity`` = max_listeners)."""
        key, hash_key = load_or_create_keys(settings.data_dir)
        self.store = EvidenceStore(settings.recordings_dir)
        self.thresholds = Thresholds(
            busy_arrivals=settings.evidence_busy_arrivals,
            busy_requests=settings.evidence_busy_requests,
            hot_rate_per_s=settings.evidence_hot_rate_per_s,
        )
        self.book = EvidenceBook(
            key,
            hash_key,
            interval_s=settings.evidence_interval_s,
            max_spaces=settings.evidence_max_spaces,
            max_records=settings.evidence_max_records,
            max_keys=settings.evidence_max_keys,
            thresholds=self.thresholds,
            sink=self._store,
            resume=self.store.resume,
        )
        self._state_of = state_of
        self._load_of = load_of
        self._capacity = settings.max_listeners
        # one report per listener token per interval, and a bound per network
        self.stall_tokens = MemoryLimiter(
            Limit(1, settings.stall_report_interval_s * 0.8),
            max_keys=settings.rate_limit_max_keys,
        )
        self.stall_networks = MemoryLimiter(
            Limit(200, settings.stall_report_interval_s), max_keys=settings.rate_limit_max_keys
        )
        self._task: asyncio.Task[None] | None = None
        self._rendered: dict[str, tuple[tuple[int, str], bytes]] = {}

    @property
    def public_key(self) -> str:
        return self.book.public_key

    def recorder(self, space_id: str) -> IntervalRecorder | None:
        return self.book.recorder(space_id)

    def request(
        self,
        space_id: str,
        kind: str,
        client: str | None,
        network: str,
        *,
        arrival: bool = False,
        marked: bool = False,
    ) -> None:
        self.book.request(
            space_id, kind, client or "unknown", network, arrival=arrival, marked=marked
        )

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="townhall-evidence")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for space_id in list(self.book.open_spaces()):
            self._end(space_id)

    async def _run(self) -> None:
        period_s = min(1.0, self.book.interval_s / 4)
        while True:
            await asyncio.sleep(period_s)
            try:
                self.tick()
            except Exception:
                metrics.EVIDENCE_FAILURES.inc()
                log.exception("closing evidence intervals failed; retrying")

    def tick(self) -> None:
        for space_id in [s for s in self.book.open_spaces() if self._state_of(s) == "ended"]:
            self._end(space_id)
        now = time.time()
        for space_id in self.book.open_spaces():
            rec = self.book.recorder(space_id)
            # only intervals about to close: a count costs a sketch estimate
            if rec is not None and now - rec.start_s >= self.book.interval_s:
                rec.capacity = self._capacity
                if self._load_of is not None:
                    rec.load = self._load_of(space_id)
        for _space_id, _record in self.book.tick():
            metrics.EVIDENCE_RECORDS.inc()

    def _end(self, space_id: str) -> None:
        if self.book.end(space_id) is not None:
            metrics.EVIDENCE_RECORDS.inc()
        self.store.seal(space_id)
        self.book.forget(space_id)

    def _store(self, space_id: str, record: dict[str, Any]) -> None:
        try:
            self.store.append(space_id, record)
        except OSError:
            metrics.EVIDENCE_FAILURES.inc()
            log.exception("could not store the evidence record %s of %s", record["seq"], space_id)

    # ------------------------------------------------------------ reading

    def document_bytes(self, space_id: str) -> bytes | None:
        """The document as JSON, rendered once per new record (it only changes
        when an interval closes), however many ask."""
        doc = self.document(space_id)
        if doc is None:
            return None
        stamp = (len(doc["records"]), doc["head"])
        cached = self._rendered.get(space_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        data = orjson.dumps(doc)
        if len(self._rendered) >= self.book.max_spaces:
            self._rendered.clear()
        self._rendered[space_id] = (stamp, data)
        return data

    def empty_document(self, space_id: str) -> dict[str, Any]:
        return make_document(space_id, self.public_key, [], self.book.interval_s, self.thresholds)

    def document(self, space_id: str) -> dict[str, Any] | None:
        doc = self.book.document(space_id)
        if doc is not None:
            return doc
        records = self.store.records(space_id)
        if records is None:
            return None
        return make_document(
            space_id, self.public_key, records, self.book.interval_s, self.thresholds
        )
