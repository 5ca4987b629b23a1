"""No dead air at the end of a recording (issue 12): a space that ends itself
after its host left (``host_absent_end_s``) would otherwise end its replay
with minutes of silence. The program notes where the last audible frame ended
(:class:`AudioExtent`); when the talk ends, the recording keeps what comes
before that point plus ``TAIL_S`` and drops the rest: whole segments after it,
and the parts of the segment it falls in that come after it (a segment is its
parts' moof+mdat pairs one after the other, so cutting at a part boundary
leaves a valid segment). What is left of silence is at most ``TAIL_S`` plus
one part.

Pure: no I/O here (``live/recorder.py`` writes the result).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from townhall.media.cmaf import iter_boxes
from townhall.store.recordings import SegmentRecord

# silence kept after the last audible frame (a natural pause, not dead air)
TAIL_S = 1.0
# a frame is audible when its peak is above this (int16; about -54 dBFS): the
# mix of nobody is exact zeros, a connected microphone's room noise is not
AUDIBLE_PEAK = 64


class AudioExtent:
    """Where the last audible frame of a program ended, in samples on the
    media timeline (None before any)."""

    def __init__(self) -> None:
        self.last_audible_end: int | None = None

    def feed(self, pcm: np.ndarray, start_samples: int) -> None:
        if len(pcm) and int(np.max(np.abs(pcm.astype(np.int32)))) > AUDIBLE_PEAK:
            self.last_audible_end = start_samples + len(pcm)


@dataclass(frozen=True, slots=True)
class TailCut:
    """What to keep: ``segments`` (the last one possibly shortened), and for a
    shortened one its msn and how many parts stay."""

    segments: tuple[SegmentRecord, ...]
    shortened: tuple[int, int] | None  # (msn, parts kept)


def plan_tail(
    segments: tuple[SegmentRecord, ...], keep_until_samples: int, part_samples: int
) -> TailCut | None:
    """The cut that ends the recording at ``keep_until_samples`` (rounded up to
    a part); None when nothing would be dropped. At least the first segment
    is always kept (a recording of only silence stays a valid recording)."""
    kept: list[SegmentRecord] = []
    shortened = None
    for record in segments:
        if kept and record.start_samples >= keep_until_samples:
            break
        end = record.start_samples + record.duration_samples
        if end > keep_until_samples and part_samples > 0:
            inside = keep_until_samples - record.start_samples
            parts = max(1, -(-inside // part_samples))
            if parts < record.part_count:
                duration = min(record.duration_samples, parts * part_samples)
                record = replace(record, duration_samples=duration, part_count=parts)
                shortened = (record.msn, parts)
        kept.append(record)
    if len(kept) == len(segments) and shortened is None:
        return None
    return TailCut(tuple(kept), shortened)


def first_parts(segment: bytes, parts: int) -> bytes:
    """The bytes of ``segment`` up to the end of its ``parts``-th moof+mdat
    pair (any boxes before the first moof, such as styp, are kept)."""
    seen = 0
    for box in iter_boxes(segment):
        if box.type == "mdat":
            seen += 1
            if seen == parts:
                return segment[: box.end]
    raise ValueError(f"the segment has {seen} parts, fewer than {parts}")
