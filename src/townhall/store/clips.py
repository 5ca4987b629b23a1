"""Clips: up to a minute of a space's audio cut from its recorded segments
into a standalone .m4a, without re-encoding (AAC packets are copied, so a cut
falls on a 21 ms frame boundary), stored beside the recording.

Blocking (PyAV and file writes): call from a thread.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import orjson

from townhall.errors import NotFound, ValidationFailed
from townhall.store.recordings import Manifest, SegmentRecord, fsync_dir

CLIP_ID_RE = re.compile(r"^[a-z0-9]{12}$")


@dataclass(frozen=True, slots=True)
class ClipInfo:
    id: str
    space_id: str
    start_s: float
    duration_s: float
    created_at_s: float


def check_clip_id(clip_id: str) -> str:
    if not CLIP_ID_RE.fullmatch(clip_id):
        raise NotFound("There is no clip with this id; check the link.")
    return clip_id


def new_clip_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(12))


def clips_dir(recording_dir: Path) -> Path:
    return recording_dir / "clips"


def pick_segments(
    segments: tuple[SegmentRecord, ...] | list[SegmentRecord],
    sample_rate_hz: int,
    start_s: float,
    duration_s: float,
) -> tuple[list[SegmentRecord], int, int]:
    """The segments (of one epoch) holding [start_s, start_s + duration_s)
    from the recording's start, and that range in samples. Raises
    ValidationFailed with a sentence when the range is outside the recording."""
    if not segments:
        raise ValidationFailed("There is no audio to clip yet; try again in a few seconds.")
    origin = segments[0].start_samples
    end_total = segments[-1].start_samples + segments[-1].duration_samples
    a = origin + round(start_s * sample_rate_hz)
    b = a + round(duration_s * sample_rate_hz)
    if a < origin or b > end_total + sample_rate_hz // 10:
        have_s = (end_total - origin) / sample_rate_hz
        raise ValidationFailed(
            f"The clip must lie within the {have_s:.1f} s recorded so far (0 to {have_s:.1f} s).",
            extra={"errors": [{"field": "start_s", "message": "outside the recording"}]},
        )
    chosen = [
        r for r in segments if r.start_samples + r.duration_samples > a and r.start_samples < b
    ]
    if not chosen:
        raise ValidationFailed(
            "That stretch of the talk was not recorded, so it cannot be clipped."
        )
    epoch = chosen[0].epoch
    same = [r for r in chosen if r.epoch == epoch]
    # the talk restarted (a discontinuity) inside the clip: keep the first part
    b = min(b, same[-1].start_samples + same[-1].duration_samples)
    return same, a, b


def cut_clip(
    manifest: Manifest,
    target: Path,
    start_s: float,
    duration_s: float,
    *,
    read_init: Callable[[int], bytes | None],
    read_segment: Callable[[int], bytes | None],
) -> float:
    """Write the clip to ``target`` (durably); returns its duration in seconds."""
    rate = manifest.sample_rate_hz
    chosen, a, b = pick_segments(manifest.segments, rate, start_s, duration_s)
    init = read_init(chosen[0].epoch)
    if init is None:
        raise ValidationFailed("That part of the recording is not readable; try a later moment.")
    parts = [init]
    for record in chosen:
        data = read_segment(record.msn)
        if data is None:
            raise ValidationFailed(
                "That part of the talk is still being saved; try again in a few seconds."
            )
        parts.append(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "joined.mp4"
        joined.write_bytes(b"".join(parts))
        out = Path(tmp) / "clip.m4a"
        kept = _copy_range(joined, out, a, b)
        if kept == 0:
            raise ValidationFailed("There is no audio in that stretch to clip.")
        with out.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(out, target)
    fsync_dir(target.parent)
    return kept / rate


def _copy_range(source: Path, target: Path, a: int, b: int) -> int:
    """Copy the AAC packets starting in [a, b) (track timescale = sample rate)
    into a faststart .m4a starting at 0; returns the samples kept."""
    kept = 0
    with (
        av.open(str(source)) as src,
        av.open(str(target), "w", format="ipod", options={"movflags": "+faststart"}) as dst,
    ):
        in_stream = src.streams.audio[0]
        out_stream = dst.add_stream_from_template(in_stream)
        first: int | None = None
        for packet in src.demux(in_stream):
            if packet.dts is None or packet.pts is None:
                continue
            if packet.pts < a or packet.pts >= b:
                continue
            if first is None:
                first = packet.pts
            packet.pts -= first
            packet.dts -= first
            kept += packet.duration or 1024
            packet.stream = out_stream
            dst.mux(packet)
    return kept


def save_info(directory: Path, info: ClipInfo) -> None:
    path = directory / f"{info.id}.json"
    data = orjson.dumps(
        {
            "id": info.id,
            "space_id": info.space_id,
            "start_s": info.start_s,
            "duration_s": info.duration_s,
            "created_at_s": info.created_at_s,
        }
    )
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_info(directory: Path, clip_id: str) -> ClipInfo | None:
    try:
        item = orjson.loads((directory / f"{check_clip_id(clip_id)}.json").read_bytes())
    except FileNotFoundError:
        return None
    return ClipInfo(
        item["id"], item["space_id"], item["start_s"], item["duration_s"], item["created_at_s"]
    )


def delete_clip(directory: Path, clip_id: str) -> bool:
    found = False
    for suffix in (".m4a", ".json"):
        try:
            (directory / f"{check_clip_id(clip_id)}{suffix}").unlink()
            found = True
        except FileNotFoundError:
            pass
    return found
