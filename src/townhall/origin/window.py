"""The in-memory live window of one program and its parked requests.

:class:`LiveWindow` keeps the parts and segments of the last
``window_segments`` segments as immutable bytes, the list of every segment of
the recording (for the EVENT playlist), and one list of waiters per awaited
position: all blocking playlist reloads (and preload-hinted part requests) that
wait for the same (msn, part) share one entry and ONE timer (for their
timeouts), and are all answered by the one publish of that part. Nothing polls.
It also memoises what request handlers derive from its immutable bytes (the
fast path's pre-rendered responses), evicted together with the bytes.

Wake-ups go through a :class:`~townhall.origin.fanout.Spreader` (sliced per
event-loop turn). ``statistics()`` tells what is parked.

All of it lives on the event loop thread; writes to transports never block.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

from townhall import metrics
from townhall.media.cmaf import Part, SegmentEnd
from townhall.origin.fanout import Spreader
from townhall.origin.playlist import PartRef, PlaylistView, SegmentRef, render_ll, render_plain
from townhall.store.recordings import SegmentRecord

COMPLETE = 1 << 30
"""Part index meaning "the whole segment is complete" in a wait position."""

TIMEOUT_SLACK_S = 0.02
"""Waiters of one position whose deadlines fall this close together time out
in the same timer call (fewer timer wake-ups under a steady stream of them)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WindowStatistics:
    waiting: int
    """Requests parked now (cancelled ones may linger until their timeout)."""
    positions: int
    """Distinct positions awaited (one timer each)."""
    version: int
    """Window version (every publish and the close add one)."""


def init_uri(epoch: int) -> str:
    return f"init/{epoch}.mp4"


def segment_uri(msn: int) -> str:
    return f"seg/{msn}.m4s"


def part_uri(msn: int, index: int) -> str:
    return f"part/{msn}.{index}.m4s"


def records_view(
    records: Sequence[SegmentRecord],
    *,
    sample_rate_hz: int,
    part_target_s: float,
    segment_target_s: float,
    ended: bool,
) -> PlaylistView:
    """A playlist view of recorded segments only (no parts): replay, or a live
    space whose program is not running on this node."""
    return PlaylistView(
        segments=tuple(_segment_ref(r, sample_rate_hz, ()) for r in records),
        open_segment=None,
        preload_hint_uri=None,
        part_target_s=part_target_s,
        segment_target_s=segment_target_s,
        ended=ended,
        first_msn=records[0].msn if records else 0,
    )


def _segment_ref(
    record: SegmentRecord, sample_rate_hz: int, parts: tuple[PartRef, ...]
) -> SegmentRef:
    return SegmentRef(
        msn=record.msn,
        uri=segment_uri(record.msn),
        duration_s=record.duration_samples / sample_rate_hz,
        map_uri=init_uri(record.epoch),
        discontinuity=record.discontinuity,
        program_date_time_s=record.program_date_time_s,
        parts=parts,
    )


class Waiter:
    """One parked request: ``callback(True)`` once its position is published
    (or the window closes), ``callback(False)`` after its timeout. Called at
    most once; ``cancel`` (the client went away) makes sure it is not called."""

    __slots__ = ("active", "callback", "deadline_s")

    def __init__(self, callback: Callable[[bool], object], deadline_s: float) -> None:
        self.callback = callback
        self.deadline_s = deadline_s
        self.active = True
        metrics.HLS_BLOCKING_WAITERS.inc()

    def cancel(self) -> None:
        if self.active:
            self.active = False
            metrics.HLS_BLOCKING_WAITERS.dec()

    def fire(self, published: bool) -> None:
        if self.active:
            self.active = False
            metrics.HLS_BLOCKING_WAITERS.dec()
            self.callback(published)


def _published(waiter: Waiter) -> None:
    waiter.fire(True)


def _timed_out(waiter: Waiter) -> None:
    waiter.fire(False)


class _Position:
    """The waiters of one awaited position, oldest first, and its one timer."""

    __slots__ = ("ordered", "timer", "waiters")

    def __init__(self) -> None:
        self.waiters: deque[Waiter] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.ordered = True  # deadlines ascending (always, with one timeout setting)


_MISSING = object()


