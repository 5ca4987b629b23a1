"""CMAF packaging: AAC packets into an fMP4 init segment and media parts
(moof+mdat), grouped into segments, for Low-Latency HLS.

Pure: no event loop, no sockets. The container is written by PyAV's mp4 muxer
(FFmpeg movenc) into memory with ``empty_moov+default_base_moof`` and
``frag_duration`` set to the part duration; the byte stream is split at
top-level box boundaries: ``ftyp+moov`` is the init segment, each
``moof+mdat`` pair is one part. Every fragment is checked (tfdt, trun sample
count) against the timeline we expect, so a muxer that cut elsewhere would
raise rather than publish a wrong part. movenc emits a fragment when the first
packet of the next one arrives, so a part is published one AAC frame (21 ms)
after its last sample was encoded; ``close`` flushes the last one.

Timeline: the track timescale is the sample rate; packet ``k`` of a packager
has decode time ``start_samples + 1024 * k``. With ``frag_discont``,
``avoid_negative_ts=disabled`` and no edit list, movenc writes these times
unchanged into tfdt, so a packager started after a restart with
``start_samples`` = end of the recording continues tfdt where the last durable
segment stopped (the playlist still marks the new epoch with a DISCONTINUITY,
since wall-clock time jumped and the encoder restarted).

Defaults (settings ``part_ms`` = 500, ``segment_parts`` = 8): Apple's LL-HLS
authoring guidance asks for parts well under a second (its examples use
200 ms-1 s; 1-2 s segments are too short for CDN efficiency, 6 s is the
classic HLS value) and PART-HOLD-BACK of at least 3 part targets. 500 ms
rounds up to 24 AAC frames = 512 ms parts, so PART-HOLD-BACK = 1.536 s; with
~0.3 s of encode, packaging and fetch that keeps mouth-to-ear p50 under the
2.5 s bar. 8 parts make 4.096 s segments (TARGETDURATION 4): short enough for
plain-HLS players to start quickly, long enough that a two-hour recording is
~1800 segments. Shorter parts cost more playlist reloads and requests per
listener for little latency gain on audio.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av

from townhall.media.encoder import AAC_FRAME_SAMPLES, AacPacket


def part_frames(part_ms: int, sample_rate_hz: int) -> int:
    """AAC frames per part: ``part_ms`` rounded UP to whole 1024-sample frames."""
    return max(1, math.ceil(part_ms * sample_rate_hz / (1000 * AAC_FRAME_SAMPLES)))


# -- boxes -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Box:
    type: str
    offset: int
    size: int
    header_bytes: int

    @property
    def body_offset(self) -> int:
        return self.offset + self.header_bytes

    @property
    def end(self) -> int:
        return self.offset + self.size


def iter_boxes(
    data: bytes | bytearray | memoryview, start: int = 0, end: int | None = None
) -> Iterator[Box]:
    """Complete boxes in ``data[start:end]``; stops at the first incomplete one."""
    stop = len(data) if end is None else end
    offset = start
    while offset + 8 <= stop:
        size, raw_type = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            if offset + 16 > stop:
                return
            (size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif size == 0:
            size = stop - offset
        if size < header or offset + size > stop:
            return
        yield Box(raw_type.decode("latin-1"), offset, size, header)
        offset += size


def find_box(
    data: bytes | bytearray | memoryview, path: str, start: int = 0, end: int | None = None
) -> Box | None:
    """The first box along a ``/``-separated path, e.g. ``moof/traf/tfdt``."""
    first, _, rest = path.partition("/")
    for box in iter_boxes(data, start, end):
        if box.type == first:
            if not rest:
                return box
            return find_box(data, rest, box.body_offset, box.end)
    return None


@dataclass(frozen=True, slots=True)
class FragmentInfo:
    sequence_number: int
    base_decode_time: int
    sample_count: int


def fragment_info(data: bytes | bytearray | memoryview) -> FragmentInfo:
    """mfhd sequence number, tfdt and trun sample count of one moof+mdat."""
    mfhd = find_box(data, "moof/mfhd")
    tfdt = find_box(data, "moof/traf/tfdt")
    trun = find_box(data, "moof/traf/trun")
    if mfhd is None or tfdt is None or trun is None:
        raise ValueError("fragment lacks mfhd, tfdt or trun")
    (sequence_number,) = struct.unpack_from(">I", data, mfhd.body_offset + 4)
    version = data[tfdt.body_offset]
    if version == 1:
        (base,) = struct.unpack_from(">Q", data, tfdt.body_offset + 4)
    else:
        (base,) = struct.unpack_from(">I", data, tfdt.body_offset + 4)
    (count,) = struct.unpack_from(">I", data, trun.body_offset + 4)
    return FragmentInfo(int(sequence_number), int(base), int(count))


# -- packager ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    """One published part: immutable bytes ``data`` (moof+mdat) covering
    ``duration_samples`` from ``start_samples``; every part is independent."""

    msn: int
    index: int
    data: bytes
    start_samples: int
    duration_samples: int


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    """Segment ``msn`` is complete: its bytes are its parts concatenated."""

    msn: int
    start_samples: int
    duration_samples: int
    part_count: int


Event = Part | SegmentEnd


class CmafPackager:
    """Packets in, parts and segment ends out, in order.

    The caller feeds ``add`` with every packet of one encoder, then calls
    ``close`` once. ``init_segment`` is available once the first event is out.
    """

    def __init__(
        self,
        *,
        sample_rate_hz: int,
        bitrate_bps: int,
        audio_specific_config: bytes,
        part_frames: int,
        segment_parts: int,
        first_msn: int = 0,
        start_samples: int = 0,
    ) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.part_frames = part_frames
        self.segment_parts = segment_parts
        self.init_segment: bytes | None = None
        self._msn = first_msn
        self._part_index = 0
        self._segment_start = start_samples
        self._next_time = start_samples  # decode time of the next packet
        self._expected_fragment_start = start_samples
        self._first_pts: int | None = None
        self._buffer = bytearray()
        self._moof: bytes | None = None
        self._closed = False
        self._time_base = Fraction(1, sample_rate_hz)
        frag_us = part_frames * AAC_FRAME_SAMPLES * 1_000_000 // sample_rate_hz
        self._container: Any = av.open(
            _Sink(self._buffer),
            "w",
            format="mp4",
            options={
                "movflags": "empty_moov+default_base_moof+frag_discont+skip_trailer",
                "frag_duration": str(frag_us),
                "avoid_negative_ts": "disabled",
                "use_editlist": "0",
            },
        )
        stream = self._container.add_stream("aac", rate=sample_rate_hz, layout="mono")
        stream.bit_rate = bitrate_bps
        stream.codec_context.extradata = audio_specific_config
        self._stream = stream

    def add(self, packet: AacPacket) -> list[Event]:
        """Mux one packet; returns the parts (and segment ends) that completed."""
        if self._closed:
            raise RuntimeError("packager is closed")
        pkt = av.Packet(packet.data)
        pkt.stream = self._stream
        pkt.time_base = self._time_base
        pkt.pts = pkt.dts = self._next_time
        pkt.duration = packet.duration_samples
        self._next_time += packet.duration_samples
        self._container.mux(pkt)
        return self._drain()

    def close(self) -> list[Event]:
        """Flush the last (possibly short) part and end the open segment."""
        if self._closed:
            return []
        self._closed = True
        self._container.close()
        events = self._drain()
        if self._part_index:
            events.append(self._end_segment())
        return events

    @property
    def next_msn(self) -> int:
        """The msn the next part belongs to (the segment being built)."""
        return self._msn

    @property
    def next_part_index(self) -> int:
        return self._part_index

    @property
    def end_samples(self) -> int:
        """Decode time just after the last packet added."""
        return self._next_time

    def _drain(self) -> list[Event]:
        events: list[Event] = []
        consumed = 0
        for box in iter_boxes(self._buffer):
            chunk = bytes(self._buffer[box.offset : box.end])
            consumed = box.end
            if box.type in ("ftyp", "moov"):
                self.init_segment = (self.init_segment or b"") + chunk
            elif box.type == "moof":
                self._moof = chunk
            elif box.type == "mdat":
                if self._moof is None:
                    raise RuntimeError("mdat without moof from the muxer")
                events.extend(self._publish(self._moof + chunk))
                self._moof = None
        del self._buffer[:consumed]
        return events

    def _publish(self, fragment: bytes) -> list[Event]:
        info = fragment_info(fragment)
        duration = info.sample_count * AAC_FRAME_SAMPLES
        if info.base_decode_time != self._expected_fragment_start:
            raise RuntimeError(
                f"muxer fragment starts at {info.base_decode_time}, expected {self._expected_fragment_start}"
            )
        if info.sample_count > self.part_frames:
            raise RuntimeError(
                f"muxer fragment has {info.sample_count} frames, part is {self.part_frames}"
            )
        part = Part(
            msn=self._msn,
            index=self._part_index,
            data=fragment,
            start_samples=info.base_decode_time,
            duration_samples=duration,
        )
        self._expected_fragment_start += duration
        self._part_index += 1
        events: list[Event] = [part]
        if self._part_index == self.segment_parts:
            events.append(self._end_segment())
        return events

    def _end_segment(self) -> SegmentEnd:
        end = SegmentEnd(
            msn=self._msn,
            start_samples=self._segment_start,
            duration_samples=self._expected_fragment_start - self._segment_start,
            part_count=self._part_index,
        )
        self._msn += 1
        self._part_index = 0
        self._segment_start = self._expected_fragment_start
        return end


class _Sink:
    """A write-only file for the muxer: appends to a shared bytearray."""

    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer
        self._written = 0

    def write(self, data: bytes) -> int:
        self._buffer.extend(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass
