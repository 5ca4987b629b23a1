"""The in-memory live window of one program and its shared wake-ups.

:class:`LiveWindow` keeps the parts and segments of the last
``window_segments`` segments as immutable bytes, the list of every segment of
the recording (for the EVENT playlist), and one :class:`asyncio.Event` per
awaited position: all blocking playlist reloads (and preload-hinted part
requests) that wait for the same (msn, part) share one event, set once when
that part is published. Nothing polls.

:class:`ProgressiveHub` fans ADTS frames out to progressive-stream listeners:
each has a bounded queue sized in milliseconds; ``publish`` never awaits, and a
listener whose queue is full is dropped (and counted) instead of slowing the
others.

Both live on the event loop thread; neither does I/O.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import Sequence

from townhall.media.cmaf import Part, SegmentEnd
from townhall.media.playlist import PartRef, PlaylistView, SegmentRef, render_ll, render_plain
from townhall.server import metrics
from townhall.store.recordings import SegmentRecord

COMPLETE = 1 << 30
"""Part index meaning "the whole segment is complete" in a wait position."""


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


class LiveWindow:
    """Parts and segments of one epoch of a live program, plus its history.

    The program calls ``publish_part`` / ``end_segment`` / ``close``; request
    handlers call ``wait_for``, ``part``, ``segment``, ``playlist``.
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
    ) -> None:
        self.epoch = epoch
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
        self._waiters: dict[tuple[int, int], asyncio.Event] = {}
        self._cache: dict[str, tuple[int, str]] = {}

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
        for event in self._waiters.values():
            event.set()
        self._waiters.clear()

    def _is_first_of_epoch(self, msn: int) -> bool:
        return not any(r.epoch == self.epoch and r.msn < msn for r in reversed(self._history))

    def _advance(self, position: tuple[int, int]) -> None:
        self.position = position
        self.version += 1
        ready = [key for key in self._waiters if key <= position]
        for key in ready:
            self._waiters.pop(key).set()

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
        """RFC 8216bis: an msn more than two past the last segment is a client error."""
        return msn > self.open_msn + 2

    async def wait_for(self, position: tuple[int, int], timeout_s: float) -> bool:
        """Wait until ``position`` is published (True) or ``timeout_s`` passes
        (False). Closed windows answer at once (True). Shared per position."""
        if self.closed or self.has(position):
            return True
        event = self._waiters.get(position)
        if event is None:
            event = self._waiters[position] = asyncio.Event()
        metrics.HLS_BLOCKING_WAITERS.inc()
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            # A timed-out position's event stays until the position arrives or
            # the window closes; far-future positions are refused before this,
            # so the map holds a few entries at most.
            metrics.HLS_BLOCKING_WAITERS.dec()

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
        records = self._history
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
            hint = part_uri(self.open_msn, len(self._open_parts))
        return PlaylistView(
            segments=tuple(segments),
            open_segment=open_segment,
            preload_hint_uri=hint,
            part_target_s=self.part_target_s,
            segment_target_s=self.segment_target_s,
            ended=self.ended,
            first_msn=records[0].msn if records else self.open_msn,
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


class ProgressiveListener:
    """One progressive-stream listener's bounded queue of ADTS frames."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self._frames: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.dropped = False
        self.gone = asyncio.Event()  # set when dropped

    def offer(self, frame: bytes) -> bool:
        if self.closed:
            return True
        if len(self._frames) >= self.max_frames:
            return False
        self._frames.append(frame)
        self._ready.set()
        return True

    def close(self, *, dropped: bool = False) -> None:
        self.closed = True
        self.dropped = dropped
        self._ready.set()
        if dropped:
            self.gone.set()

    async def next_chunk(self) -> bytes | None:
        """Everything queued, joined; None once closed and drained."""
        while not self._frames:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.dropped:
            return None
        data = b"".join(self._frames)
        self._frames.clear()
        return data

    def __len__(self) -> int:
        return len(self._frames)


class ProgressiveHub:
    """Fan-out of ADTS frames; a new listener starts with a short burst of
    recent audio so players fill their buffer at once (as Icecast does)."""

    def __init__(self, *, max_lag_ms: int, burst_ms: int, frame_ms: float) -> None:
        self.max_frames = max(2, math.ceil(max_lag_ms / frame_ms))
        burst = min(self.max_frames - 1, math.ceil(burst_ms / frame_ms)) if burst_ms else 0
        self._recent: deque[bytes] = deque(maxlen=max(1, burst))
        self._burst = burst
        self._listeners: set[ProgressiveListener] = set()
        self.closed = False

    def subscribe(self) -> ProgressiveListener:
        listener = ProgressiveListener(self.max_frames)
        if self._burst:
            for frame in self._recent:
                listener.offer(frame)
        if self.closed:
            listener.close()
        else:
            self._listeners.add(listener)
            metrics.PROGRESSIVE_LISTENERS.inc()
        return listener

    def unsubscribe(self, listener: ProgressiveListener) -> None:
        if listener in self._listeners:
            self._listeners.discard(listener)
            metrics.PROGRESSIVE_LISTENERS.dec()

    def publish(self, frame: bytes) -> None:
        """Queue one frame for every listener; drop the ones that fell behind."""
        if self._burst:
            self._recent.append(frame)
        dropped = [listener for listener in self._listeners if not listener.offer(frame)]
        for listener in dropped:
            listener.close(dropped=True)
            self.unsubscribe(listener)
            metrics.PROGRESSIVE_DROPPED.inc()

    def close(self) -> None:
        """End every stream (the space ended or the process stops)."""
        self.closed = True
        for listener in list(self._listeners):
            listener.close()
            self.unsubscribe(listener)

    def __len__(self) -> int:
        return len(self._listeners)
