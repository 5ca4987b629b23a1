"""Captions of one live space: the recognizer worker, the track it fills, the
host's on/off switch, and the transcript stored with the recording.

``LiveCaptions.feed`` is the program's audio tap (non-blocking). A poll task
moves the worker's lines into the track four times a second and, every
``SAVE_EVERY_S``, writes the transcript so far (durably) beside the
recording; ``end`` waits up to ``captions_drain_timeout_s`` for the last
lines, then writes the final transcript. Captions off (the setting, or the
host) or unavailable (engine missing or failing) never affect the space.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import orjson

from townhall.captions.track import CaptionTrack, Line
from townhall.captions.worker import OFF, RUNNING, STARTING, UNAVAILABLE, Captioner, Tuning
from townhall.config import Settings
from townhall.store.recordings import write_durable

log = logging.getLogger("townhall.media")

TRANSCRIPT_FILE = "captions.jsonl"
HOST_OFF_FILE = "captions-off"
SAVE_EVERY_S = 30.0
POLL_S = 0.25


class Recognizers:
    """The recognizer processes of this node (one per captioned live space),
    at most ``captions_max_recognizers``: a space past the limit goes on
    without captions rather than slow the others (they share the cores)."""

    def __init__(self) -> None:
        self.spaces: set[str] = set()

    def take(self, space_id: str, limit: int) -> bool:
        from townhall import metrics

        if space_id not in self.spaces:
            if len(self.spaces) >= limit:
                return False
            self.spaces.add(space_id)
        metrics.CAPTIONS_RECOGNIZERS.set(len(self.spaces))
        return True

    def give_back(self, space_id: str) -> None:
        from townhall import metrics

        self.spaces.discard(space_id)
        metrics.CAPTIONS_RECOGNIZERS.set(len(self.spaces))


RECOGNIZERS = Recognizers()


def load_lines(directory: Path) -> list[Line]:
    """The stored transcript of a recording (empty if none)."""
    path = directory / TRANSCRIPT_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = []
    for raw in data.splitlines():
        if raw.strip():
            item = orjson.loads(raw)
            lines.append(Line(item["start_s"], item["end_s"], item["text"], item.get("speaker")))
    return lines


def dump_lines(lines: list[Line]) -> bytes:
    return b"".join(
        orjson.dumps(
            {"start_s": ln.start_s, "end_s": ln.end_s, "text": ln.text, "speaker": ln.speaker}
        )
        + b"\n"
        for ln in lines
    )


def captions_offered(settings: Settings, live: LiveCaptions | None, directory: Path) -> bool:
    """Whether the space's multivariant playlist offers the subtitles rendition:
    live, while its captions run or start (not turned off, not unavailable);
    otherwise when it has a transcript, or will be captioned once live."""
    if live is not None:
        return live.host_enabled and live.status()[0] in (STARTING, RUNNING)
    if (directory / TRANSCRIPT_FILE).exists():
        return True
    return settings.captions and not (directory / HOST_OFF_FILE).exists()


class LiveCaptions:
    """One space's captions while it is live (see the module docstring)."""

    def __init__(self, space_id: str, settings: Settings, directory: Path) -> None:
        self.space_id = space_id
        self.settings = settings
        self.directory = directory
        self.track = CaptionTrack()
        self.captioner: Captioner | None = None
        self.host_enabled = not (directory / HOST_OFF_FILE).exists()
        self._task: asyncio.Task[None] | None = None
        self._saved_version = -1
        self._status = OFF
        self._message = "Captions are not enabled on this server."

    def status(self) -> tuple[str, str]:
        """(status, sentence): ``off``, ``starting``, ``running`` or ``unavailable``."""
        if not self.host_enabled:
            return OFF, "The host turned captions off for this space."
        if self.captioner is not None:
            return self.captioner.status, self.captioner.message
        return self._status, self._message

    async def start(self) -> None:
        self.track.lines.extend(await asyncio.to_thread(load_lines, self.directory))
        if self.track.lines:
            self.track.done_s = self.track.lines[-1].end_s
        if not self.settings.captions:
            return
        limit = self.settings.captions_max_recognizers
        if not RECOGNIZERS.take(self.space_id, limit):
            from townhall import metrics

            metrics.CAPTIONS_REFUSED.inc()
            self._status = UNAVAILABLE
            self._message = (
                f"This server already captions {limit} live spaces, its limit "
                "(captions_max_recognizers); this space goes on without captions."
            )
            log.warning("captions of %s refused: %d recognizers running", self.space_id, limit)
            return
        settings = self.settings
        captioner = Captioner(
            self.space_id,
            engine=settings.captions_engine,
            sample_rate_hz=settings.sample_rate_hz,
            cpu_threads=settings.captions_cpu_threads,
            queue_s=settings.captions_queue_s,
            tuning=Tuning(
                mode=settings.captions_mode,
                chunk_s=settings.captions_chunk_s,
                step_s=settings.captions_step_s,
                window_s=settings.captions_window_s,
            ),
        )
        captioner.track = self.track
        try:
            captioner.start()
        except Exception as exc:  # cannot even spawn: go on without captions, say so
            RECOGNIZERS.give_back(self.space_id)
            log.exception("captions of %s could not start", self.space_id)
            self._status = UNAVAILABLE
            self._message = (
                f"Captions could not start ({type(exc).__name__}); the space goes on without them."
            )
            return
        self.captioner = captioner
        self._task = asyncio.create_task(self._poll_main(), name=f"captions-{self.space_id}")

    @property
    def active(self) -> bool:
        """Audio is wanted now (captions on, the host agrees, the worker alive)."""
        return (
            self.captioner is not None
            and self.host_enabled
            and self.captioner.status in (STARTING, RUNNING)
        )

    def feed(self, pcm: np.ndarray, start_samples: int, speaker: str | None) -> None:
        """The program's audio tap: never blocks."""
        if self.captioner is not None and self.host_enabled:
            self.captioner.feed(pcm, start_samples, speaker)

    async def set_enabled(self, enabled: bool) -> None:
        """The host's switch (kept across restarts of the space)."""
        self.host_enabled = enabled
        marker = self.directory / HOST_OFF_FILE
        if enabled:
            await asyncio.to_thread(marker.unlink, missing_ok=True)
        else:
            await asyncio.to_thread(self._touch, marker)

    def _touch(self, marker: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_durable(marker, b"")

    async def _poll_main(self) -> None:
        assert self.captioner is not None
        last_save = time.monotonic()
        try:
            while True:
                self.captioner.poll()
                if time.monotonic() - last_save >= SAVE_EVERY_S:
                    last_save = time.monotonic()
                    await self._save()
                if self.captioner.status not in (STARTING, RUNNING):
                    return
                await asyncio.sleep(POLL_S)
        except asyncio.CancelledError:
            raise
        except Exception:  # the task's top level: captions stop, the space goes on
            log.exception("captions poll of %s failed", self.space_id)

    async def _save(self) -> None:
        if self.track.version == self._saved_version:
            return
        self._saved_version = self.track.version
        data = dump_lines(list(self.track.lines))
        try:
            await asyncio.to_thread(self._write, data)
        except OSError:
            log.exception("transcript of %s could not be written", self.space_id)

    def _write(self, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_durable(self.directory / TRANSCRIPT_FILE, data)

    async def end(self, *, drain: bool) -> None:
        """Stop: with ``drain``, wait for the last lines first. Writes the transcript."""
        captioner = self.captioner
        if captioner is not None:
            captioner.stop_feeding()
            deadline = time.monotonic() + (self.settings.captions_drain_timeout_s if drain else 0)
            while (
                captioner.status in (STARTING, RUNNING)
                and not captioner.finished
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(POLL_S)
                captioner.poll()
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            captioner.poll()
            await asyncio.to_thread(captioner.close, 1.0)
            RECOGNIZERS.give_back(self.space_id)
        await self._save()
