"""recording.m4a is ready within a second of the end whatever the talk's length:
the init segment (with the duration written in) followed by every segment."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import av
import pytest

from tests.live.test_program import SPACE, feed, small_settings
from tests.media.hls_validator import decode_pcm
from townhall.errors import Conflict
from townhall.live.program import Program
from townhall.media.cmaf import find_box
from townhall.media.signals import dominant_frequency, tone
from townhall.store.m4a import build_fragmented, with_duration
from townhall.store.recordings import RecordingStore, write_durable


async def ended_store(tmp_path: Path, seconds: float) -> RecordingStore:
    program = Program(SPACE, small_settings(tmp_path))
    await program.start()
    await feed(program, tone(1000, seconds))
    await program.finish()
    return program.recording


async def test_fragmented_recording_decodes_to_the_whole_talk(tmp_path: Path) -> None:
    store = await ended_store(tmp_path, 2.0)
    manifest = store.load()
    assert manifest is not None
    total = sum(s.duration_samples for s in manifest.segments)
    path = await asyncio.to_thread(build_fragmented, store)
    samples, rate = decode_pcm(path.read_bytes())
    assert rate == 48000 and len(samples) == total
    assert dominant_frequency(samples[4800:-4800]) == pytest.approx(1000, abs=5)
    with av.open(str(path)) as container:  # players see the length (mehd / mvhd)
        assert container.duration is not None
        assert container.duration / 1_000_000 == pytest.approx(total / 48000, abs=0.05)
    assert find_box(path.read_bytes(), "moov/mvex/mehd") is not None
    assert await asyncio.to_thread(build_fragmented, store) == path  # built once


async def test_live_recording_is_refused(tmp_path: Path) -> None:
    program = Program(SPACE, small_settings(tmp_path))
    await program.start()
    await feed(program, tone(1000, 1.0))
    try:
        # the recorder writes its first manifest from its own backlog (a
        # thread): on a busy machine it may land after the feed
        deadline = time.monotonic() + 10
        while program.recording.load() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        with pytest.raises(Conflict, match="still live"):
            build_fragmented(program.recording)
    finally:
        await program.suspend()


def test_with_duration_rejects_what_is_not_an_init_segment() -> None:
    with pytest.raises(ValueError, match="moov"):
        with_duration(b"\x00\x00\x00\x08free", 48000, 48000)


async def test_an_hour_long_talk_is_ready_within_a_second(tmp_path: Path) -> None:
    """880 segments of 4.1 s (an hour), made by repeating one recorded segment."""
    store = await ended_store(tmp_path, 1.0)
    manifest = store.load()
    assert manifest is not None
    seg = manifest.segments[0]
    data = store.read_segment(seg.msn)
    assert data is not None
    # one hour at 64 kbit/s is ~29 MB: pad each copy to the size of a 4.1 s segment
    copies = 880
    records = []
    for msn in range(copies):
        store.segment_path(msn).write_bytes(data + b"\x00\x00\x00\x08free" * 2000)
        records.append(dataclasses.replace(seg, msn=msn, start_samples=msn * seg.duration_samples))
    write_durable(
        store.dir / "manifest.json",
        dataclasses.replace(manifest, segments=tuple(records), ended=True).to_json(),
    )
    started = time.perf_counter()
    path = await asyncio.to_thread(build_fragmented, store)
    elapsed_s = time.perf_counter() - started
    assert path.stat().st_size > copies * len(data)
    assert elapsed_s < 1.0, f"recording.m4a took {elapsed_s:.2f} s for an hour"
