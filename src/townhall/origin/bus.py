"""The segment bus's wire format: what the owner of a live room tells every
other node, as Redis Stream entries. Pure: no sockets, no event loop.

One stream per live room carries, in order, the calls the owner's program
makes on its :class:`~townhall.origin.window.LiveWindow`:

- :class:`EpochStart` a run of the program began (epoch, first msn, the init
  segment and the window's shape);
- :class:`PartPublished` ``publish_part(part, program_date_time_s)``;
- :class:`SegmentEnded` ``end_segment(end)``, with the record the owner's
  window made (a follower checks that its own window made the same);
- :class:`Closed` ``close(ended=...)``.

An entry is three fields: ``k`` (kind, one byte), ``h`` (a small JSON
header) and ``d`` (the bytes: a part, an init segment; empty otherwise). The
bus adapter adds ``s``, the entry's sequence number in the room (1, 2, ...,
assigned by Redis in the same script that appends the entry), so a reader
sees any gap: entries trimmed before it read them, or a Redis that lost its
data.

``decode(encode(m))`` is ``m`` for every message; malformed entries raise
:class:`BusFormatError` with what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import orjson

from townhall.errors import TownhallError
from townhall.media.cmaf import Part, SegmentEnd
from townhall.store.recordings import SegmentRecord


class BusFormatError(TownhallError):
    """A bus entry that this version cannot read (a bug or a foreign writer)."""


@dataclass(frozen=True, slots=True)
class EpochStart:
    epoch: int
    first_msn: int
    init_segment: bytes
    sample_rate_hz: int
    part_duration_samples: int
    segment_parts: int


@dataclass(frozen=True, slots=True)
class PartPublished:
    part: Part
    program_date_time_s: float


@dataclass(frozen=True, slots=True)
class SegmentEnded:
    end: SegmentEnd
    record: SegmentRecord


@dataclass(frozen=True, slots=True)
class Closed:
    ended: bool


Message = EpochStart | PartPublished | SegmentEnded | Closed

KIND_EPOCH = b"e"
KIND_PART = b"p"
KIND_END = b"s"
KIND_CLOSED = b"c"


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry as a reader sees it: its sequence number and message."""

    seq: int
    message: Message


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the bus holds for a room, read at one instant: the current epoch's
    start (None if the bus has none), every segment record, the retained
    entries (oldest first) and the last sequence number."""

    meta: EpochStart | None
    records: tuple[SegmentRecord, ...]
    entries: tuple[Entry, ...]
    last_seq: int


def encode(message: Message) -> tuple[bytes, bytes, bytes]:
    """(kind, header, data) of ``message``."""
    if isinstance(message, PartPublished):
        p = message.part
        header = [p.msn, p.index, p.start_samples, p.duration_samples, message.program_date_time_s]
        return KIND_PART, orjson.dumps(header), p.data
    if isinstance(message, SegmentEnded):
        e = message.end
        body = {
            "end": [e.msn, e.start_samples, e.duration_samples, e.part_count],
            "record": asdict(message.record),
        }
        return KIND_END, orjson.dumps(body), b""
    if isinstance(message, EpochStart):
        header = [
            message.epoch,
            message.first_msn,
            message.sample_rate_hz,
            message.part_duration_samples,
            message.segment_parts,
        ]
        return KIND_EPOCH, orjson.dumps(header), message.init_segment
    return KIND_CLOSED, orjson.dumps({"ended": message.ended}), b""


def encode_record(record: SegmentRecord) -> bytes:
    """A segment record as kept in the room's list of records."""
    return orjson.dumps(asdict(record))


def decode_record(raw: bytes) -> SegmentRecord:
    try:
        return SegmentRecord(**orjson.loads(raw))
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise BusFormatError(f"bus segment record is malformed: {exc}") from None


def decode(kind: bytes, header: bytes, data: bytes) -> Message:
    """The message of one entry's fields, or BusFormatError."""
    try:
        raw = orjson.loads(header)
        if kind == KIND_PART:
            msn, index, start, duration, pdt = raw
            return PartPublished(
                Part(int(msn), int(index), bytes(data), int(start), int(duration)), float(pdt)
            )
        if kind == KIND_END:
            msn, start, duration, count = raw["end"]
            return SegmentEnded(
                SegmentEnd(int(msn), int(start), int(duration), int(count)),
                SegmentRecord(**raw["record"]),
            )
        if kind == KIND_EPOCH:
            epoch, first_msn, rate, part_samples, parts = raw
            return EpochStart(
                int(epoch), int(first_msn), bytes(data), int(rate), int(part_samples), int(parts)
            )
        if kind == KIND_CLOSED:
            return Closed(bool(raw["ended"]))
    except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
        raise BusFormatError(f"bus entry of kind {kind!r} is malformed: {exc}") from None
    raise BusFormatError(f"bus entry has unknown kind {kind!r}")


def decode_entry(fields: Mapping[bytes, bytes]) -> Entry:
    """An entry from a stream entry's field map (``s``, ``k``, ``h``, ``d``)."""
    try:
        seq = int(fields[b"s"])
        kind, header, data = fields[b"k"], fields[b"h"], fields.get(b"d", b"")
    except (KeyError, ValueError) as exc:
        raise BusFormatError(f"bus entry lacks a field or sequence number: {exc}") from None
    return Entry(seq, decode(kind, header, data))
