"""The recorder of one live program: init and segments made durable in order,
in a worker thread, through write failures.

The program hands over each epoch's init segment and each finished segment
without waiting (``begin_epoch``, ``append``). They wait in a backlog bounded
by ``recording_backlog_bytes``; one task writes them oldest first. A write
that fails (disk full, no descriptors, read-only disk, I/O error) is retried
with a doubling wait up to ``recording_retry_max_ms``, counted by cause, and
logged with the cause; meanwhile ``health()`` says "failing" with a sentence
for people. Once the cause is gone the next retry succeeds and recording goes
on in the same recording, with nothing lost as long as the backlog held.
Segments that do not fit in the backlog are listed in the manifest as missing
(in order, and every one after them until a write succeeds again, so an
outage makes one gap), and the next recorded segment carries a discontinuity.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from townhall import metrics
from townhall.config import Settings
from townhall.live.trim import first_parts, plan_tail
from townhall.store.recordings import (
    MANIFEST,
    Manifest,
    RecordingStore,
    SegmentRecord,
    write_cause,
)

log = logging.getLogger("townhall.media")

OK, FAILING, INCOMPLETE, FAILED = "ok", "failing", "incomplete", "failed"


@dataclass(frozen=True, slots=True)
class _Init:
    epoch: int
    data: bytes


@dataclass(frozen=True, slots=True)
class _Segment:
    record: SegmentRecord
    data: bytes


@dataclass(frozen=True, slots=True)
class _Missing:
    record: SegmentRecord


_Item = _Init | _Segment | _Missing | None  # None: stop


@dataclass(frozen=True, slots=True)
class RecordingHealth:
    """What people are told about a recording. ``status``: ``ok``; ``failing``
    (writes fail now, retried); ``incomplete`` (recording again, but part of
    the talk is missing); ``failed`` (the recorder stopped with writes that
    never succeeded)."""

    status: str
    message: str
    backlog_bytes: int
    backlog_s: float
    missing_s: float
    failing_for_s: float


class Recorder:
    """Writes one program's recording. ``start`` once, feed it, then ``close``."""

    def __init__(
        self,
        store: RecordingStore,
        manifest: Manifest,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.settings = settings
        self._clock = clock
        self._manifest = manifest
        self._items: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self._backlog_bytes = 0
        self._backlog_segment_bytes = 0  # the bound applies to segments only
        self._backlog_samples = 0
        self._dropped_samples = 0  # listed missing, not yet in a written manifest
        self._failing_since: float | None = None
        self._cause = ""
        self._gave_up = False
        self._overflowed = False
        self._deadline: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def manifest(self) -> Manifest:
        """The last manifest made durable (plus missing entries applied since)."""
        return self._manifest

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"recorder-{self.store.space_id}")

    def begin_epoch(self, epoch: int, init_segment: bytes) -> None:
        """Queue the epoch's init segment (always kept: it is small)."""
        self._push(_Init(epoch, init_segment), len(init_segment), 0)

    def append(self, record: SegmentRecord, data: bytes) -> None:
        """Queue a finished segment; never blocks. Beyond the backlog bound the
        segment is listed as missing instead (counted); one segment is always
        taken (the one being written), whatever the bound."""
        held = self._backlog_segment_bytes
        if self._overflowed or (held and held + len(data) > self.settings.recording_backlog_bytes):
            # once full, drop until a write succeeds again: one gap, not many
            self._overflowed = True
            self._drop(record)
            return
        self._backlog_segment_bytes += len(data)
        self._push(_Segment(record, data), len(data), record.duration_samples)

    def health(self) -> RecordingHealth:
        sr = self._manifest.sample_rate_hz
        missing_s = (self._manifest.missing_samples + self._dropped_samples) / sr
        backlog_s = self._backlog_samples / sr
        failing_for_s = 0.0 if self._failing_since is None else self._clock() - self._failing_since
        lost = f"; {missing_s:.1f} s of the talk could not be kept" if missing_s else ""
        if self._gave_up:
            status = FAILED
            message = f"The recording stopped: {self._cause}{lost}."
        elif self._failing_since is not None:
            status = FAILING
            message = (
                f"Recording is failing: {self._cause}. Retrying; {backlog_s:.1f} s of audio "
                f"held in memory{lost}."
            )
        elif missing_s:
            status = INCOMPLETE
            message = f"Recording resumed; {missing_s:.1f} s of the talk is missing from it."
        else:
            status, message = OK, ""
        return RecordingHealth(
            status=status,
            message=message,
            backlog_bytes=self._backlog_bytes,
            backlog_s=round(backlog_s, 3),
            missing_s=round(missing_s, 3),
            failing_for_s=round(failing_for_s, 3),
        )

    async def close(
        self, *, ended: bool, keep_until_samples: int | None = None, part_samples: int = 0
    ) -> Manifest:
        """Write what is queued (retrying for at most ``recording_drain_timeout_s``;
        what is still unwritten then is listed as missing), mark the recording
        ended if ``ended``, release the descriptors. Returns the manifest.
        With ``keep_until_samples`` an ended recording stops there (rounded up
        to a part of ``part_samples``): the dead air after it is dropped
        (``live/trim.py``)."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.settings.recording_drain_timeout_s
        self._items.append(None)
        self._ready.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if ended and keep_until_samples is not None:
            await self._retry(
                partial(self._trim_tail, keep_until_samples, part_samples),
                "the end of the recording (dead air dropped)",
            )
        if ended:
            marked = await self._retry(
                lambda: self.store.mark_ended(self._manifest), "the end mark"
            )
            self._gave_up = self._gave_up or not marked
        await asyncio.to_thread(self.store.close)
        return self._manifest

    # -- internals -----------------------------------------------------------------

    def _trim_tail(self, keep_until_samples: int, part_samples: int) -> Manifest:
        """Drop what follows ``keep_until_samples`` (in a thread): the shortened
        last segment is written first, then the manifest that names it; the
        files of the dropped segments are removed last (best effort)."""
        manifest = self._manifest
        cut = plan_tail(manifest.segments, keep_until_samples, part_samples)
        if cut is None:
            return manifest
        if cut.shortened is not None:
            msn, parts = cut.shortened
            data = self.store.read_segment(msn)
            if data is None:
                raise OSError(errno.ENOENT, f"segment {msn} cannot be read back to shorten it")
            self.store.writer.write(self.store.segment_path(msn).name, first_parts(data, parts))
        last = cut.segments[-1]
        end = last.start_samples + last.duration_samples
        trimmed = replace(
            manifest,
            segments=cut.segments,
            missing=tuple(r for r in manifest.missing if r.start_samples < end),
        )
        self.store.writer.write(MANIFEST, trimmed.to_json())
        kept = {r.msn for r in cut.segments}
        for record in manifest.segments:
            if record.msn not in kept:
                with contextlib.suppress(OSError):
                    self.store.segment_path(record.msn).unlink()
        dropped_s = (manifest.end_samples - end) / manifest.sample_rate_hz
        log.info(
            "recording of %s: %.1f s of dead air at the end dropped", self.store.space_id, dropped_s
        )
        return trimmed

    def _push(self, item: _Init | _Segment, nbytes: int, samples: int) -> None:
        self._items.append(item)
        self._backlog_bytes += nbytes
        self._backlog_samples += samples
        metrics.RECORDING_BACKLOG_BYTES.inc(nbytes)
        self._ready.set()

    def _drop(self, record: SegmentRecord) -> None:
        self._items.append(_Missing(record))
        self._dropped_samples += record.duration_samples
        metrics.RECORDING_SEGMENTS_MISSING.inc()
        self._ready.set()

    def held(self, what: str, number: int) -> bytes | None:
        """The bytes of segment (``what="segment"``) or init (``"init"``)
        ``number`` if they wait in the backlog, not yet on disk: listeners are
        served them meanwhile (a segment leaves the live window before its
        write is done, and a failing disk may hold it for a while)."""
        for item in self._items:
            if what == "segment" and isinstance(item, _Segment) and item.record.msn == number:
                return item.data
            if what == "init" and isinstance(item, _Init) and item.epoch == number:
                return item.data
        return None

    def _done(self, item: _Init | _Segment) -> None:
        nbytes = len(item.data)
        self._backlog_bytes -= nbytes
        if isinstance(item, _Segment):
            self._backlog_samples -= item.record.duration_samples
            self._backlog_segment_bytes -= nbytes
        metrics.RECORDING_BACKLOG_BYTES.dec(nbytes)

    async def _run(self) -> None:
        while True:
            if not self._items:
                self._ready.clear()
                await self._ready.wait()
                continue
            item = self._items[0]
            if item is None:
                self._items.popleft()
                return
            if isinstance(item, _Missing):
                self._items.popleft()
                self._dropped_samples -= item.record.duration_samples
                self._manifest = self._manifest.with_missing(item.record)
                continue
            label = f"segment {item.record.msn}" if isinstance(item, _Segment) else "an init"
            written = await self._retry(partial(self._write, item), label)
            self._items.popleft()
            self._done(item)
            if written:
                continue
            if self._deadline is not None and asyncio.get_running_loop().time() >= self._deadline:
                self._give_up(item)
                return
            if isinstance(item, _Segment):  # cannot be written at all: say so, go on
                metrics.RECORDING_SEGMENTS_MISSING.inc()
                self._list_missing(item.record)

    def _write(self, item: _Init | _Segment) -> Manifest:
        if isinstance(item, _Init):
            return self.store.begin_epoch(self._manifest, item.epoch, item.data)
        return self.store.append_segment(self._manifest, item.record, item.data)

    async def _retry(self, write: Callable[[], Manifest], what: str) -> bool:
        """Run ``write`` in a thread until it succeeds (True) or the drain
        deadline passes (False)."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                self._manifest = await asyncio.to_thread(write)
            except Exception as exc:  # every failure is counted, logged and retried
                attempt += 1
                self._failed(exc, attempt, what)
                if not isinstance(exc, OSError):
                    return False  # a bug, not the disk: retrying cannot help
                delay_s = (
                    min(
                        self.settings.recording_retry_max_ms,
                        self.settings.recording_retry_ms * 2 ** min(attempt - 1, 16),
                    )
                    / 1000
                )
                if self._deadline is not None:
                    left_s = self._deadline - loop.time()
                    if left_s <= 0:
                        return False
                    delay_s = min(delay_s, left_s)
                await asyncio.sleep(delay_s)
                continue
            self._overflowed = False
            if self._failing_since is not None:
                log.warning(
                    "recording of %s resumed after %.1f s (%s)",
                    self.store.space_id,
                    self._clock() - self._failing_since,
                    self._cause,
                )
                self._failing_since = None
            return True

    def _failed(self, exc: Exception, attempt: int, what: str) -> None:
        name = errno.errorcode.get(exc.errno or 0, "other") if isinstance(exc, OSError) else "other"
        metrics.RECORDING_WRITE_FAILURES.labels(name).inc()
        self._cause = write_cause(exc)
        if self._failing_since is None:
            self._failing_since = self._clock()
        if attempt == 1:
            log.error(
                "recording of %s: could not write %s: %s; retrying",
                self.store.space_id,
                what,
                self._cause,
                exc_info=exc,
            )
        elif attempt % 10 == 0:
            log.warning(
                "recording of %s: %s still failing after %d attempts: %s",
                self.store.space_id,
                what,
                attempt,
                exc,
            )

    def _list_missing(self, record: SegmentRecord) -> None:
        try:
            self._manifest = self._manifest.with_missing(record)
        except ValueError:  # out of order: a bug upstream; the gap shows in msns
            log.exception(
                "recording of %s: cannot list segment %d", self.store.space_id, record.msn
            )

    def _give_up(self, failed: _Init | _Segment) -> None:
        """The drain deadline passed with writes still failing: everything not
        written is listed as missing, so the manifest stays truthful."""
        self._gave_up = True
        pending = [failed, *self._items]
        self._items.clear()
        for item in pending:
            if isinstance(item, _Init | _Segment) and item is not failed:
                self._done(item)
            if isinstance(item, _Segment):
                metrics.RECORDING_SEGMENTS_MISSING.inc()
                self._list_missing(item.record)
            elif isinstance(item, _Missing):
                self._dropped_samples -= item.record.duration_samples
                self._list_missing(item.record)
        log.error(
            "recording of %s: gave up writing (%s); %.1f s listed as missing",
            self.store.space_id,
            self._cause,
            self._manifest.missing_samples / self._manifest.sample_rate_hz,
        )
