"""A node's copy of a live room it does not run, fed from the segment bus.

:class:`FollowerState` (pure, no I/O) turns bus entries into the same calls on
a :class:`~townhall.origin.window.LiveWindow` the owner's program made, so the
window answers listeners with the same bytes (blocking reloads and preload
hints included: they are the window's own). It checks the entries' sequence
numbers: a gap (the follower fell behind the bus's bounded length, or Redis
lost its data) raises :class:`Gap`, and the caller restores from a
:class:`Snapshot`; the state then continues where it was if the snapshot
still holds the next entry, or else starts a new window at the next segment
boundary (a resync, counted). A part or segment end it already has is
skipped, so nothing is published twice or out of order.

:class:`Follower` is the task that keeps one such state fed from a
:class:`BusReader` (the Redis adapter in ``store/bus_redis.py``, or a fake).
Finished segments go to ``on_segment`` (the node's own durable recording).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from townhall import metrics
from townhall.media.cmaf import Part, SegmentEnd
from townhall.origin.bus import Closed, Entry, EpochStart, PartPublished, SegmentEnded, Snapshot
from townhall.origin.fanout import ProgressiveHub, Spreader
from townhall.origin.window import COMPLETE, LiveWindow
from townhall.store.recordings import SegmentRecord

log = logging.getLogger("townhall.media")


class ListenerSource(Protocol):
    """What answers a live space's listeners on a node: the Program of a room
    running here, or the copy of a room this node follows."""

    @property
    def window(self) -> LiveWindow | None: ...
    @property
    def progressive(self) -> ProgressiveHub: ...
    @property
    def ended(self) -> bool: ...


class Gap(Exception):
    """An entry is missing before this one: restore from a snapshot."""


@dataclass(frozen=True, slots=True)
class FollowerStatistics:
    applied: int
    skipped: int
    resyncs: int
    gaps: int
    mismatches: int
    last_seq: int
    synced: bool
    closed: bool


@dataclass
class _Counts:
    applied: int = 0
    skipped: int = 0
    resyncs: int = 0
    gaps: int = 0
    mismatches: int = 0


class FollowerState:
    """The follower's window(s) of one room, fed entry by entry.

    ``on_epoch(start)`` is called when a window for an epoch begins (before
    its first part), ``on_segment(record, data)`` for each finished segment,
    ``on_close(ended)`` once the owner closed the program.
    """

    def __init__(
        self,
        *,
        window_segments: int,
        spreader: Spreader | None = None,
        on_epoch: Callable[[EpochStart], object] = lambda start: None,
        on_segment: Callable[[SegmentRecord, bytes], object] = lambda record, data: None,
        on_close: Callable[[bool], object] = lambda ended: None,
    ) -> None:
        self.window_segments = window_segments
        self.spreader = spreader or Spreader(256)
        self.window: LiveWindow | None = None
        self.last_seq = 0
        self.closed = False
        self._meta: EpochStart | None = None
        self._records: dict[int, SegmentRecord] = {}
        self._open: list[Part] = []  # the open segment's parts (seal() ends it with them)
        self._on_epoch = on_epoch
        self._on_segment = on_segment
        self._on_close = on_close
        self._counts = _Counts()

    def statistics(self) -> FollowerStatistics:
        c = self._counts
        return FollowerStatistics(
            applied=c.applied,
            skipped=c.skipped,
            resyncs=c.resyncs,
            gaps=c.gaps,
            mismatches=c.mismatches,
            last_seq=self.last_seq,
            synced=self.window is not None,
            closed=self.closed,
        )

    def record(self, msn: int) -> SegmentRecord | None:
        """The owner's record of segment ``msn``, if the bus carried it."""
        return self._records.get(msn)

    # -- entries -------------------------------------------------------------------

    def apply(self, entry: Entry) -> None:
        """Apply the next entry; Gap if one is missing before it."""
        if self.last_seq and entry.seq != self.last_seq + 1:
            self._counts.gaps += 1
            metrics.BUS_GAPS.inc()
            raise Gap(f"entry {entry.seq} after {self.last_seq}")
        self.last_seq = entry.seq
        self._apply(entry)

    def _apply(self, entry: Entry) -> None:
        message = entry.message
        window = self.window
        if isinstance(message, PartPublished):
            part = message.part
            if window is None or window.closed or (part.msn, part.index) <= window.position:
                self._counts.skipped += 1
                return
            if part.msn != window.open_msn or part.index != window_open_parts(window):
                self._counts.gaps += 1
                metrics.BUS_GAPS.inc()
                raise Gap(f"part {part.msn}.{part.index} does not follow {window.position}")
            window.publish_part(part, message.program_date_time_s)
            self._open.append(part)
        elif isinstance(message, SegmentEnded):
            end = message.end
            self._records[message.record.msn] = message.record
            if window is None or window.closed:
                if self._meta is not None and not self.closed:
                    self._start_window(self._meta, end.msn + 1)
                    self._counts.resyncs += 1
                    metrics.BUS_RESYNCS.inc()
                else:
                    self._counts.skipped += 1
                return
            if end.msn < window.open_msn:
                self._counts.skipped += 1
                return
            if end.msn != window.open_msn or end.part_count != window_open_parts(window):
                self._counts.gaps += 1
                metrics.BUS_GAPS.inc()
                raise Gap(f"segment end {end.msn} does not match the open segment")
            record, data = window.end_segment(end)
            self._open = []
            if record != message.record:
                self._counts.mismatches += 1
                log.warning("follower made record %r, the owner %r", record, message.record)
            self._on_segment(record, data)
        elif isinstance(message, EpochStart):
            self._meta = message
            self._start_window(message, message.first_msn)
        elif isinstance(message, Closed):
            # not ended: the owner stopped (shutdown, lost lease); another resumes it
            self.closed = message.ended
            if window is not None and not window.closed:
                window.close(ended=message.ended)
            self._on_close(message.ended)
        self._counts.applied += 1

    def _start_window(self, meta: EpochStart, first_msn: int) -> None:
        old = self.window
        if old is not None and not old.closed:
            old.close(ended=False)
        history = [r for msn, r in sorted(self._records.items()) if msn < first_msn]
        self._open = []
        self.window = LiveWindow(
            epoch=meta.epoch,
            first_msn=first_msn,
            history=history,
            sample_rate_hz=meta.sample_rate_hz,
            part_duration_samples=meta.part_duration_samples,
            segment_parts=meta.segment_parts,
            window_segments=self.window_segments,
            init_segment=meta.init_segment,
            spreader=self.spreader,
        )
        self._on_epoch(meta)

    def seal(self) -> SegmentEnded | None:
        """The owner is gone and this node takes the room over: end the open
        segment with the parts the bus carried (a shorter segment, recorded
        through ``on_segment`` like any other) and close the window. The new
        owner publishes the returned end before its new epoch, which starts at
        the next msn: every part URI listeners (and caches) saw keeps its
        bytes, and the recording loses only what never reached the bus.
        None when no segment was open."""
        window = self.window
        if window is None or window.closed:
            return None
        sealed = None
        if self._open and window_open_parts(window) == len(self._open):
            first = self._open[0]
            end = SegmentEnd(
                first.msn,
                first.start_samples,
                sum(p.duration_samples for p in self._open),
                len(self._open),
            )
            record, data = window.end_segment(end)
            self._records[record.msn] = record
            self._on_segment(record, data)
            sealed = SegmentEnded(end, record)
        self._open = []
        window.close(ended=False)
        return sealed

    # -- snapshots -------------------------------------------------------------------

    def restore(self, snapshot: Snapshot) -> bool:
        """Catch up from ``snapshot`` (after a Gap, at the start, or when Redis
        came back). True when a window is running afterwards."""
        for record in snapshot.records:
            self._records.setdefault(record.msn, record)
        if snapshot.meta is not None:
            self._meta = snapshot.meta
        self.last_seq = snapshot.last_seq
        entries = list(snapshot.entries)
        meta = self._meta
        window = self.window
        if meta is None:
            return window is not None
        start = self._continuation(entries, window, meta)
        if start is None:
            start = self._boundary(entries, window, meta)
            if start is None:
                return self.window is not None
        for i in range(start, len(entries)):
            try:
                self._apply(entries[i])
            except Gap:  # a hole inside the retained entries: the next boundary
                return self.restore(Snapshot(None, (), tuple(entries[i:]), snapshot.last_seq))
        return self.window is not None

    def _continuation(
        self, entries: Sequence[Entry], window: LiveWindow | None, meta: EpochStart
    ) -> int | None:
        """Where our window goes on in ``entries`` without losing anything."""
        if window is None or window.closed or window.epoch != meta.epoch:
            return None
        msn, index = _next_position(window)
        for i, entry in enumerate(entries):
            m = entry.message
            if isinstance(m, PartPublished):
                if (m.part.msn, m.part.index) <= window.position:
                    continue
                return i if (m.part.msn, m.part.index) == (msn, index) else None
            if isinstance(m, SegmentEnded):
                if (m.end.msn, COMPLETE) <= window.position:
                    continue
                return i if m.end.msn == msn and m.end.part_count == index else None
            if isinstance(m, EpochStart):
                if m.epoch == window.epoch:
                    continue
                return None
            return i  # Closed
        return len(entries)  # nothing newer than what we have

    def _boundary(
        self, entries: Sequence[Entry], window: LiveWindow | None, meta: EpochStart
    ) -> int | None:
        """Start a new window at the newest epoch start, else at the first
        segment boundary past what we have; the index of the entry after it."""
        for i in range(len(entries) - 1, -1, -1):
            m = entries[i].message
            if isinstance(m, EpochStart) and m.epoch == meta.epoch:
                if window is None or window.epoch != m.epoch:
                    return i  # applying it starts the window
                break
        floor = window.open_msn if window is not None and window.epoch == meta.epoch else 0
        for i, entry in enumerate(entries):
            m = entry.message
            if isinstance(m, SegmentEnded) and m.end.msn >= floor:
                self._records[m.record.msn] = m.record
                self._start_window(meta, m.end.msn + 1)
                if window is not None:
                    self._counts.resyncs += 1
                    metrics.BUS_RESYNCS.inc()
                return i + 1
        return None


