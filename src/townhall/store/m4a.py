"""``recording.m4a`` ready the moment a talk ends, whatever its length.

A remux into a progressive MP4 reads and rewrites every packet (seconds for an
hour). The recorded segments are already CMAF fragments of one track that
share one init segment (all epochs have the same codec parameters, and
timestamps continue across epochs), so the init segment followed by every
segment *is* a valid fragmented MP4 file. This module writes exactly that: a
sequential copy of the files (tens of milliseconds for an hour of audio), with
the init segment's movie and track durations and an ``mehd`` (movie extends
header) filled in, so players show the length and can seek.

Blocking file I/O: call :func:`build_fragmented` from a worker thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

from townhall.errors import NotFound
from townhall.media.cmaf import Box, find_box, iter_boxes
from townhall.store.recordings import RecordingNotFinal, RecordingStore, fsync_dir

log = logging.getLogger("townhall.media")

FRAGMENTED_M4A = "recording-fragmented.m4a"


def _full_box_version(data: bytes | bytearray, box: Box) -> int:
    return data[box.body_offset]


def _timescale_and_duration_at(data: bytes | bytearray, box: Box) -> tuple[int, int]:
    """Offsets of (timescale, duration) in an mvhd or mdhd box (v0 or v1)."""
    body = box.body_offset + 4  # version + flags
    if _full_box_version(data, box) == 1:
        return body + 16, body + 20
    return body + 8, body + 12


def _write_duration(buf: bytearray, box: Box, offset: int, value: int) -> None:
    if _full_box_version(buf, box) == 1:
        struct.pack_into(">Q", buf, offset, value)
    else:
        struct.pack_into(">I", buf, offset, min(value, 0xFFFFFFFF))


def with_duration(init: bytes, duration_samples: int, sample_rate_hz: int) -> bytes:
    """The init segment with the whole recording's duration written in.

    Sets mvhd, tkhd and mdhd durations and adds (or updates) ``moov/mvex/mehd``.
    Raises ValueError for an init segment without moov/mvhd/trak.
    """
    buf = bytearray(init)
    moov = find_box(buf, "moov")
    mvhd = find_box(buf, "moov/mvhd")
    if moov is None or mvhd is None:
        raise ValueError("init segment lacks moov/mvhd")
    ts_at, dur_at = _timescale_and_duration_at(buf, mvhd)
    (movie_timescale,) = struct.unpack_from(">I", buf, ts_at)
    movie_duration = duration_samples * movie_timescale // max(1, sample_rate_hz)
    _write_duration(buf, mvhd, dur_at, movie_duration)
    traks = [b for b in iter_boxes(buf, moov.body_offset, moov.end) if b.type == "trak"]
    if not traks:
        raise ValueError("init segment lacks a trak")
    for trak in traks:
        tkhd = find_box(buf, "tkhd", trak.body_offset, trak.end)
        if tkhd is not None:
            # tkhd: version/flags, ctime, mtime, track id, reserved, duration
            at = tkhd.body_offset + 4 + (28 if _full_box_version(buf, tkhd) == 1 else 16)
            _write_duration(buf, tkhd, at, movie_duration)
        mdhd = find_box(buf, "mdia/mdhd", trak.body_offset, trak.end)
        if mdhd is not None:
            ts_at, dur_at = _timescale_and_duration_at(buf, mdhd)
            (media_timescale,) = struct.unpack_from(">I", buf, ts_at)
            media_duration = duration_samples * media_timescale // max(1, sample_rate_hz)
            _write_duration(buf, mdhd, dur_at, media_duration)
    mvex = find_box(buf, "moov/mvex")
    if mvex is None:
        return bytes(buf)
    mehd = find_box(buf, "mehd", mvex.body_offset, mvex.end)
    if mehd is not None:
        at = mehd.body_offset + 4
        _write_duration(buf, mehd, at, movie_duration)
        return bytes(buf)
    # a version 1 mehd (64-bit duration) as the first child of mvex
    new = struct.pack(">I4sB3xQ", 20, b"mehd", 1, movie_duration)
    if moov.header_bytes != 8 or mvex.header_bytes != 8:
        raise ValueError("large-size moov/mvex boxes are not expected in an init segment")
    struct.pack_into(">I", buf, moov.offset, moov.size + len(new))
    struct.pack_into(">I", buf, mvex.offset, mvex.size + len(new))
    buf[mvex.body_offset : mvex.body_offset] = new
    return bytes(buf)


def build_fragmented(store: RecordingStore) -> Path:
    """The ended recording as one fragmented MP4 file, built once and reused.

    Raises NotFound (no recording, no audio) or RecordingNotFinal (409: not ended yet).
    """
    target = store.dir / FRAGMENTED_M4A
    if target.exists():
        return target
    manifest = store.load()
    if manifest is None:
        raise NotFound("This space has no recording.")
    if not manifest.ended:
        raise RecordingNotFinal()
    if not manifest.segments:
        raise NotFound("This space ended before any audio was recorded.")
    if manifest.missing:
        # stretches that could not be recorded are filled with silence by the
        # remux, so the file's timeline stays the talk's (rare: a long outage)
        return store.build_m4a()
    init = store.read_init(manifest.segments[0].epoch)
    if init is None:
        raise NotFound("The recording's init segment is missing.")
    total = manifest.end_samples - manifest.segments[0].start_samples
    header = with_duration(init, total, manifest.sample_rate_hz)
    fd, name = tempfile.mkstemp(dir=store.dir, prefix=".recording.", suffix=".m4a.tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            for seg in manifest.segments:
                try:
                    with store.segment_path(seg.msn).open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                except FileNotFoundError:
                    log.warning("recording of %s: segment %d is missing", store.space_id, seg.msn)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        fsync_dir(store.dir)
    finally:
        tmp.unlink(missing_ok=True)
    log.info(
        "recording of %s ready: %s (%d segments)", store.space_id, target, len(manifest.segments)
    )
    return target