class LiveWindow:
    """Parts and segments of one epoch of a live program, plus its history.

    The program calls ``publish_part`` / ``end_segment`` / ``close``; request
    handlers call ``wait_for`` (or ``park``), ``part``, ``segment``,
    ``playlist``, ``memo``.
    """

    def __init__(
        self,
        *,
        epoch: int,
        first_msn: int,
        history: Sequence[SegmentRecord],
        sample_rate_hz: int,
        part_duration_samples: int,
        segment_parts: int,
        window_segments: int,
        init_segment: bytes | None = None,
        spreader: Spreader | None = None,
        playlist_segments: int = 0,
    ) -> None:
        self.epoch = epoch
        # live playlists list only the last ``playlist_segments`` complete
        # segments (0: all); the VOD after the end lists everything (issue 14)
        self.playlist_segments = playlist_segments
        self.sample_rate_hz = sample_rate_hz
        self.part_duration_samples = part_duration_samples
        self.segment_parts = segment_parts
        self.window_segments = window_segments
        self.init_segment = init_segment
        self.part_target_s = part_duration_samples / sample_rate_hz
        self.segment_target_s = self.part_target_s * segment_parts
        self._history: list[SegmentRecord] = list(history)
        self._segment_bytes: OrderedDict[int, bytes] = OrderedDict()
        self._parts: OrderedDict[int, list[Part]] = OrderedDict()
        self.open_msn = first_msn
        self._open_pdt_s: float | None = None
        self._open_parts: list[Part] = []
        self.position: tuple[int, int] = (first_msn - 1, COMPLETE)
        self.version = 0
        self.closed = False
        self.ended = False
        self._waiters: dict[tuple[int, int], _Position] = {}
        self._cache: dict[str, tuple[int, str]] = {}
        self._spreader = spreader or Spreader(256)
        self._loop: asyncio.AbstractEventLoop | None = None
        # memoised derivatives of immutable bytes, by msn (None: lives with the window)
        self._memo: dict[int | None, dict[Hashable, object]] = {}
        self._memo_versioned: dict[Hashable, tuple[int, object]] = {}

    # -- program side ----------------------------------------------------------

    def publish_part(self, part: Part, program_date_time_s: float) -> None:
        """Add the next part of the open segment and wake whoever awaited it."""
        if part.msn != self.open_msn or part.index != len(self._open_parts):
            raise ValueError(
                f"part {part.msn}.{part.index} out of order (open {self.open_msn}.{len(self._open_parts)})"
            )
        if part.index == 0:
            self._open_pdt_s = program_date_time_s
            self._parts[part.msn] = self._open_parts
        self._open_parts.append(part)
        self._advance((part.msn, part.index))

    def end_segment(self, end: SegmentEnd) -> tuple[SegmentRecord, bytes]:
        """Close the open segment: returns its record and bytes for the recorder."""
        if end.msn != self.open_msn or end.part_count != len(self._open_parts):
            raise ValueError(f"segment end {end.msn} does not match the open segment")
        data = b"".join(p.data for p in self._open_parts)
        record = SegmentRecord(
            msn=end.msn,
            epoch=self.epoch,
            start_samples=end.start_samples,
            duration_samples=end.duration_samples,
            program_date_time_s=self._open_pdt_s or 0.0,
            discontinuity=self.epoch > 0 and self._is_first_of_epoch(end.msn),
            part_count=end.part_count,
        )
        self._history.append(record)
        self._segment_bytes[end.msn] = data
        while len(self._segment_bytes) > self.window_segments:
            old, _ = self._segment_bytes.popitem(last=False)
            self._parts.pop(old, None)
            self._memo.pop(old, None)
        self.open_msn = end.msn + 1
        self._open_parts = []
        self._open_pdt_s = None
        self._advance((end.msn, COMPLETE))
        return record, data

    def close(self, *, ended: bool) -> None:
        """No more parts: release every waiter (they answer with what exists)."""
        self.closed = True
        self.ended = ended
        self.version += 1
        self._cache.clear()
        self._memo_versioned.clear()
        released: list[Waiter] = []
        for slot in self._waiters.values():
            if slot.timer is not None:
                slot.timer.cancel()
            released.extend(slot.waiters)
        self._waiters.clear()
        self._spreader.submit(_published, released)

    def _is_first_of_epoch(self, msn: int) -> bool:
        return not any(r.epoch == self.epoch and r.msn < msn for r in reversed(self._history))

    def _advance(self, position: tuple[int, int]) -> None:
        self.position = position
        self.version += 1
        ready = [key for key in self._waiters if key <= position]
        if not ready:
            return
        woken: list[Waiter] = []
        for key in ready:
            slot = self._waiters.pop(key)
            if slot.timer is not None:
                slot.timer.cancel()
            woken.extend(slot.waiters)
        # answered in slices of listener_wake_batch per loop turn (see Spreader)
        self._spreader.submit(_published, woken)

    # -- request side -----------------------------------------------------------

    def normalize(self, msn: int, part: int | None) -> tuple[int, int]:
        """The wait position of ``_HLS_msn`` / ``_HLS_part`` (a part index past the
        segment's last part means part 0 of the next segment, per the spec)."""
        if part is None:
            return (msn, COMPLETE)
        if part >= self.segment_parts:
            return (msn + 1, 0)
        return (msn, part)

    def has(self, position: tuple[int, int]) -> bool:
        return position <= self.position

    def is_far_future(self, msn: int) -> bool:
        """RFC 8216bis 6.2.5.2: an msn more than two past the last (complete)
        Media Segment of the playlist can never be satisfied in time: 400."""
        return msn > (self.open_msn - 1) + 2

    @property
    def blocking_hold_s(self) -> float:
        """How long a blocking reload may be held: three target durations
        (RFC 8216bis 6.2.5.2), the playlist's integer TARGETDURATION."""
        return 3.0 * max(1, int(self.segment_target_s + 0.5))

    def ready(self, position: tuple[int, int]) -> bool:
        """True when a request waiting for ``position`` can be answered now."""
        return self.closed or position <= self.position

    def park(
        self, position: tuple[int, int], callback: Callable[[bool], object], timeout_s: float
    ) -> Waiter:
        """Register ``callback`` for ``position`` (the caller checked ``ready``
        first). It is called with True when the position is published or the
        window closes, with False after ``timeout_s``; never both, never after
        ``Waiter.cancel``. All waiters of a position share one timer. Must be
        called on the event loop thread."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter = Waiter(callback, loop.time() + timeout_s)
        slot = self._waiters.get(position)
        if slot is None:
            slot = self._waiters[position] = _Position()
        elif slot.waiters and slot.waiters[-1].deadline_s > waiter.deadline_s:
            slot.ordered = False
        slot.waiters.append(waiter)
        if slot.timer is None:
            slot.timer = loop.call_at(waiter.deadline_s, self._expire, position)
        elif not slot.ordered and slot.timer.when() > waiter.deadline_s:
            slot.timer.cancel()
            slot.timer = loop.call_at(waiter.deadline_s, self._expire, position)
        return waiter

    def _expire(self, position: tuple[int, int]) -> None:
        slot = self._waiters.get(position)
        if slot is None:
            return
        assert self._loop is not None
        slot.timer = None
        due_s = self._loop.time() + TIMEOUT_SLACK_S
        expired: list[Waiter] = []
        waiters = slot.waiters
        if slot.ordered:
            while waiters and (waiters[0].deadline_s <= due_s or not waiters[0].active):
                waiter = waiters.popleft()
                if waiter.active:
                    expired.append(waiter)
        else:
            kept: deque[Waiter] = deque()
            for waiter in waiters:
                if waiter.active and waiter.deadline_s <= due_s:
                    expired.append(waiter)
                elif waiter.active:
                    kept.append(waiter)
            slot.waiters = waiters = kept
        if waiters:
            next_s = (
                min(w.deadline_s for w in waiters) if not slot.ordered else waiters[0].deadline_s
            )
            slot.timer = self._loop.call_at(next_s, self._expire, position)
        else:
            del self._waiters[position]
        self._spreader.submit(_timed_out, expired)

    async def wait_for(self, position: tuple[int, int], timeout_s: float) -> bool:
        """Wait until ``position`` is published (True) or ``timeout_s`` passes
        (False). Closed windows answer at once (True). Shared per position."""
        if self.ready(position):
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def settle(published: bool) -> None:
            if not future.done():
                future.set_result(published)

        waiter = self.park(position, settle, timeout_s)
        try:
            return await future
        finally:
            waiter.cancel()  # cancelled request: never called back

    def statistics(self) -> WindowStatistics:
        return WindowStatistics(
            waiting=sum(len(slot.waiters) for slot in self._waiters.values()),
            positions=len(self._waiters),
            version=self.version,
        )

    def memo(self, key: Hashable, make: Callable[[], T], *, msn: int | None = None) -> T:
        """``make()`` once per ``key``, kept while segment ``msn`` is in the window
        (``msn=None``: as long as the window). For derivatives of immutable bytes."""
        bucket = self._memo.get(msn)
        if bucket is None:
            bucket = self._memo[msn] = {}
        hit = bucket.get(key, _MISSING)
        if hit is _MISSING:
            hit = bucket[key] = make()
        return cast(T, hit)

    def memo_versioned(self, key: Hashable, make: Callable[[], T]) -> T:
        """``make()`` once per ``key`` and window version (playlists)."""
        hit = self._memo_versioned.get(key)
        if hit is not None and hit[0] == self.version:
            return cast(T, hit[1])
        value = make()
        self._memo_versioned[key] = (self.version, value)
        return value

    def part(self, msn: int, index: int) -> bytes | None:
        parts = self._parts.get(msn)
        if parts is None or index >= len(parts):
            return None
        return parts[index].data

    def segment(self, msn: int) -> bytes | None:
        return self._segment_bytes.get(msn)

    @property
    def history(self) -> Sequence[SegmentRecord]:
        return self._history

    def view(self) -> PlaylistView:
        sr = self.sample_rate_hz
        records: Sequence[SegmentRecord] = self._history
        sliding = self.playlist_segments > 0 and not self.ended
        discontinuity_sequence = 0
        if sliding and len(records) > self.playlist_segments:
            cut = len(records) - self.playlist_segments
            # discontinuity tags before the first listed segment (the very
            # first segment never carries one)
            discontinuity_sequence = sum(1 for r in records[1 : cut + 1] if r.discontinuity)
            records = records[cut:]
        segments = []
        # parts near the live edge only: the last two complete segments
        with_parts_from = max(0, len(records) - 2)
        for i, record in enumerate(records):
            parts: tuple[PartRef, ...] = ()
            if i >= with_parts_from and record.msn in self._parts:
                parts = tuple(
                    PartRef(part_uri(p.msn, p.index), p.duration_samples / sr)
                    for p in self._parts[record.msn]
                )
            segments.append(_segment_ref(record, sr, parts))
        open_segment = None
        if self._open_parts:
            open_segment = SegmentRef(
                msn=self.open_msn,
                uri="",
                duration_s=0.0,
                map_uri=init_uri(self.epoch),
                discontinuity=self.epoch > 0 and self._is_first_of_epoch(self.open_msn),
                program_date_time_s=self._open_pdt_s,
                parts=tuple(
                    PartRef(part_uri(p.msn, p.index), p.duration_samples / sr)
                    for p in self._open_parts
                ),
            )
        hint = None
        if not self.closed:
            # the hinted part must come: after a segment's last part it is the
            # next segment's first part, never a part past the end (issue 12)
            if len(self._open_parts) >= self.segment_parts:
                hint = part_uri(self.open_msn + 1, 0)
            else:
                hint = part_uri(self.open_msn, len(self._open_parts))
        return PlaylistView(
            segments=tuple(segments),
            open_segment=open_segment,
            preload_hint_uri=hint,
            part_target_s=self.part_target_s,
            segment_target_s=self.segment_target_s,
            ended=self.ended,
            first_msn=records[0].msn if records else self.open_msn,
            discontinuity_sequence=discontinuity_sequence,
            sliding=sliding,
        )

    def playlist(self, kind: str) -> str:
        """Rendered playlist ``kind`` ("ll", "ll-skip" or "plain"), rendered at
        most once per window version."""
        cached = self._cache.get(kind)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        view = self.view()
        text = render_plain(view) if kind == "plain" else render_ll(view, skip=kind == "ll-skip")
        self._cache[kind] = (self.version, text)
        return text