def window_open_parts(window: LiveWindow) -> int:
    """Parts of the open segment published so far."""
    msn, index = window.position
    if msn == window.open_msn:
        return index + 1
    return 0


def _next_position(window: LiveWindow) -> tuple[int, int]:
    return (window.open_msn, window_open_parts(window))


class BusReader(Protocol):
    """The read side of the bus for one room (``store/bus_redis.py``)."""

    async def snapshot(self) -> Snapshot: ...
    async def read(self, block_ms: int) -> list[Entry]: ...


@dataclass
class FollowerStatus:
    """Where people look: is this node's copy of the room current?"""

    behind_since_s: float | None = None
    last_error: str = ""
    reads: int = field(default=0)
    # when (time.monotonic) the newest part arrived: a copy in step gets one
    # every part length; no clock of the owner's is involved
    last_part_at_s: float | None = None

    def lag_s(self, now_s: float) -> float | None:
        """How long this copy has not advanced: since the newest part arrived
        (``now_s`` from time.monotonic; None before the first)."""
        if self.last_part_at_s is None:
            return None
        return max(0.0, now_s - self.last_part_at_s)


class Follower:
    """Keeps a FollowerState fed from ``reader`` until the room closes or
    ``stop`` is called. Redis errors are retried after ``retry_s`` (the
    window stays as it was; ``status.behind_since_s`` says since when)."""

    def __init__(
        self,
        space_id: str,
        state: FollowerState,
        reader: BusReader,
        *,
        block_ms: int = 1000,
        retry_s: float = 0.5,
    ) -> None:
        self.space_id = space_id
        self.state = state
        self.reader = reader
        self.block_ms = block_ms
        self.retry_s = retry_s
        self.status = FollowerStatus()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.synced = asyncio.Event()

    @property
    def window(self) -> LiveWindow | None:
        return self.state.window

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"follower-{self.space_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping = True  # a client library may swallow the cancel: the loop checks this
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _arrived(self, entry: Entry) -> None:
        message = entry.message
        if isinstance(message, PartPublished) and self.state.window is not None:
            part = message.part
            end_s = message.program_date_time_s + part.duration_samples / max(
                1, self.state.window.sample_rate_hz
            )
            self.status.last_part_at_s = time.monotonic()
            metrics.BUS_PART_LAG.observe(max(0.0, time.time() - end_s))

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self) -> None:
        need_snapshot = True
        while not self.state.closed and not self._stopping:
            try:
                if need_snapshot:
                    if self.state.restore(await self.reader.snapshot()):
                        self.synced.set()
                    need_snapshot = False
                entries = await self.reader.read(self.block_ms)
                self.status.reads += 1
                for entry in entries:
                    self.state.apply(entry)
                    self._arrived(entry)
                if self.state.window is not None:
                    if not self.synced.is_set() and self.status.last_part_at_s is None:
                        self.status.last_part_at_s = time.monotonic()  # in step as of now
                    self.synced.set()
                self.status.behind_since_s = None
            except Gap as exc:
                log.info("follower %s resyncs: %s", self.space_id, exc)
                need_snapshot = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away or a bad entry: retry, say so
                if self._stopping:
                    return
                metrics.BUS_FAILURES.labels(op="follow").inc()
                if self.status.behind_since_s is None:
                    self.status.behind_since_s = time.time()
                    log.warning("follower %s is behind: %s", self.space_id, exc)
                self.status.last_error = str(exc)
                need_snapshot = True
                await asyncio.sleep(self.retry_s)
