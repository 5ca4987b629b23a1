"""The node's evidence book: one :class:`IntervalRecorder` and one signed
chain per space, closed every ``interval_s`` by :meth:`EvidenceBook.tick`.

Bounded: at most ``max_spaces`` spaces are recorded at once (a request for
another is counted in ``statistics().spaces_refused`` and not recorded) and
at most ``max_records`` records per space stay in memory; the full chain is
what the ``sink`` stored (``store.evidence_store``), which also lets a chain
resume after a restart (``resume``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from townhall.evidence.chain import ALGORITHM, GENESIS, ChainWriter
from townhall.evidence.recorder import IntervalRecorder
from townhall.evidence.rule import Thresholds
from townhall.evidence.sketch import SeenFilter, keyed_hash

Sink = Callable[[str, dict[str, Any]], None]
Resume = Callable[[str], tuple[int, str] | None]


@dataclass(frozen=True, slots=True)
class BookStatistics:
    spaces: int
    records: int
    spaces_refused: int


class EvidenceBook:
    def __init__(
        self,
        key: Ed25519PrivateKey,
        hash_key: bytes,
        *,
        interval_s: float = 10.0,
        max_spaces: int = 1024,
        max_records: int = 4320,
        max_keys: int = 4096,
        thresholds: Thresholds = Thresholds(),  # noqa: B008 (frozen, shared)
        sink: Sink | None = None,
        resume: Resume | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._hash_key = hash_key
        self.interval_s = interval_s
        self.max_spaces = max_spaces
        self.max_records = max_records
        self.max_keys = max_keys
        self.thresholds = thresholds
        self._sink = sink
        self._resume = resume
        self._clock = clock
        self.seen = SeenFilter()
        self._open: dict[str, IntervalRecorder] = {}
        self._writers: dict[str, ChainWriter] = {}
        self._records: dict[str, list[dict[str, Any]]] = {}
        self._truncated: set[str] = set()
        self._refused = 0
        self._count = 0
        probe = ChainWriter("-", key)
        self.public_key = probe.public_key
        self.key_id = probe.key_id

    # ------------------------------------------------------------ feeding

    def recorder(self, space_id: str) -> IntervalRecorder | None:
        """The open interval of ``space_id`` (opened on first use), or None
        when ``max_spaces`` are already recorded."""
        rec = self._open.get(space_id)
        if rec is None:
            if len(self._open) >= self.max_spaces:
                self._refused += 1
                return None
            rec = self._open[space_id] = IntervalRecorder(self._clock(), max_keys=self.max_keys)
        return rec

    def hash(self, text: str) -> int:
        return keyed_hash(self._hash_key, text)

    def request(
        self,
        space_id: str,
        kind: str,
        client: str,
        network: str,
        *,
        arrival: bool = False,
        marked: bool = False,
    ) -> None:
        """Count one request from ``client`` (address) in ``network`` (its /24, /64)."""
        rec = self.recorder(space_id)
        if rec is not None:
            rec.request(kind, self.hash(client), self.hash(network), arrival=arrival, marked=marked)

    # ------------------------------------------------------------ closing

    def tick(self, live: Iterable[str] = ()) -> list[tuple[str, dict[str, Any]]]:
        """Close every interval that is ``interval_s`` old (and open one for
        each live space that has none): the new records, already stored."""
        now = self._clock()
        for space_id in live:
            self.recorder(space_id)
        closed: list[tuple[str, dict[str, Any]]] = []
        for space_id, rec in list(self._open.items()):
            if now - rec.start_s < self.interval_s:
                continue
            closed.append((space_id, self._close(space_id, rec, now)))
            self._open[space_id] = IntervalRecorder(now, max_keys=self.max_keys)
        return closed

    def end(self, space_id: str) -> dict[str, Any] | None:
        """Close the space's last interval now and stop recording it."""
        rec = self._open.pop(space_id, None)
        if rec is None:
            return None
        return self._close(space_id, rec, self._clock())

    def open_spaces(self) -> list[str]:
        """Spaces with an interval open now."""
        return list(self._open)

    def forget(self, space_id: str) -> None:
        self._open.pop(space_id, None)
        self._writers.pop(space_id, None)
        self._records.pop(space_id, None)
        self._truncated.discard(space_id)

    def _close(self, space_id: str, rec: IntervalRecorder, now: float) -> dict[str, Any]:
        writer = self._writers.get(space_id)
        if writer is None:
            resumed = self._resume(space_id) if self._resume else None
            seq, prev = resumed if resumed else (0, GENESIS)
            writer = self._writers[space_id] = ChainWriter(space_id, self._key, seq=seq, prev=prev)
            if seq:
                self._truncated.add(space_id)
        record = writer.append(rec.close(now, self.seen, self.thresholds))
        kept = self._records.setdefault(space_id, [])
        kept.append(record)
        if len(kept) > self.max_records:
            del kept[0]
            self._truncated.add(space_id)
        self._count += 1
        if self._sink is not None:
            self._sink(space_id, record)
        return record

    # ------------------------------------------------------------ reading

    def document(self, space_id: str) -> dict[str, Any] | None:
        """The whole chain of a space as kept in memory, or None when memory
        does not hold all of it (then read it from the store)."""
        if space_id in self._truncated or space_id not in self._records:
            return None
        return make_document(
            space_id, self.public_key, self._records[space_id], self.interval_s, self.thresholds
        )

    def statistics(self) -> BookStatistics:
        return BookStatistics(len(self._open), self._count, self._refused)


def make_document(
    space_id: str,
    public_key: str,
    records: list[dict[str, Any]],
    interval_s: float,
    thresholds: Thresholds,
) -> dict[str, Any]:
    from townhall.evidence.chain import key_id, record_hash

    return {
        "space_id": space_id,
        "algorithm": ALGORITHM,
        "public_key": public_key,
        "key_id": key_id(public_key),
        "interval_s": interval_s,
        "rule": thresholds.to_json(),
        "records": records,
        "head": record_hash(records[-1]) if records else GENESIS,
    }
