"""Durable recordings of spaces: ``<recordings_dir>/<space_id>/``.

Layout::

    init-<epoch>.mp4      fMP4 init segment of each epoch (a run of the program)
    seg-<msn>.m4s         each finished segment (moof+mdat parts, as served)
    manifest.json         the journal: epochs, segments (msn, times, program
                          date-time, discontinuity), ended flag
    recording.m4a         the whole talk remuxed into one file, built once ended

Every file is written durably: temp file, fsync, rename, fsync of the
directory. The program's writes go through a :class:`DirectoryWriter`, which
keeps the directory open and a few temp files opened ahead, so a write needs no
new descriptor: a connection flood that exhausts the process's descriptors
(EMFILE) cannot stop the recording. A segment's file is durable before the manifest names it, so after
a crash (kill -9) the manifest lists only whole segments; the segment that was
being built is lost, nothing else. The manifest is rewritten whole (a few
hundred bytes per segment, one write per segment) rather than appended to, so
it is never half-written.

Segments that could not be written (the disk stayed full longer than the
program's backlog could hold) are listed in the manifest's ``missing`` list,
and the next recorded segment carries a discontinuity: the recording says
what it lacks instead of losing it silently. ``recording.m4a`` fills each
missing stretch with silence so its timeline is the talk's.

Blocking file I/O: call these methods from a worker thread
(``asyncio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import orjson

from townhall.errors import BadRequest, Conflict, NotFound
from townhall.media.encoder import AAC_FRAME_SAMPLES, AacEncoder

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


class RecordingNotFinal(Conflict):
    """409: this copy of the recording is still being written. While the talk is
    live that is the answer; once the host has ended it, a copy a moment behind
    (a follower that has not heard the end yet) is waited for instead
    (``origin/asgi.py``)."""

    DETAIL = (
        "The space is still live: the recording file is ready once the host ends it. "
        "Listen live at live.m3u8."
    )

    def __init__(self, detail: str = DETAIL) -> None:
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class Manifest:
    """The recording's journal. ``missing`` lists the segments that were live
    but could not be recorded; msns of ``segments`` and ``missing`` together
    are contiguous."""

    space_id: str
    sample_rate_hz: int
    ended: bool
    epochs: tuple[int, ...]
    segments: tuple[SegmentRecord, ...]
    missing: tuple[SegmentRecord, ...] = ()

    def _last(self) -> SegmentRecord | None:
        candidates = [r[-1] for r in (self.segments, self.missing) if r]
        return max(candidates, key=lambda r: r.msn) if candidates else None

    @property
    def next_msn(self) -> int:
        last = self._last()
        return last.msn + 1 if last else 0

    @property
    def end_samples(self) -> int:
        last = self._last()
        return last.start_samples + last.duration_samples if last else 0

    @property
    def next_epoch(self) -> int:
        return self.epochs[-1] + 1 if self.epochs else 0

    @property
    def missing_samples(self) -> int:
        return sum(r.duration_samples for r in self.missing)

    def with_missing(self, record: SegmentRecord) -> Manifest:
        """This manifest with ``record`` listed as missing (nothing written)."""
        if record.msn != self.next_msn and self._last() is not None:
            raise ValueError(f"missing segment {record.msn} does not follow {self.next_msn - 1}")
        return replace(self, missing=(*self.missing, record))

    def missing_ranges(self) -> list[tuple[float, float]]:
        """The missing stretches as (start_s, duration_s), adjacent ones merged."""
        ranges: list[list[int]] = []
        for r in self.missing:
            if ranges and ranges[-1][0] + ranges[-1][1] == r.start_samples:
                ranges[-1][1] += r.duration_samples
            else:
                ranges.append([r.start_samples, r.duration_samples])
        sr = self.sample_rate_hz
        return [(start / sr, duration / sr) for start, duration in ranges]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "format": FORMAT_VERSION,
                "space_id": self.space_id,
                "sample_rate_hz": self.sample_rate_hz,
                "ended": self.ended,
                "epochs": list(self.epochs),
                "segments": [asdict(s) for s in self.segments],
                "missing": [asdict(s) for s in self.missing],
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
            missing=tuple(SegmentRecord(**s) for s in raw.get("missing", ())),
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


WRITE_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EMFILE: "the server has run out of file descriptors",
    errno.ENFILE: "the system has run out of file descriptors",
    errno.EROFS: "the disk is read-only",
    errno.EIO: "the disk reports input/output errors",
    errno.EACCES: "the recordings folder is not writable",
}


def write_cause(exc: BaseException) -> str:
    """A short sentence (no leading capital) for why a write failed."""
    if isinstance(exc, OSError) and exc.errno in WRITE_CAUSES:
        return WRITE_CAUSES[exc.errno]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"an unexpected {type(exc).__name__}"


class DirectoryWriter:
    """Durable writes into one directory that need no new descriptor.

    The directory stays open (for ``fsync`` and ``*at`` calls) and ``spares``
    empty temp files are opened ahead; a write fills one, fsyncs it, renames it
    over the target and fsyncs the directory (the guarantees of
    :func:`write_durable`), then opens the next spare. If no spare could be
    opened ahead, the write opens its temp file itself. Not thread-safe: one
    writer per directory, used by one thread at a time. ``close`` when done.
    """

    def __init__(self, directory: Path, *, spares: int = 2) -> None:
        self.dir = directory
        self.spares = spares
        self._dir_fd: int | None = None
        self._free: list[tuple[str, int]] = []
        self._serial = 0

    def write(self, name: str, data: bytes) -> None:
        """Replace ``dir/name`` atomically and durably; raises OSError on failure
        (nothing half-written is left under ``name``)."""
        dir_fd = self._open_dir()
        self._refill()
        tmp, fd = self._free.pop(0) if self._free else self._open_temp(dir_fd)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_at(tmp, dir_fd)
            raise
        os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
        self._refill()

    def close(self) -> None:
        for tmp, fd in self._free:
            os.close(fd)
            if self._dir_fd is not None:
                _unlink_at(tmp, self._dir_fd)
        self._free.clear()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _open_dir(self) -> int:
        if self._dir_fd is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            for leftover in self.dir.glob(".spare-*.tmp"):  # from a crashed run
                leftover.unlink(missing_ok=True)
        return self._dir_fd

    def _open_temp(self, dir_fd: int) -> tuple[str, int]:
        self._serial += 1
        tmp = f".spare-{os.getpid()}-{self._serial}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
        return tmp, fd

    def _refill(self) -> None:
        assert self._dir_fd is not None
        while len(self._free) < self.spares:
            try:
                self._free.append(self._open_temp(self._dir_fd))
            except OSError as exc:  # no descriptor to spare now: the next write tries again
                log.debug("could not open a spare file in %s: %s", self.dir, exc)
                return


def _unlink_at(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)


class RecordingStore:
    """The recording of one space. Methods block: run them in a thread.

    Writes go through ``writer`` (by default a :class:`DirectoryWriter` on the
    space's folder; tests pass one that fails on purpose). Call ``close`` when
    the program is done writing.
    """

    def __init__(
        self, recordings_dir: Path, space_id: str, *, writer: DirectoryWriter | None = None
    ) -> None:
        self.space_id = check_space_id(space_id)
        self.dir = recordings_dir / space_id
        self.writer = writer or DirectoryWriter(self.dir)

    def close(self) -> None:
        """Release the writer's descriptors (reads keep working)."""
        self.writer.close()

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
        self.writer.write(self.init_path(epoch).name, init_segment)
        updated = replace(manifest, epochs=(*manifest.epochs, epoch))
        self.writer.write(MANIFEST, updated.to_json())
        return updated

    def append_segment(self, manifest: Manifest, record: SegmentRecord, data: bytes) -> Manifest:
        """Make the segment durable, then the manifest that names it. A segment
        that follows a missing one is recorded with a discontinuity."""
        if manifest.next_msn and record.msn != manifest.next_msn:
            raise ValueError(f"segment {record.msn} does not follow {manifest.next_msn - 1}")
        if manifest.missing and manifest.missing[-1].msn == record.msn - 1:
            record = replace(record, discontinuity=True)
        self.writer.write(self.segment_path(record.msn).name, data)
        updated = replace(manifest, segments=(*manifest.segments, record))
        self.writer.write(MANIFEST, updated.to_json())
        return updated

    def mark_ended(self, manifest: Manifest) -> Manifest:
        updated = replace(manifest, ended=True)
        self.writer.write(MANIFEST, updated.to_json())
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
            raise RecordingNotFinal()
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
            _remux(joined, tmp, manifest)
            with tmp.open("rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            fsync_dir(self.dir)
        finally:
            joined.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
        log.info("recording of %s built: %s", self.space_id, target)
        return target


def _remux(source: Path, target: Path, manifest: Manifest) -> None:
    """Copy the audio packets of ``source`` into a faststart MP4 (.m4a). Holes
    in the timeline (segments that could not be recorded) are filled with
    silent AAC frames, and the file's comment says what is missing."""
    with (
        av.open(str(source)) as src,
        av.open(str(target), "w", format="ipod", options={"movflags": "+faststart"}) as dst,
    ):
        in_stream = src.streams.audio[0]
        out_stream = dst.add_stream_from_template(in_stream)
        ranges = manifest.missing_ranges()
        if ranges:
            dst.metadata["comment"] = "not recorded: " + ", ".join(
                f"{start:.1f}-{start + duration:.1f} s" for start, duration in ranges
            )
        silence: bytes | None = None
        expected: int | None = None
        for packet in src.demux(in_stream):
            if packet.dts is None:
                continue
            if expected is not None and packet.dts > expected:
                silence = silence or _silent_frame(manifest.sample_rate_hz)
                assert packet.time_base is not None
                _mux_silence(dst, out_stream, packet.time_base, silence, expected, packet.dts)
            expected = packet.dts + (packet.duration or AAC_FRAME_SAMPLES)
            packet.stream = out_stream
            dst.mux(packet)


def _silent_frame(sample_rate_hz: int) -> bytes:
    """One AAC-LC frame of silence with the program's codec parameters."""
    encoder = AacEncoder(sample_rate_hz=sample_rate_hz, bitrate_bps=32000)
    packets = encoder.encode(np.zeros(4 * AAC_FRAME_SAMPLES, dtype=np.int16)) + encoder.flush()
    return packets[len(packets) // 2].data


def _mux_silence(
    dst: av.container.OutputContainer,
    stream: av.stream.Stream,
    time_base: Fraction,
    frame: bytes,
    start: int,
    stop: int,
) -> None:
    at = start
    while at < stop:
        pkt = av.Packet(frame)
        pkt.stream = stream
        pkt.time_base = time_base
        pkt.pts = pkt.dts = at
        pkt.duration = min(AAC_FRAME_SAMPLES, stop - at)
        dst.mux(pkt)
        at += AAC_FRAME_SAMPLES


# -- copies of one recording on this machine (HTTP workers) ----------------------

_COPY_RANKS: dict[Path, tuple[int, tuple[int, int, int]]] = {}  # manifest -> (mtime_ns, rank)
_MAX_COPY_RANKS = 4096


def _copy_rank(store: RecordingStore) -> tuple[int, int, int] | None:
    """How complete ``store``'s copy is: (ended, segments, -missing); None without one."""
    path = store.dir / MANIFEST
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        return None
    hit = _COPY_RANKS.get(path)
    if hit is not None and hit[0] == mtime_ns:
        return hit[1]
    try:
        manifest = store.load()
    except (OSError, ValueError, KeyError, TypeError):
        return None  # half-written or foreign: not a copy to serve
    if manifest is None:
        return None
    rank = (int(manifest.ended), len(manifest.segments), -len(manifest.missing))
    if len(_COPY_RANKS) >= _MAX_COPY_RANKS:
        _COPY_RANKS.clear()
    _COPY_RANKS[path] = (mtime_ns, rank)
    return rank


def best_copy(own: Path, copies: tuple[Path, ...], space_id: str) -> RecordingStore:
    """The recording of ``space_id`` to serve: this node's own (under ``own``)
    when it is final and whole, else the most complete of it and the copies
    under ``copies`` (other recording folders on this machine, e.g. the other
    HTTP workers'), ended before live, then most segments, then fewest
    missing; a tie keeps this node's own. Blocks (stat, and a manifest read
    when one changed): run it in a thread off the event loop."""
    mine = RecordingStore(own, space_id)
    if not copies:
        return mine
    rank = _copy_rank(mine)
    if rank is not None and rank[0] and rank[2] == 0:
        return mine
    best, best_rank = mine, rank
    for directory in copies:
        if directory == own:
            continue
        other = RecordingStore(directory, space_id)
        other_rank = _copy_rank(other)
        if other_rank is not None and (best_rank is None or other_rank > best_rank):
            best, best_rank = other, other_rank
    return best


async def served_copy(own: Path, copies: tuple[Path, ...], space_id: str) -> RecordingStore:
    """:func:`best_copy` off the event loop (at once when there are no copies)."""
    if not copies:
        return RecordingStore(own, space_id)
    return await asyncio.to_thread(best_copy, own, copies, space_id)
