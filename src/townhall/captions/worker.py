"""Recognition in a worker process, fed the program audio through a bounded queue.

The room's program hands ``Captioner.feed`` its frames (never blocking: the
mix, the encoder and the listeners never wait for recognition). Frames are
batched here into ``batch_ms`` pieces, one non-blocking queue put per batch;
when the worker falls behind the queue is full, the batch is dropped and
``townhall_captions_dropped_seconds_total`` counts it.

In ``stream`` mode (the default) the worker runs ``stream.Stream``: a pass
over a short sliding window every ``step_s`` of new audio (or over all that
is waiting, when it is behind: it catches up with longer steps instead of
falling further back), sending finished lines, the line being built
("open") and how far captions are final. In ``chunks`` mode it cuts the
audio into chunks of about ``chunk_s`` at its quietest moments (``Chunker``)
and transcribes each as one line. Times are on the program's media timeline.

If the engine cannot load, or the worker dies, the space goes on without
captions and ``status()`` says so in a sentence (state.json, captions.json).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from typing import Any

import numpy as np

from townhall.captions.engine import WordRecognizer, to_float_16k
from townhall.captions.stream import Stream, Update
from townhall.captions.track import CaptionTrack, Line

log = logging.getLogger("townhall.media")

STARTING, RUNNING, UNAVAILABLE, OFF = "starting", "running", "unavailable", "off"
# streaming: with no program audio for this long, settle what was heard
IDLE_S = 2.0


class Chunker:
    """Cuts a stream of samples into chunks for recognition (pure, no I/O).

    ``feed(pcm, start_samples)`` returns finished chunks as (start_samples,
    samples). A chunk ends at the quietest ``quiet_ms`` window between
    ``min_s`` and the end once ``target_s`` is buffered (so cuts fall between
    words), and always by ``max_s``. A gap in ``start_samples`` (dropped
    audio) closes the chunk being built.
    """

    def __init__(
        self,
        sample_rate_hz: int,
        *,
        target_s: float = 3.0,
        min_s: float = 1.5,
        quiet_ms: int = 60,
    ) -> None:
        self.rate = sample_rate_hz
        self.target = int(target_s * sample_rate_hz)
        self.min = min(int(min_s * sample_rate_hz), self.target)
        self.quiet = max(1, quiet_ms * sample_rate_hz // 1000)
        self._parts: list[np.ndarray] = []
        self._start = 0
        self._length = 0

    def feed(self, pcm: np.ndarray, start_samples: int) -> list[tuple[int, np.ndarray]]:
        out: list[tuple[int, np.ndarray]] = []
        if self._length and start_samples != self._start + self._length:
            out.extend(self.flush())
        if not self._length:
            self._start = start_samples
        self._parts.append(pcm)
        self._length += len(pcm)
        while self._length >= self.target:
            buf = np.concatenate(self._parts)
            cut = self._quietest(buf)
            out.append((self._start, buf[:cut]))
            rest = buf[cut:]
            self._start += cut
            self._parts, self._length = ([rest] if len(rest) else []), len(rest)
        return out

    def flush(self) -> list[tuple[int, np.ndarray]]:
        if not self._length:
            return []
        chunk = (self._start, np.concatenate(self._parts))
        self._start += self._length
        self._parts, self._length = [], 0
        return [chunk]

    def _quietest(self, buf: np.ndarray) -> int:
        region = buf[self.min :].astype(np.float32)
        n = len(region) // self.quiet
        if n < 2:
            return len(buf)
        energy = np.square(region[: n * self.quiet]).reshape(n, self.quiet).mean(axis=1)
        return self.min + int(np.argmin(energy)) * self.quiet + self.quiet // 2


@dataclass(frozen=True, slots=True)
class Tuning:
    """How the worker recognizes (the captions_* settings)."""

    mode: str = "stream"
    chunk_s: float = 5.0
    step_s: float = 1.0
    window_s: float = 8.0


def _send(outbox: Any, *msg: Any) -> None:
    # the owner stopped reading: nothing to do but go on
    with contextlib.suppress(queue.Full):
        outbox.put(msg, timeout=5)


def _send_update(outbox: Any, update: Update) -> None:
    for line in update.closed:
        _send(outbox, "line", line.start_s, line.end_s, line.text)
    if update.open is None:
        _send(outbox, "open", None, None, None)
    else:
        _send(outbox, "open", update.open.start_s, update.open.end_s, update.open.text)
    _send(outbox, "upto", update.final_s)


def _stream_main(
    recognizer: WordRecognizer, sample_rate_hz: int, tuning: Tuning, inbox: Any, outbox: Any
) -> None:
    stream = Stream(recognizer, step_s=tuning.step_s, window_s=tuning.window_s)
    ended = False
    while not ended:
        try:
            items = [inbox.get(timeout=IDLE_S)]
        except queue.Empty:
            # no program audio for a while (paused, or the feed stopped):
            # what was heard so far is all there is, show it
            if stream.pending:
                _send_update(outbox, stream.finish())
            continue
        while True:  # all that waits: when behind, one longer step catches up
            try:
                items.append(inbox.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if item is None:
                ended = True
                break
            start_samples, pcm = item
            gap = stream.feed(to_float_16k(pcm, sample_rate_hz), start_samples / sample_rate_hz)
            if gap is not None:
                _send_update(outbox, gap)
            if stream.full:  # catching up: never a window longer than window_s
                _send_update(outbox, stream.step())
        if ended:
            _send_update(outbox, stream.finish())
        elif stream.due:
            _send_update(outbox, stream.step())


def _worker_main(
    engine: str,
    cpu_threads: int,
    sample_rate_hz: int,
    tuning: Tuning,
    inbox: Any,
    outbox: Any,
) -> None:
    """The worker process: load the engine, then recognize until None."""
    from townhall.captions.engine import EngineUnavailable, load_recognizer

    # the mixer's process comes first on a busy machine: captions may lag, the
    # mix may not. Lowest priority (nice 19) and SCHED_BATCH (the scheduler
    # never lets this process preempt a waking task such as the mixer clock)
    with contextlib.suppress(OSError):
        os.nice(19 - os.nice(0))
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        recognizer = load_recognizer(engine, cpu_threads=cpu_threads)
    except EngineUnavailable as exc:
        outbox.put(("failed", exc.detail))
        return
    outbox.put(("ready", recognizer.name))
    if tuning.mode == "stream" and isinstance(recognizer, WordRecognizer):
        _stream_main(recognizer, sample_rate_hz, tuning, inbox, outbox)
        outbox.put(("done",))
        return
    chunker = Chunker(sample_rate_hz, target_s=tuning.chunk_s, min_s=tuning.chunk_s / 2)

    def chunks() -> Iterator[tuple[int, np.ndarray]]:
        while True:
            item = inbox.get()
            if item is None:
                yield from chunker.flush()
                return
            start_samples, pcm = item
            yield from chunker.feed(pcm, start_samples)

    for start_samples, pcm in chunks():
        offset_s = start_samples / sample_rate_hz
        for seg in recognizer.transcribe(pcm, sample_rate_hz):
            line = (offset_s + seg.start_s, offset_s + seg.end_s, seg.text)
            # the owner stopped reading: nothing to do but go on
            with contextlib.suppress(queue.Full):
                outbox.put(("line", *line), timeout=5)
        with contextlib.suppress(queue.Full):
            outbox.put(("upto", (start_samples + len(pcm)) / sample_rate_hz), timeout=5)
    outbox.put(("done",))


class Captioner:
    """Owner side of one space's caption worker. Call ``start``, ``feed`` per
    program frame (non-blocking), ``poll`` regularly (returns new lines),
    ``close`` at the end (waits up to ``close_timeout_s`` for the last lines).
    """

    def __init__(
        self,
        space_id: str,
        *,
        engine: str,
        sample_rate_hz: int,
        cpu_threads: int = 1,
        chunk_s: float = 3.0,
        batch_ms: int = 250,
        queue_s: float = 30.0,
        tuning: Tuning | None = None,
    ) -> None:
        self.space_id = space_id
        self.engine = engine
        self.sample_rate_hz = sample_rate_hz
        self.cpu_threads = cpu_threads
        self.tuning = tuning or Tuning(mode="chunks", chunk_s=chunk_s)
        self.batch_samples = max(1, batch_ms * sample_rate_hz // 1000)
        self.queue_batches = max(2, int(queue_s * 1000 / batch_ms))
        ctx = mp.get_context("spawn")  # no fork of a process with threads and a loop
        self._inbox: Any = ctx.Queue(self.queue_batches)
        self._outbox: Any = ctx.Queue(1000)
        self._proc: SpawnProcess | None = None
        self._ctx = ctx
        self._batch: list[np.ndarray] = []
        self._batch_len = 0
        self._batch_start = 0
        self._speakers: dict[str | None, int] = {}
        self._speaker_log: list[tuple[int, str | None]] = []
        self.status = STARTING
        self.message = "Captions are starting."
        self.dropped_s = 0.0
        self.engine_name = ""
        self.finished = False
        self._stopped = False
        self.track = CaptionTrack()

    def start(self) -> None:
        self._proc = self._ctx.Process(
            target=_worker_main,
            args=(
                self.engine,
                self.cpu_threads,
                self.sample_rate_hz,
                self.tuning,
                self._inbox,
                self._outbox,
            ),
            name=f"captions-{self.space_id}",
            daemon=True,
        )
        self._proc.start()

    def feed(self, pcm: np.ndarray, start_samples: int, speaker: str | None = None) -> None:
        """One program frame at ``start_samples`` on the media timeline, and who
        was speaking (the loudest speaker, if any). Never blocks."""
        if self._stopped or self.status not in (STARTING, RUNNING):
            return
        if self._batch_len and start_samples != self._batch_start + self._batch_len:
            self._send()
        if not self._batch_len:
            self._batch_start = start_samples
        self._batch.append(pcm)
        self._batch_len += len(pcm)
        self._speakers[speaker] = self._speakers.get(speaker, 0) + len(pcm)
        if self._batch_len >= self.batch_samples:
            self._send()

    def _send(self) -> None:
        from townhall import metrics

        pcm = np.concatenate(self._batch)
        start, n = self._batch_start, self._batch_len
        speaker = max(self._speakers.items(), key=lambda kv: (kv[0] is not None, kv[1]))[0]
        self._batch, self._batch_len, self._speakers = [], 0, {}
        self._speaker_log.append((start, speaker))
        if len(self._speaker_log) > 4 * self.queue_batches:
            del self._speaker_log[: len(self._speaker_log) // 2]
        try:
            self._inbox.put_nowait((start, pcm))
        except queue.Full:
            lost_s = n / self.sample_rate_hz
            self.dropped_s += lost_s
            metrics.CAPTIONS_DROPPED_SECONDS.inc(lost_s)

    def speaker_at(self, time_s: float) -> str | None:
        """Who was speaking at ``time_s`` (media timeline), as fed."""
        at = int(time_s * self.sample_rate_hz)
        found: str | None = None
        for start, speaker in self._speaker_log:
            if start > at:
                break
            found = speaker
        return found

    def poll(self) -> list[Line]:
        """New lines from the worker, also added to ``track``; updates
        ``status``. Never blocks."""
        from townhall import metrics

        lines: list[Line] = []
        # seen gone before the drain below, so what it sent before exiting
        # (its last lines and "done") is read first and not taken for a failure
        gone = (
            self._proc is not None and not self._proc.is_alive() and self._proc.exitcode is not None
        )
        while True:
            try:
                msg = self._outbox.get_nowait()
            except queue.Empty:
                break
            kind = msg[0]
            if kind == "ready":
                self.status, self.message, self.engine_name = RUNNING, "", msg[1]
            elif kind == "failed":
                self._unavailable(f"Captions are off for this space: {msg[1]}")
            elif kind == "line":
                start_s, end_s, text = msg[1], msg[2], msg[3]
                line = Line(start_s, end_s, text, self.speaker_at((start_s + end_s) / 2))
                lines.append(line)
                self.track.add(line)
                metrics.CAPTIONS_LINES.inc()
            elif kind == "open":
                start_s, end_s, text = msg[1], msg[2], msg[3]
                self.track.set_open(
                    None
                    if start_s is None
                    else Line(start_s, end_s, text, self.speaker_at((start_s + end_s) / 2))
                )
            elif kind == "upto":
                self.track.advance(msg[1])
            elif kind == "done":
                self.finished = True
        if gone and not self.finished and self.status in (STARTING, RUNNING):
            assert self._proc is not None
            self._unavailable(
                f"Captions stopped: the recognizer process exited (code {self._proc.exitcode}); "
                "the space goes on without captions."
            )
        return lines

    def _unavailable(self, message: str) -> None:
        from townhall import metrics

        if self.status != UNAVAILABLE:
            metrics.CAPTIONS_FAILURES.inc()
            log.warning("captions of %s unavailable: %s", self.space_id, message)
        self.status, self.message = UNAVAILABLE, message

    def stop_feeding(self) -> None:
        """Send what is batched and the end marker (non-blocking, once)."""
        if self._stopped:
            return
        self._stopped = True
        if self._batch_len:
            self._send()
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(None)

    def close(self, timeout_s: float = 0.0) -> None:
        """Stop the worker (waits up to ``timeout_s`` for it to finish the
        last chunk; blocking: call from a thread)."""
        self.stop_feeding()
        if self._proc is not None:
            self._proc.join(timeout_s)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(2)
        if self.status != UNAVAILABLE:
            self.status = OFF
        self._inbox.cancel_join_thread()
        self._inbox.close()
        self._outbox.close()
