"""The program of one live space: the mix, encoded once, packaged into LL-HLS
parts, published to the live window and the progressive stream, and recorded.

Tasks (all owned here, all awaited on ``finish`` / ``suspend``):

- the encoder task takes mix frames from a bounded queue (``push_frame`` never
  blocks the stage clock: a full queue drops the frame and counts it), encodes
  AAC, fans ADTS frames out, packages CMAF parts and publishes them;
- the recorder (``live/recorder.py``) makes each finished segment durable in
  a worker thread, retrying through write failures, so a slow or failing disk
  never stalls encoding.

A failed encoder or packager is never silent: the failure is counted and
logged with its traceback, the segment being built is closed short with the
parts listeners already have, and after a doubling wait the program restarts
in a new epoch (a DISCONTINUITY, a new init segment), at most
``program_restart_max`` times in a row. Meanwhile ``health()`` says
"recovering"; past the limit it says "failed" and the window closes, so
listeners' players stop waiting and the space's state.json says why.

``start`` resumes a recording left by a previous run (crash or restart): the
media sequence and the media timeline continue, the first new segment carries
a DISCONTINUITY (the encoder restarted and wall-clock time jumped).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from townhall import metrics
from townhall.config import Settings
from townhall.errors import Conflict
from townhall.live.recorder import Recorder, RecordingHealth
from townhall.live.trim import TAIL_S, AudioExtent
from townhall.media import adts
from townhall.media.cmaf import CmafPackager, Part, SegmentEnd, part_frames
from townhall.media.encoder import AAC_FRAME_SAMPLES, AacEncoder
from townhall.origin.bus import Closed, EpochStart, Message, PartPublished, SegmentEnded
from townhall.origin.fanout import ProgressiveHub, Spreader
from townhall.origin.window import LiveWindow
from townhall.store.recordings import Manifest, RecordingStore

log = logging.getLogger("townhall.media")

_STOP = None

OK, RECOVERING, FAILED = "ok", "recovering", "failed"

AudioTap = Callable[[np.ndarray, int], None]
"""Gets each program frame and its first sample on the media timeline, from the
encoder task; must not block (captions put it on a bounded queue)."""

EncoderFactory = Callable[[Settings], AacEncoder]
"""Builds the encoder of each epoch (a seam: tests pass one that fails)."""


def default_encoder(settings: Settings) -> AacEncoder:
    return AacEncoder(
        sample_rate_hz=settings.sample_rate_hz, bitrate_bps=settings.program_bitrate_bps
    )


@dataclass(frozen=True, slots=True)
class ProgramHealth:
    """What /healthz and state.json say about a program. ``status``: ``ok``,
    ``recovering`` (restarting after a failure) or ``failed`` (gave up)."""

    status: str
    message: str
    restarts: int
    epoch: int
    recording: RecordingHealth | None

    def problems(self) -> list[str]:
        """Sentences for /healthz: empty when all is well."""
        found = [self.message] if self.status != OK else []
        if self.recording is not None and self.recording.status in ("failing", "failed"):
            found.append(self.recording.message)
        return found


def _clock_text(seconds: float) -> str:
    whole = int(seconds)
    return (
        f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
        if whole >= 3600
        else f"{whole // 60}:{whole % 60:02d}"
    )


def recording_summary(manifest: Manifest | None) -> dict[str, object]:
    """state.json's ``recording`` field for a recording on disk (an ended space)."""
    if manifest is None:
        return {"status": OK, "message": "", "missing_s": 0.0, "missing": []}
    ranges = manifest.missing_ranges()
    total_s = sum(duration for _, duration in ranges)
    message = ""
    if ranges:
        spans = ", ".join(
            f"{_clock_text(start)}-{_clock_text(start + duration)}" for start, duration in ranges
        )
        message = f"{total_s:.1f} s of the talk could not be recorded ({spans}); the recording has silence there."
    return {
        "status": "incomplete" if ranges else OK,
        "message": message,
        "missing_s": round(total_s, 3),
        "missing": [{"start_s": round(a, 3), "duration_s": round(d, 3)} for a, d in ranges],
    }


def program_fields(program: Any) -> dict[str, Any]:
    """The ``program`` and ``recording`` fields of state.json of a running
    program (this process's, or the media process's copy: anything with
    ``health()``)."""
    health = program.health()
    fields: dict[str, Any] = {"program": {"status": health.status, "message": health.message}}
    if health.recording is not None:
        rec = health.recording
        fields["recording"] = {
            "status": rec.status,
            "message": rec.message,
            "missing_s": rec.missing_s,
        }
    return fields


