"""The in-memory live window of one program and its shared wake-ups.

:class:`LiveWindow` keeps the parts and segments of the last
``window_segments`` segments as immutable bytes, the list of every segment of
the recording (for the EVENT playlist), and one list of waiters per awaited
position: all blocking playlist reloads (and preload-hinted part requests) that
wait for the same (msn, part) share one entry and ONE timer (for their
timeouts), and are all answered by the one publish of that part. Nothing polls.
It also memoises what request handlers derive from its immutable bytes (the
fast path's pre-rendered responses), evicted together with the bytes.

:class:`ProgressiveHub` fans ADTS frames out to progressive-stream listeners:
queue listeners (the app's path) have a bounded queue sized in milliseconds;
stream sinks (the fast path) get batches written straight to their transport,
bounded by its write buffer. ``publish`` never awaits, and a listener that fell
behind is dropped (and counted) instead of slowing the others.

:class:`Spreader` runs the O(listeners) work of one publish in slices of
``listener_wake_batch`` per event-loop turn, so the mixer clock on the same
loop is never held up for long.

All of it lives on the event loop thread; writes to transports never block.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any, TypeVar, cast

from townhall import metrics
from townhall.media.cmaf import Part, SegmentEnd
from townhall.origin.playlist import PartRef, PlaylistView, SegmentRef, render_ll, render_plain
from townhall.store.recordings import SegmentRecord

COMPLETE = 1 << 30
"""Part index meaning "the whole segment is complete" in a wait position."""

TIMEOUT_SLACK_S = 0.02
"""Waiters of one position whose deadlines fall this close together time out
in the same timer call (fewer timer wake-ups under a steady stream of them)."""

log = logging.getLogger("townhall.media")
T = TypeVar("T")


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


class Spreader:
    """Calls ``fn(item)`` for many items, at most ``batch`` per event-loop turn,
    jobs in the order submitted (so two jobs for the same listeners keep their
    order). The first slice runs at once; the rest via ``loop.call_soon``, so
    timers due meanwhile (the mixer clock) run between slices.

    A callback must not raise; if one does, it is logged and the others still run.
    """

    def __init__(self, batch: int) -> None:
        self.batch = max(1, batch)
        self._jobs: deque[_Job] = deque()
        self._busy = False
        self.turns = 0
        """Event-loop turns used so far (statistics, tests)."""

    def submit(self, fn: Callable[[Any], object], items: Sequence[Any]) -> None:
        if not items:
            return
        self._jobs.append(_Job(fn, items))
        if not self._busy:
            self._run()

    def pending(self) -> int:
        """Calls not made yet."""
        return sum(len(job.items) - job.next for job in self._jobs)

    def _run(self) -> None:
        self._busy = True
        self.turns += 1
        budget = self.batch
        jobs = self._jobs
        try:
            while jobs and budget > 0:
                job = jobs[0]
                fn, items, start = job.fn, job.items, job.next
                end = min(len(items), start + budget)
                job.next = end
                for i in range(start, end):
                    try:
                        fn(items[i])
                    except Exception:
                        log.exception("listener wake-up callback failed")
                budget -= end - start
                if end == len(items):
                    jobs.popleft()
        finally:
            if jobs:
                try:
                    asyncio.get_running_loop().call_soon(self._run)
                except RuntimeError:  # no loop (pure tests): finish now
                    self._run()
            else:
                self._busy = False


class _Job:
    __slots__ = ("fn", "items", "next")

    def __init__(self, fn: Callable[[Any], object], items: Sequence[Any]) -> None:
        self.fn = fn
        self.items = items
        self.next = 0


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
        """RFC 8216bis: an msn more than two past the last segment is a client error."""
        return msn > self.open_msn + 2

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

    def waiting(self) -> int:
        """Requests parked now (cancelled ones may linger until their timeout)."""
        return sum(len(slot.waiters) for slot in self._waiters.values())

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


class StreamSink:
    """A live.aac listener on the fast path: the hub writes HTTP chunks straight
    to ``transport`` and tells ``on_end(dropped)`` when the stream ends for it
    (the hub then no longer touches the transport)."""

    __slots__ = ("active", "on_end", "skip", "transport")

    def __init__(self, transport: asyncio.WriteTransport, on_end: Callable[[bool], object]) -> None:
        self.transport = transport
        self.on_end = on_end
        self.active = True
        self.skip = 0  # frames of the pending batch its burst already carried


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class ProgressiveHub:
    """Fan-out of ADTS frames; a new listener starts with a short burst of
    recent audio so players fill their buffer at once (as Icecast does).

    Queue listeners (``subscribe``) get every frame in a bounded queue. Stream
    sinks (``attach``) get frames in batches of ``batch_ms`` written to their
    transport as HTTP chunks, one write per listener per batch, spread over
    loop turns by the spreader; a sink whose transport holds more than
    ``max_lag_bytes`` unsent is aborted and counted as dropped.
    """

    def __init__(
        self,
        *,
        max_lag_ms: int,
        burst_ms: int,
        frame_ms: float,
        bitrate_bps: int = 64000,
        batch_ms: int = 0,
        spreader: Spreader | None = None,
    ) -> None:
        self.max_frames = max(2, math.ceil(max_lag_ms / frame_ms))
        burst = min(self.max_frames - 1, math.ceil(burst_ms / frame_ms)) if burst_ms else 0
        self._burst = burst
        self._listeners: set[ProgressiveListener] = set()
        self.closed = False
        self.batch_frames = max(1, math.ceil(batch_ms / frame_ms)) if batch_ms else 1
        # A sink's audio comes a batch at a time, so its player's buffer dips by
        # a batch between two writes: its burst gets one batch more, so the
        # buffer never falls below progressive_burst_ms (plus jitter) either.
        extra = self.batch_frames if self.batch_frames > 1 else 0
        self._sink_burst = min(self.max_frames - 1, burst + extra) if burst else 0
        self._recent: deque[bytes] = deque(maxlen=max(1, burst, self._sink_burst))

        # ADTS headers and VBR add to the nominal bitrate: 25 % slack; never
        # less than the burst and two batches, or a listener keeping up would be cut
        def nbytes(frames: int) -> int:
            return math.ceil(frames * frame_ms * bitrate_bps / 8000 * 1.25)

        self.max_lag_bytes = max(
            math.ceil(max_lag_ms * bitrate_bps / 8000 * 1.25),
            nbytes(self._sink_burst + 2 * self.batch_frames),
        )
        self._batch: list[bytes] = []
        self._sinks: dict[StreamSink, None] = {}
        self._fresh: list[StreamSink] = []  # attached since the last batch, with a skip
        self._spreader = spreader or Spreader(256)
        self._bytes = metrics.LISTENER_BYTES.labels(kind="progressive")

    def subscribe(self) -> ProgressiveListener:
        listener = ProgressiveListener(self.max_frames)
        if self._burst:
            for frame in list(self._recent)[-self._burst :]:
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

    def attach(
        self, transport: asyncio.WriteTransport, on_end: Callable[[bool], object]
    ) -> StreamSink | None:
        """Start streaming to ``transport`` (the caller wrote the response head):
        the burst of recent audio now, then every batch. None if the hub closed."""
        if self.closed:
            return None
        sink = StreamSink(transport, on_end)
        if self._sink_burst and self._recent:
            # the most recent audio, up to the last frame published: the pending
            # batch is in it (or older than it), so this sink skips that batch
            burst = b"".join(list(self._recent)[-self._sink_burst :])
            transport.write(http_chunk(burst))
            self._bytes.inc(len(burst))
            sink.skip = len(self._batch)
        self._sinks[sink] = None
        if sink.skip:
            self._fresh.append(sink)
        metrics.PROGRESSIVE_LISTENERS.inc()
        return sink

    def detach(self, sink: StreamSink) -> None:
        """The listener went away: forget it (idempotent; ``on_end`` not called)."""
        if sink.active:
            sink.active = False
            self._sinks.pop(sink, None)
            metrics.PROGRESSIVE_LISTENERS.dec()

    def publish(self, frame: bytes) -> None:
        """Queue one frame for every listener; drop the ones that fell behind."""
        if self._sink_burst:
            self._recent.append(frame)
        dropped = [listener for listener in self._listeners if not listener.offer(frame)]
        for listener in dropped:
            listener.close(dropped=True)
            self.unsubscribe(listener)
            metrics.PROGRESSIVE_DROPPED.inc()
        self._batch.append(frame)
        if len(self._batch) >= self.batch_frames:
            self._flush()

    def _flush(self) -> None:
        batch = self._batch
        data = b"".join(batch)
        fresh = self._fresh
        if fresh:
            # new sinks get the part of this batch their burst did not carry
            pairs = []
            for sink in fresh:
                rest = batch[sink.skip :]
                sink.skip = 0
                if rest:
                    pairs.append((http_chunk(b"".join(rest)), sink))
            self._fresh = []
            self._spreader.submit(self._send_pair, pairs)
            skipped = set(fresh)
            targets = [sink for sink in self._sinks if sink not in skipped]
        else:
            targets = list(self._sinks)
        self._batch = []
        if targets and data:
            self._spreader.submit(partial(self._send, http_chunk(data)), targets)

    def _send_pair(self, pair: tuple[bytes, StreamSink]) -> None:
        self._send(*pair)

    def _send(self, chunk: bytes, sink: StreamSink) -> None:
        if not sink.active:
            return
        transport = sink.transport
        if transport.is_closing():
            self.detach(sink)
        elif transport.get_write_buffer_size() > self.max_lag_bytes:
            self.detach(sink)
            metrics.PROGRESSIVE_DROPPED.inc()
            transport.abort()  # discard what it never read; frees the buffer now
            sink.on_end(True)
        else:
            transport.write(chunk)
            self._bytes.inc(len(chunk))

    def _end(self, sink: StreamSink) -> None:
        if sink.active:
            self.detach(sink)
            if not sink.transport.is_closing():
                sink.transport.write(LAST_CHUNK)
            sink.on_end(False)

    def close(self) -> None:
        """End every stream (the space ended or the process stops)."""
        self.closed = True
        for listener in list(self._listeners):
            listener.close()
            self.unsubscribe(listener)
        self._flush()  # what is left, then the end of each stream (same order)
        self._spreader.submit(self._end, list(self._sinks))

    def __len__(self) -> int:
        return len(self._listeners) + len(self._sinks)
