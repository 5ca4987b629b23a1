"""Fan-out on the event loop: the wake-up spreader and the progressive hub.

:class:`Spreader` runs the O(listeners) work of one publish in slices of
``listener_wake_batch`` per event-loop turn, so the mixer clock on the same
loop is never held up for long. A callback that raises is logged with its
traceback and counted (``townhall_listener_wake_failures_total``); the others
still run.

:class:`ProgressiveHub` fans ADTS frames out to progressive-stream listeners:
queue listeners (the app's path) have a bounded queue sized in milliseconds;
stream sinks (the fast path) get batches written straight to their transport,
bounded by its write buffer. ``publish`` never awaits, and a listener that fell
behind is dropped (and counted) instead of slowing the others.

``statistics()`` on each is the one way to look into what they buffer.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from townhall import metrics
from townhall.origin.chunked import LAST_CHUNK, http_chunk

log = logging.getLogger("townhall.media")


@dataclass(frozen=True, slots=True)
class SpreaderStatistics:
    pending_calls: int
    """Calls submitted and not made yet."""
    jobs: int
    """Submitted jobs not finished."""
    turns: int
    """Event-loop turns used so far."""
    failures: int
    """Callbacks that raised so far."""


@dataclass(frozen=True, slots=True)
class HubStatistics:
    queue_listeners: int
    """Listeners with a queue (the app's path)."""
    stream_sinks: int
    """Transports written to directly (the fast path)."""
    batch_frames: int
    """Frames waiting for the next batch."""

    @property
    def listeners(self) -> int:
        return self.queue_listeners + self.stream_sinks


@dataclass(frozen=True, slots=True)
class ListenerStatistics:
    queued_frames: int
    max_frames: int


class Spreader:
    """Calls ``fn(item)`` for many items, at most ``batch`` per event-loop turn,
    jobs in the order submitted (so two jobs for the same listeners keep their
    order). The first slice runs at once; the rest via ``loop.call_soon``, so
    timers due meanwhile (the mixer clock) run between slices.

    A callback must not raise; if one does, it is logged, counted and the others
    still run.
    """

    def __init__(self, batch: int) -> None:
        self.batch = max(1, batch)
        self._jobs: deque[_Job] = deque()
        self._busy = False
        self._turns = 0
        self._failures = 0

    def submit(self, fn: Callable[[Any], object], items: Sequence[Any]) -> None:
        if not items:
            return
        self._jobs.append(_Job(fn, items))
        if not self._busy:
            self._run()

    def statistics(self) -> SpreaderStatistics:
        return SpreaderStatistics(
            pending_calls=sum(len(job.items) - job.next for job in self._jobs),
            jobs=len(self._jobs),
            turns=self._turns,
            failures=self._failures,
        )

    def _run(self) -> None:
        self._busy = True
        self._turns += 1
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
                    except Exception:  # one listener's failure must not stop the others
                        self._failures += 1
                        metrics.LISTENER_WAKE_FAILURES.inc()
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

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(queued_frames=len(self._frames), max_frames=self.max_frames)


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

    def statistics(self) -> HubStatistics:
        return HubStatistics(
            queue_listeners=len(self._listeners),
            stream_sinks=len(self._sinks),
            batch_frames=len(self._batch),
        )
