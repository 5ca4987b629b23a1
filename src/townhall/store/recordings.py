"""Durable recordings of spaces: ``<recordings_dir>/<space_id>/``.

Layout::

    init-<epoch>.mp4      fMP4 init segment of each epoch (a run of the program)
    seg-<msn>.m4s         each finished segment (moof+mdat parts, as served)
    manifest.json         the journal: epochs, segments (msn, times, program
                          date-time, discontinuity), ended flag
    recording.m4a         the whole talk remuxed into one file, built once ended

Every file is written durably: temp file, fsync, rename, fsync of the
directory. A segment's file is durable before the manifest names it, so after
a crash (kill -9) the manifest lists only whole segments; the segment that was
being built is lost, nothing else. The manifest is rewritten whole (a few
hundred bytes per segment, one write per segment) rather than appended to, so
it is never half-written.

Blocking file I/O: call these methods from a worker thread
(``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import orjson

from townhall.errors import BadRequest, Conflict, NotFound

log = logging.getLogger("townhall.media")

MANIFEST = "manifest.json"
M4A = "recording.m4a"
FORMAT_VERSION = 1
SPACE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """One finished segment. Times are in samples of the track timescale."""

    msn: int
    epoch: int
    start_samples: int
    duration_samples: int
    program_date_time_s: float
    discontinuity: bool
    part_count: int


@dataclass(frozen=True, slots=True)
class Manifest:
    space_id: str
    sample_rate_hz: int
    ended: bool
    epochs: tuple[int, ...]
    segments: tuple[SegmentRecord, ...]

    @property
    def next_msn(self) -> int:
        return self.segments[-1].msn + 1 if self.segments else 0

    @property
    def end_samples(self) -> int:
        last = self.segments[-1] if self.segments else None
        return last.start_samples + last.duration_samples if last else 0

    @property
    def next_epoch(self) -> int:
        return self.epochs[-1] + 1 if self.epochs else 0

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT_VERSION,
                "space_id": self.space_id,
                "sample_rate_hz": self.sample_rate_hz,
                "ended": self.ended,
                "epochs": list(self.epochs),
                "segments": [asdict(s) for s in self.segments],
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = orjson.loads(data)
        if raw.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown manifest format {raw.get('format')!r}")
        return cls(
            space_id=str(raw["space_id"]),
            sample_rate_hz=int(raw["sample_rate_hz"]),
            ended=bool(raw["ended"]),
            epochs=tuple(int(e) for e in raw["epochs"]),
            segments=tuple(SegmentRecord(**s) for s in raw["segments"]),
        )


def check_space_id(space_id: str) -> str:
    """A space id safe to use as a directory name, else BadRequest."""
    if not SPACE_ID_RE.fullmatch(space_id):
        raise BadRequest(
            "That is not a space id: use the lowercase letters and digits from the share link."
        )
    return space_id


def write_durable(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically and durably (temp, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordingStore:
    """The recording of one space. Methods block: run them in a thread."""

    def __init__(self, recordings_dir: Path, space_id: str) -> None:
        self.space_id = check_space_id(space_id)
        self.dir = recordings_dir / space_id

    def load(self) -> Manifest | None:
        """The durable manifest, or None when nothing was recorded yet."""
        try:
            data = (self.dir / MANIFEST).read_bytes()
        except FileNotFoundError:
            return None
        return Manifest.from_json(data)

    def manifest_mtime_ns(self) -> int | None:
        try:
            return (self.dir / MANIFEST).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def create(self, sample_rate_hz: int) -> Manifest:
        """Load the manifest, or start an empty one (not written until an epoch begins)."""
        manifest = self.load()
        if manifest is not None:
            return manifest
        self.dir.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.dir.parent)
        return Manifest(self.space_id, sample_rate_hz, False, (), ())

    def begin_epoch(self, manifest: Manifest, epoch: int, init_segment: bytes) -> Manifest:
        """Write the epoch's init segment, then the manifest naming the epoch."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_durable(self.init_path(epoch), init_segment)
        updated = Manifest(
            manifest.space_id,
            manifest.sample_rate_hz,
            manifest.ended,
            (*manifest.epochs, epoch),
            manifest.segments,
        )
        write_durable(self.dir / MANIFEST, updated.to_json())
        return updated

    def append_segment(self, manifest: Manifest, record: SegmentRecord, data: bytes) -> Manifest:
        """Make the segment durable, then the manifest that names it."""
        if manifest.segments and record.msn != manifest.segments[-1].msn + 1:
            raise ValueError(f"segment {record.msn} does not follow {manifest.segments[-1].msn}")
        write_durable(self.segment_path(record.msn), data)
        updated = Manifest(
            manifest.space_id,
            manifest.sample_rate_hz,
            manifest.ended,
            manifest.epochs,
            (*manifest.segments, record),
        )
        write_durable(self.dir / MANIFEST, updated.to_json())
        return updated

    def mark_ended(self, manifest: Manifest) -> Manifest:
        updated = Manifest(
            manifest.space_id, manifest.sample_rate_hz, True, manifest.epochs, manifest.segments
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        write_durable(self.dir / MANIFEST, updated.to_json())
        return updated

    def init_path(self, epoch: int) -> Path:
        return self.dir / f"init-{int(epoch)}.mp4"

    def segment_path(self, msn: int) -> Path:
        return self.dir / f"seg-{int(msn):08d}.m4s"

    def read_segment(self, msn: int) -> bytes | None:
        try:
            return self.segment_path(msn).read_bytes()
        except FileNotFoundError:
            return None

    def read_init(self, epoch: int) -> bytes | None:
        try:
            return self.init_path(epoch).read_bytes()
        except FileNotFoundError:
            return None

    def m4a_path(self) -> Path:
        return self.dir / M4A

    def build_m4a(self) -> Path:
        """The whole ended recording as one progressive MP4 (``recording.m4a``),
        remuxed (not re-encoded) from the segments; built once, then reused."""
        target = self.m4a_path()
        if target.exists():
            return target
        manifest = self.load()
        if manifest is None:
            raise NotFound("This space has no recording.")
        if not manifest.ended:
            raise Conflict(
                "The space is still live: the recording file is ready once the host ends it."
            )
        if not manifest.segments:
            raise NotFound("This space ended before any audio was recorded.")
        # All epochs share codec parameters (the AudioSpecificConfig depends on
        # rate and channels only) and timestamps continue across epochs, so the
        # first init followed by every segment is one valid fragmented file.
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=".recording.", suffix=".fmp4.tmp")
        os.close(fd)
        joined = Path(name)
        fd, name = tempfile.mkstemp(dir=self.dir, prefix=".recording.", suffix=".m4a.tmp")
        os.close(fd)
        tmp = Path(name)
        with joined.open("wb") as out:
            init = self.read_init(manifest.segments[0].epoch)
            if init is None:
                raise NotFound("The recording's init segment is missing.")
            out.write(init)
            for seg in manifest.segments:
                path = self.segment_path(seg.msn)
                with path.open("rb") as src:
                    shutil.copyfileobj(src, out)
        try:
            _remux(joined, tmp)
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            fsync_dir(self.dir)
        finally:
            joined.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
        log.info("recording of %s built: %s", self.space_id, target)
        return target


def _remux(source: Path, target: Path) -> None:
    """Copy the audio packets of ``source`` into a faststart MP4 (.m4a)."""
    with (
        av.open(str(source)) as src,
        av.open(str(target), "w", format="ipod", options={"movflags": "+faststart"}) as dst,
    ):
        in_stream = src.streams.audio[0]
        out_stream = dst.add_stream_from_template(in_stream)
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            dst.mux(packet)
