"""CMAF packaging: init + parts decode to the tone, parts and segments have the
configured durations, tfdt is continuous (also across a restart)."""

from __future__ import annotations

import numpy as np
import pytest

from townhall.media.cmaf import (
    CmafPackager,
    Part,
    SegmentEnd,
    find_box,
    fragment_info,
    iter_boxes,
    part_frames,
)
from townhall.media.encoder import AAC_FRAME_SAMPLES, AacEncoder
from townhall.media.signals import dominant_frequency, tone

from .hls_validator import decode_pcm

RATE = 48000


def package(
    pcm: np.ndarray,
    *,
    part_ms: int = 500,
    segment_parts: int = 8,
    first_msn: int = 0,
    start: int = 0,
) -> tuple[CmafPackager, list[Part], list[SegmentEnd]]:
    encoder = AacEncoder(sample_rate_hz=RATE, bitrate_bps=64000)
    packager = CmafPackager(
        sample_rate_hz=RATE,
        bitrate_bps=64000,
        audio_specific_config=encoder.audio_specific_config,
        part_frames=part_frames(part_ms, RATE),
        segment_parts=segment_parts,
        first_msn=first_msn,
        start_samples=start,
    )
    events = []
    for i in range(0, len(pcm), 960):
        for packet in encoder.encode(pcm[i : i + 960]):
            events.extend(packager.add(packet))
    for packet in encoder.flush():
        events.extend(packager.add(packet))
    events.extend(packager.close())
    parts = [e for e in events if isinstance(e, Part)]
    ends = [e for e in events if isinstance(e, SegmentEnd)]
    return packager, parts, ends


@pytest.mark.parametrize(
    ("part_ms", "frames"), [(500, 24), (512, 24), (513, 25), (100, 5), (2000, 94)]
)
def test_part_duration_rounds_up_to_whole_aac_frames(part_ms: int, frames: int) -> None:
    assert part_frames(part_ms, RATE) == frames


def test_init_segment_is_ftyp_moov_with_mvex_and_esds() -> None:
    packager, _, _ = package(tone(1000, 0.6))
    init = packager.init_segment
    assert init is not None
    assert [b.type for b in iter_boxes(init)] == ["ftyp", "moov"]
    assert find_box(init, "moov/mvex/trex") is not None
    stsd = find_box(init, "moov/trak/mdia/minf/stbl/stsd")
    assert stsd is not None and b"mp4a" in init[stsd.offset : stsd.end]
    assert b"esds" in init[stsd.offset : stsd.end]


def test_tone_in_tone_out_with_configured_part_and_segment_durations() -> None:
    packager, parts, ends = package(tone(1000, 10.0))
    assert packager.init_segment is not None
    full = [p for p in parts if p.duration_samples == 24 * AAC_FRAME_SAMPLES]
    assert len(full) == len(parts) - 1  # only the flushed last part is short
    assert parts[-1].duration_samples < 24 * AAC_FRAME_SAMPLES
    assert [e.part_count for e in ends] == [8, 8, 4]
    assert ends[0].duration_samples == 8 * 24 * AAC_FRAME_SAMPLES  # 4.096 s
    for part in parts:
        boxes = [b.type for b in iter_boxes(part.data)]
        assert boxes == ["moof", "mdat"]
    # tfdt continuous, parts numbered per segment
    times = [fragment_info(p.data).base_decode_time for p in parts]
    durations = [p.duration_samples for p in parts]
    assert times == [sum(durations[:i]) for i in range(len(parts))]
    assert [(p.msn, p.index) for p in parts[:10]] == [(0, i) for i in range(8)] + [(1, 0), (1, 1)]
    samples, rate = decode_pcm(packager.init_segment + b"".join(p.data for p in parts))
    assert rate == RATE
    assert len(samples) == sum(durations)
    assert abs(len(samples) - 10.0 * RATE) <= 2 * AAC_FRAME_SAMPLES
    assert dominant_frequency(samples[RATE:-RATE]) == pytest.approx(1000, abs=5)


def test_each_part_decodes_on_its_own_after_the_init() -> None:
    packager, parts, _ = package(tone(440, 3.0))
    assert packager.init_segment is not None
    samples, _ = decode_pcm(packager.init_segment + parts[3].data)
    assert len(samples) == 24 * AAC_FRAME_SAMPLES
    assert dominant_frequency(samples) == pytest.approx(440, abs=5)


def test_timeline_continues_after_a_restart() -> None:
    first, parts_a, ends_a = package(tone(1000, 5.0))
    end = ends_a[-1].start_samples + ends_a[-1].duration_samples
    second, parts_b, _ = package(tone(1000, 5.0), first_msn=ends_a[-1].msn + 1, start=end)
    assert parts_b[0].msn == ends_a[-1].msn + 1 and parts_b[0].index == 0
    assert fragment_info(parts_b[0].data).base_decode_time == end
    assert second.init_segment == first.init_segment
    data = first.init_segment or b""
    data += b"".join(p.data for p in parts_a + parts_b)
    samples, _ = decode_pcm(data)
    assert len(samples) == sum(p.duration_samples for p in parts_a + parts_b)


def test_small_parts_setting() -> None:
    _, parts, ends = package(tone(1000, 2.0), part_ms=100, segment_parts=4)
    assert {p.duration_samples for p in parts[:-1]} == {5 * AAC_FRAME_SAMPLES}
    assert all(e.part_count == 4 for e in ends[:-1])