async def state_fields(
    program: Program | None, recording: RecordingStore | None
) -> dict[str, object]:
    """The ``program`` and ``recording`` fields of state.json: from the running
    ``program``, else (an ended space) from ``recording``'s manifest."""
    if program is not None:
        return program_fields(program)
    if recording is not None:
        manifest = await asyncio.to_thread(recording.load)
        return {"recording": recording_summary(manifest)}
    return {}


class Program:
    """Encoder, packager, live window, progressive hub and recorder of a space.

    Lifecycle: ``start`` once, ``push_frame`` every frame, then ``finish``
    (the talk ended: ENDLIST) or ``suspend`` (process shutdown: resumable).
    ``recording`` and ``encoder_factory`` are seams for tests (a store whose
    writer fails, an encoder that fails).
    """

    def __init__(
        self,
        space_id: str,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        recording: RecordingStore | None = None,
        encoder_factory: EncoderFactory = default_encoder,
    ) -> None:
        self.space_id = space_id
        self.settings = settings
        self._clock = clock
        self._encoder_factory = encoder_factory
        self.recording = recording or RecordingStore(settings.recordings_dir, space_id)
        self.sample_rate_hz = settings.sample_rate_hz
        self.part_frames = part_frames(settings.part_ms, settings.sample_rate_hz)
        frame_ms = AAC_FRAME_SAMPLES * 1000 / settings.sample_rate_hz
        # one spreader per program: wake-ups and live.aac writes share its order
        self.spreader = Spreader(settings.listener_wake_batch)
        self.progressive = ProgressiveHub(
            max_lag_ms=settings.progressive_max_lag_ms,
            burst_ms=settings.progressive_burst_ms,
            frame_ms=frame_ms,
            bitrate_bps=settings.program_bitrate_bps,
            batch_ms=settings.progressive_batch_ms,
            spreader=self.spreader,
        )
        queue_frames = max(2, math.ceil(settings.program_queue_ms / settings.frame_ms))
        self._frames: asyncio.Queue[np.ndarray | None] = asyncio.Queue(queue_frames)
        self.window: LiveWindow | None = None
        self.recorder: Recorder | None = None
        self._epoch = 0
        self._epoch_start_samples = 0
        self._next_start_samples = 0
        self._epoch_wall_s: float | None = None
        self._open_parts: list[Part] = []
        self._running = False
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._status = OK
        self._status_message = ""
        self._restarts = 0
        self._encoder_task: asyncio.Task[None] | None = None
        self.frames_dropped = 0
        # the segment bus (scaled out): told every call made on the window; never blocks
        self.tap: Callable[[Message], None] | None = None
        # the media process: told every ADTS frame given to live.aac; never blocks
        self.adts_tap: Callable[[bytes], None] | None = None
        self.taps: list[AudioTap] = []
        # where the last audible frame ended: the recording ends there (issue 12)
        self.audio = AudioExtent()

    @property
    def ended(self) -> bool:
        return self.window is not None and self.window.ended

    async def start(self) -> None:
        """Open (or resume) the recording and start the encoder and writer tasks."""
        if self._running:
            return
        manifest = await asyncio.to_thread(self.recording.create, self.sample_rate_hz)
        if manifest.ended:
            raise Conflict("This space has ended; its recording is final and cannot resume.")
        if manifest.sample_rate_hz != self.sample_rate_hz:
            raise Conflict(
                f"The recording of this space is at {manifest.sample_rate_hz} Hz but the server runs at {self.sample_rate_hz} Hz; restore the setting to resume it."
            )
        self._epoch = manifest.next_epoch
        self._epoch_start_samples = self._next_start_samples = manifest.end_samples
        self.window = LiveWindow(
            epoch=self._epoch,
            first_msn=manifest.next_msn,
            history=manifest.segments,
            sample_rate_hz=self.sample_rate_hz,
            part_duration_samples=self.part_frames * AAC_FRAME_SAMPLES,
            segment_parts=self.settings.segment_parts,
            window_segments=self.settings.window_segments,
            playlist_segments=self.settings.live_playlist_window_segments,
            spreader=self.spreader,
        )
        self.recorder = Recorder(self.recording, manifest, self.settings)
        self.recorder.start()
        self._running = True
        self._encoder_task = asyncio.create_task(
            self._supervise(), name=f"program-encoder-{self.space_id}"
        )
        log.info(
            "program %s started: epoch %d at msn %d",
            self.space_id,
            self._epoch,
            manifest.next_msn,
        )

    def push_frame(self, pcm: np.ndarray) -> None:
        """Queue one mix frame (int16 mono). Never blocks; drops when behind
        (counted) and while the encoder restarts (a gap, not a backlog)."""
        if not self._running or self._stopping or self._status != OK:
            return
        if self._epoch_wall_s is None:
            # wall-clock of the first sample of this epoch: the program date-time
            self._epoch_wall_s = self._clock() - len(pcm) / self.sample_rate_hz
        try:
            self._frames.put_nowait(np.array(pcm, dtype=np.int16, copy=True))
        except asyncio.QueueFull:
            self.frames_dropped += 1
            metrics.PROGRAM_FRAMES_DROPPED.inc()

    async def finish(self) -> None:
        """The talk is over: flush, record the last (short) segment, mark ended."""
        await self._stop(ended=True)

    async def suspend(self) -> None:
        """Process shutdown: flush and record what there is, without ENDLIST."""
        await self._stop(ended=False)

    def statistics(self) -> dict[str, int]:
        """Queue depths and counters (for tests, benches and debugging)."""
        recording = self.recorder.health() if self.recorder is not None else None
        return {
            "queued_frames": self._frames.qsize(),
            "recording_backlog_bytes": recording.backlog_bytes if recording else 0,
            "frames_dropped": self.frames_dropped,
            "restarts": self._restarts,
            "progressive_listeners": self.progressive.statistics().listeners,
        }

    def health(self) -> ProgramHealth:
        """The program's and its recording's state, with sentences for people."""
        return ProgramHealth(
            status=self._status,
            message=self._status_message,
            restarts=self._restarts,
            epoch=self._epoch,
            recording=self.recorder.health() if self.recorder is not None else None,
        )

    async def drained(self) -> None:
        """Wait until every queued frame has been encoded and packaged."""
        await self._frames.join()

    async def _stop(self, *, ended: bool) -> None:
        if not self._running:
            if ended and self.window is None:
                # never started on this node: still mark the recording ended
                manifest = await asyncio.to_thread(self.recording.load)
                if manifest is not None and not manifest.ended:
                    await asyncio.to_thread(self.recording.mark_ended, manifest)
                await asyncio.to_thread(self.recording.close)
            return
        self._stopping = True
        self._stop_requested.set()
        if self._encoder_task is not None and not self._encoder_task.done():
            await self._frames.put(_STOP)
        if self._encoder_task is not None:
            await asyncio.gather(self._encoder_task, return_exceptions=True)
        if self.recorder is not None:
            last = self.audio.last_audible_end
            keep = None
            if ended and last is not None and self.settings.recording_trim_silence:
                keep = last + int(TAIL_S * self.sample_rate_hz)
            part_samples = self.part_frames * AAC_FRAME_SAMPLES
            await self.recorder.close(
                ended=ended, keep_until_samples=keep, part_samples=part_samples
            )
        self._running = False
        if self.window is not None:
            self.window.close(ended=ended)
            self._tell(Closed(ended))
        self.progressive.close()
        log.info("program %s %s", self.space_id, "finished" if ended else "suspended")

    def _tell(self, message: Message) -> None:
        if self.tap is not None:
            self.tap(message)

    # -- tasks -------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Run the encoder epoch after epoch: a failure restarts it in a new
        epoch after a doubling wait, ``program_restart_max`` times in a row."""
        loop = asyncio.get_running_loop()
        in_row = 0
        while True:
            started_s = loop.time()
            try:
                await self._encode_epoch()
                return  # stopped
            except Exception as exc:  # the task's top level: count, log, restart
                metrics.PROGRAM_FAILURES.inc()
                log.exception("program %s encoder failed in epoch %d", self.space_id, self._epoch)
                if loop.time() - started_s >= self.settings.program_restart_reset_s:
                    in_row = 0
                in_row += 1
                self._status = RECOVERING
                stopped = self._discard_frames()
                self._close_open_segment()
                if stopped or self._stopping:
                    return
                if in_row > self.settings.program_restart_max:
                    self._give_up(exc, in_row - 1)
                    return
                self._status_message = (
                    f"The audio encoder failed ({type(exc).__name__}); the program is "
                    f"restarting (attempt {in_row} of {self.settings.program_restart_max}), "
                    "listeners hear a short gap."
                )
                backoff_ms = min(
                    self.settings.program_restart_backoff_max_ms,
                    self.settings.program_restart_backoff_ms * 2 ** min(in_row - 1, 16),
                )
                try:
                    await asyncio.wait_for(self._stop_requested.wait(), backoff_ms / 1000)
                    return  # stopped while waiting
                except TimeoutError:
                    pass
                self._discard_frames()
                self._new_epoch()
                metrics.PROGRAM_RESTARTS.inc()
                self._restarts += 1
                log.warning(
                    "program %s restarted in epoch %d at msn %d (restart %d in a row)",
                    self.space_id,
                    self._epoch,
                    self.window.open_msn if self.window else -1,
                    in_row,
                )
                self._status, self._status_message = OK, ""

    def _give_up(self, exc: Exception, restarts: int) -> None:
        metrics.PROGRAM_GIVEN_UP.inc()
        self._status = FAILED
        self._status_message = (
            f"The audio encoder keeps failing ({type(exc).__name__}) after {restarts} "
            "restarts; the live audio has stopped. The host can end the space and start a new one."
        )
        log.error("program %s gave up after %d restarts", self.space_id, restarts)
        if self.window is not None:
            self.window.close(ended=False)
        self.progressive.close()

    def _discard_frames(self) -> bool:
        """Empty the frame queue (frames from before a failure would play late).
        True if the stop marker was among them."""
        stopped = False
        while True:
            try:
                item = self._frames.get_nowait()
            except asyncio.QueueEmpty:
                return stopped
            stopped = stopped or item is _STOP
            self._frames.task_done()

    def _close_open_segment(self) -> None:
        """End the segment being built with the parts listeners already have,
        so every published part stays valid and is recorded."""
        parts, self._open_parts = self._open_parts, []
        if not parts or self.window is None:
            return
        end = SegmentEnd(
            msn=parts[0].msn,
            start_samples=parts[0].start_samples,
            duration_samples=sum(p.duration_samples for p in parts),
            part_count=len(parts),
        )
        try:
            self._segment_ended(end)
        except Exception:
            log.exception("program %s could not close segment %d", self.space_id, end.msn)

    def _new_epoch(self) -> None:
        """The next run of the encoder: a new init segment and a discontinuity."""
        assert self.window is not None
        self._epoch += 1
        self._epoch_start_samples = self._next_start_samples
        self._epoch_wall_s = None
        # the window's current epoch and init are public fields it reads as is.
        # (origin/rules.py memoises the init per window, not per epoch: safe
        # because the init bytes depend only on the settings, which a test checks)
        self.window.epoch = self._epoch
        self.window.init_segment = None

    async def _encode_epoch(self) -> None:
        """One run of encoder and packager; returns when stopped, raises when
        either fails."""
        assert self.window is not None and self.recorder is not None
        window = self.window
        encoder = self._encoder_factory(self.settings)
        config = adts.config_from_asc(encoder.audio_specific_config)
        packager = CmafPackager(
            sample_rate_hz=self.sample_rate_hz,
            bitrate_bps=self.settings.program_bitrate_bps,
            audio_specific_config=encoder.audio_specific_config,
            part_frames=self.part_frames,
            segment_parts=self.settings.segment_parts,
            first_msn=window.open_msn,
            start_samples=self._epoch_start_samples,
        )
        init_written = False
        fed_samples = self._epoch_start_samples
        while True:
            pcm = await self._frames.get()
            if pcm is not None:
                self.audio.feed(pcm, fed_samples)
                self._tap(pcm, fed_samples)
                fed_samples += len(pcm)
            try:
                packets = encoder.flush() if pcm is None else encoder.encode(pcm)
                events = []
                for packet in packets:
                    adts_frame = adts.serialize(packet.data, config)
                    self.progressive.publish(adts_frame)
                    if self.adts_tap is not None:
                        self.adts_tap(adts_frame)
                    events.extend(packager.add(packet))
                if pcm is None:
                    events.extend(packager.close())
                if events and not init_written and packager.init_segment is not None:
                    window.init_segment = packager.init_segment
                    self._tell(
                        EpochStart(
                            self._epoch,
                            window.open_msn,
                            packager.init_segment,
                            self.sample_rate_hz,
                            window.part_duration_samples,
                            window.segment_parts,
                        )
                    )
                    self.recorder.begin_epoch(self._epoch, packager.init_segment)
                    init_written = True
                for event in events:
                    self._publish(event)
            finally:
                self._frames.task_done()
            if pcm is None:
                return

    def _tap(self, pcm: np.ndarray, start_samples: int) -> None:
        for tap in self.taps:
            try:
                tap(pcm, start_samples)
            except Exception:  # a tap (captions) never stops the program
                log.exception("program %s: audio tap failed; removed", self.space_id)
                self.taps.remove(tap)
                break

    def _publish(self, event: Part | SegmentEnd) -> None:
        assert self.window is not None
        if isinstance(event, Part):
            wall = self._epoch_wall_s if self._epoch_wall_s is not None else self._clock()
            pdt = wall + (event.start_samples - self._epoch_start_samples) / self.sample_rate_hz
            self.window.publish_part(event, pdt)
            self._tell(PartPublished(event, pdt))
            self._open_parts.append(event)
            metrics.PROGRAM_PARTS.inc()
        else:
            self._open_parts = []
            self._segment_ended(event)

    def _segment_ended(self, end: SegmentEnd) -> None:
        assert self.window is not None and self.recorder is not None
        record, data = self.window.end_segment(end)
        self._tell(SegmentEnded(end, record))
        self._next_start_samples = end.start_samples + end.duration_samples
        self.recorder.append(record, data)
