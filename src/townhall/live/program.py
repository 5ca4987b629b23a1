"""The program of one live space: the mix, encoded once, packaged into LL-HLS
parts, published to the live window and the progressive stream, and recorded.

Tasks (all owned here, all awaited on ``finish`` / ``suspend``):

- the encoder task takes mix frames from a bounded queue (``push_frame`` never
  blocks the stage clock: a full queue drops the frame and counts it), encodes
  AAC, fans ADTS frames out, packages CMAF parts and publishes them;
- the writer task makes each finished segment durable in the recording (file
  I/O in a worker thread), so a slow disk never stalls encoding.

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

import numpy as np

from townhall import metrics
from townhall.config import Settings
from townhall.errors import Conflict
from townhall.media import adts
from townhall.media.cmaf import CmafPackager, Part, SegmentEnd, part_frames
from townhall.media.encoder import AAC_FRAME_SAMPLES, AacEncoder
from townhall.origin.fanout import ProgressiveHub, Spreader
from townhall.origin.window import LiveWindow
from townhall.store.recordings import Manifest, RecordingStore, SegmentRecord

log = logging.getLogger("townhall.media")

_STOP = None


class Program:
    """Encoder, packager, live window, progressive hub and recorder of a space.

    Lifecycle: ``start`` once, ``push_frame`` every frame, then ``finish``
    (the talk ended: ENDLIST) or ``suspend`` (process shutdown: resumable).
    """

    def __init__(
        self, space_id: str, settings: Settings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.space_id = space_id
        self.settings = settings
        self._clock = clock
        self.recording = RecordingStore(settings.recordings_dir, space_id)
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
        self._writes: asyncio.Queue[tuple[SegmentRecord, bytes] | None] = asyncio.Queue(
            settings.window_segments
        )
        self.window: LiveWindow | None = None
        self._manifest: Manifest | None = None
        self._epoch = 0
        self._epoch_start_samples = 0
        self._epoch_wall_s: float | None = None
        self._running = False
        self._stopping = False
        self._encoder_task: asyncio.Task[None] | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self.frames_dropped = 0

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
        self._manifest = manifest
        self._epoch = manifest.next_epoch
        self._epoch_start_samples = manifest.end_samples
        self.window = LiveWindow(
            epoch=self._epoch,
            first_msn=manifest.next_msn,
            history=manifest.segments,
            sample_rate_hz=self.sample_rate_hz,
            part_duration_samples=self.part_frames * AAC_FRAME_SAMPLES,
            segment_parts=self.settings.segment_parts,
            window_segments=self.settings.window_segments,
            spreader=self.spreader,
        )
        self._running = True
        self._encoder_task = asyncio.create_task(
            self._encode_loop(), name=f"program-encoder-{self.space_id}"
        )
        self._writer_task = asyncio.create_task(
            self._write_loop(), name=f"program-writer-{self.space_id}"
        )
        log.info(
            "program %s started: epoch %d at msn %d",
            self.space_id,
            self._epoch,
            manifest.next_msn,
        )

    def push_frame(self, pcm: np.ndarray) -> None:
        """Queue one mix frame (int16 mono). Never blocks; drops when behind."""
        if not self._running or self._stopping:
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
        return {
            "queued_frames": self._frames.qsize(),
            "queued_writes": self._writes.qsize(),
            "frames_dropped": self.frames_dropped,
            "progressive_listeners": self.progressive.statistics().listeners,
        }

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
            return
        self._stopping = True
        if self._encoder_task is not None and not self._encoder_task.done():
            await self._frames.put(_STOP)
        if self._encoder_task is not None:
            await asyncio.gather(self._encoder_task, return_exceptions=True)
        if self._writer_task is not None:
            await asyncio.gather(self._writer_task, return_exceptions=True)
        if ended and self._manifest is not None:
            self._manifest = await asyncio.to_thread(self.recording.mark_ended, self._manifest)
        self._running = False
        if self.window is not None:
            self.window.close(ended=ended)
        self.progressive.close()
        log.info("program %s %s", self.space_id, "finished" if ended else "suspended")

    # -- tasks -------------------------------------------------------------------

    async def _encode_loop(self) -> None:
        assert self.window is not None and self._manifest is not None
        window = self.window
        encoder = AacEncoder(
            sample_rate_hz=self.sample_rate_hz, bitrate_bps=self.settings.program_bitrate_bps
        )
        config = adts.config_from_asc(encoder.audio_specific_config)
        packager = CmafPackager(
            sample_rate_hz=self.sample_rate_hz,
            bitrate_bps=self.settings.program_bitrate_bps,
            audio_specific_config=encoder.audio_specific_config,
            part_frames=self.part_frames,
            segment_parts=self.settings.segment_parts,
            first_msn=self._manifest.next_msn,
            start_samples=self._epoch_start_samples,
        )
        init_written = False
        try:
            while True:
                pcm = await self._frames.get()
                try:
                    packets = encoder.flush() if pcm is None else encoder.encode(pcm)
                    events = []
                    for packet in packets:
                        self.progressive.publish(adts.serialize(packet.data, config))
                        events.extend(packager.add(packet))
                    if pcm is None:
                        events.extend(packager.close())
                    if events and not init_written and packager.init_segment is not None:
                        window.init_segment = packager.init_segment
                        self._manifest = await asyncio.to_thread(
                            self.recording.begin_epoch,
                            self._manifest,
                            self._epoch,
                            packager.init_segment,
                        )
                        init_written = True
                    for event in events:
                        await self._publish(event)
                finally:
                    self._frames.task_done()
                if pcm is None:
                    break
        except Exception:
            metrics.PROGRAM_FAILURES.inc()
            log.exception("program %s encoder failed", self.space_id)
            window.close(ended=False)
            self.progressive.close()
        finally:
            await self._writes.put(None)

    async def _publish(self, event: Part | SegmentEnd) -> None:
        assert self.window is not None
        if isinstance(event, Part):
            wall = self._epoch_wall_s if self._epoch_wall_s is not None else self._clock()
            pdt = wall + (event.start_samples - self._epoch_start_samples) / self.sample_rate_hz
            self.window.publish_part(event, pdt)
            metrics.PROGRAM_PARTS.inc()
        else:
            record, data = self.window.end_segment(event)
            await self._writes.put((record, data))

    async def _write_loop(self) -> None:
        failed = False
        while True:
            item = await self._writes.get()
            if item is None:
                return
            if failed:
                continue  # keep draining so the encoder never blocks on us
            record, data = item
            try:
                assert self._manifest is not None
                self._manifest = await asyncio.to_thread(
                    self.recording.append_segment, self._manifest, record, data
                )
            except Exception:
                failed = True
                metrics.PROGRAM_FAILURES.inc()
                log.exception(
                    "program %s could not record segment %d; recording stops here",
                    self.space_id,
                    record.msn,
                )
