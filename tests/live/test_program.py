"""The program in-process: tone frames in, parts in the live window, segments
on disk, ended/suspended/resumed recordings, the shared wake-ups and the
progressive fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tests.media.hls_validator import decode_pcm, validate
from townhall.config import Settings
from townhall.errors import Conflict
from townhall.live.program import Program
from townhall.media import adts
from townhall.media.encoder import AAC_FRAME_SAMPLES
from townhall.media.signals import dominant_frequency, tone
from townhall.origin.fanout import ProgressiveHub
from townhall.origin.playlist import render_vod
from townhall.origin.window import COMPLETE
from townhall.store.recordings import RecordingStore

SPACE = "abcdefgh2345"
PART_SAMPLES = 5 * AAC_FRAME_SAMPLES  # part_ms=100 -> 5 frames
SEGMENT_SAMPLES = 4 * PART_SAMPLES


def small_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "part_ms": 100,
        "segment_parts": 4,
        "window_segments": 3,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def feed(program: Program, pcm: np.ndarray, *, batch: int = 10) -> None:
    """Push 20 ms frames faster than real time, letting the encoder keep up."""
    for n, i in enumerate(range(0, len(pcm) - 959, 960)):
        program.push_frame(pcm[i : i + 960])
        if n % batch == batch - 1:
            await program.drained()
    await program.drained()


@pytest.fixture
async def program(tmp_path: Path) -> AsyncIterator[Program]:
    prog = Program(SPACE, small_settings(tmp_path))
    await prog.start()
    try:
        yield prog
    finally:
        await prog.suspend()


def recorded_audio(store: RecordingStore) -> np.ndarray:
    manifest = store.load()
    assert manifest is not None
    data = store.read_init(manifest.segments[0].epoch) or b""
    for seg in manifest.segments:
        data += store.read_segment(seg.msn) or b""
    samples, _ = decode_pcm(data)
    return samples


async def test_parts_published_and_segments_recorded(program: Program) -> None:
    await feed(program, tone(1000, 3.0))
    window = program.window
    assert window is not None
    history = window.history
    assert len(history) >= 6
    assert all(r.duration_samples == SEGMENT_SAMPLES for r in history)
    assert [r.msn for r in history] == list(range(len(history)))
    # bounded window: only the last window_segments segments are in memory
    assert window.segment(history[-1].msn) is not None
    assert window.segment(history[0].msn) is None
    last = history[-1].msn
    assert window.part(last, 3) is not None
    validate(window.playlist("ll"), expect="ll")
    # every finished segment is on disk; they decode to the tone
    await asyncio.sleep(0)
    for _ in range(100):
        manifest = program.recording.load()
        if manifest and len(manifest.segments) == len(history):
            break
        await asyncio.sleep(0.01)
    samples = recorded_audio(program.recording)
    assert len(samples) == len(history) * SEGMENT_SAMPLES
    assert dominant_frequency(samples[4800:]) == pytest.approx(1000, abs=5)
    assert program.statistics()["frames_dropped"] == 0


async def test_finish_ends_the_recording_and_m4a_has_full_duration(tmp_path: Path) -> None:
    program = Program(SPACE, small_settings(tmp_path))
    await program.start()
    await feed(program, tone(1000, 2.0))
    await program.finish()
    assert program.ended
    store = program.recording
    manifest = store.load()
    assert manifest is not None and manifest.ended
    total = sum(s.duration_samples for s in manifest.segments)
    assert total >= 2.0 * 48000  # nothing lost: the short last segment is there
    assert program.window is not None
    validate(program.window.playlist("ll"), expect="vod")
    path = await asyncio.to_thread(store.build_m4a)
    samples, rate = decode_pcm(path.read_bytes())
    assert rate == 48000 and len(samples) == total
    assert dominant_frequency(samples[4800:-4800]) == pytest.approx(1000, abs=5)
    with pytest.raises(Conflict, match="ended"):
        await Program(SPACE, small_settings(tmp_path)).start()


async def test_suspend_and_resume_continue_in_a_new_epoch(tmp_path: Path) -> None:
    settings = small_settings(tmp_path)
    first = Program(SPACE, settings)
    await first.start()
    await feed(first, tone(1000, 1.0))
    await first.suspend()
    before = first.recording.load()
    assert before is not None and not before.ended
    second = Program(SPACE, settings)
    await second.start()
    assert second.window is not None and second.window.open_msn == before.next_msn
    await feed(second, tone(1000, 1.0))
    text = second.window.playlist("ll")
    parsed = validate(text, expect="ll")
    assert [s.msn for s in parsed.segments][: len(before.segments)] == [
        s.msn for s in before.segments
    ]
    first_new = parsed.segments[len(before.segments)]
    assert first_new.discontinuity and first_new.map_uri == "init/1.mp4"
    await second.finish()
    after = second.recording.load()
    assert after is not None and after.ended and after.epochs == (0, 1)
    starts = [s.start_samples for s in after.segments]
    ends = [s.start_samples + s.duration_samples for s in after.segments]
    assert starts[1:] == ends[:-1]  # the media timeline continues across the restart
    vod = validate(render_vod(second.window.view()), expect="vod")
    assert sum(s.discontinuity for s in vod.segments) == 1


async def test_push_frame_never_blocks_and_counts_drops(tmp_path: Path) -> None:
    program = Program(SPACE, small_settings(tmp_path, program_queue_ms=100))
    await program.start()
    frame = tone(1000, 0.02)
    for _ in range(50):  # the encoder task gets no turn: the queue (5 frames) fills
        program.push_frame(frame)
    assert program.statistics()["frames_dropped"] == 45
    await program.suspend()


async def test_waiters_for_the_same_part_share_one_wake_up(program: Program) -> None:
    window = program.window
    assert window is not None
    await feed(program, tone(1000, 0.5))
    target = (window.open_msn + 1, 1)
    waiters = [asyncio.create_task(window.wait_for(target, 10.0)) for _ in range(50)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    assert list(window._waiters) == [target]  # one event for fifty requests
    await feed(program, tone(1000, 1.0))
    assert await asyncio.gather(*waiters) == [True] * 50
    assert window._waiters == {}
    assert await window.wait_for((window.open_msn + 2, COMPLETE), 0.05) is False


async def test_window_close_releases_waiters(program: Program) -> None:
    window = program.window
    assert window is not None
    waiter = asyncio.create_task(window.wait_for((window.open_msn + 1, 0), 10.0))
    await asyncio.sleep(0.01)
    await program.suspend()
    assert await waiter is True
    assert window.closed and not window.ended


async def test_progressive_slow_listener_dropped_fast_one_unaffected() -> None:
    hub = ProgressiveHub(max_lag_ms=200, burst_ms=0, frame_ms=1024 / 48)
    slow = hub.subscribe()
    fast = hub.subscribe()
    received = []
    for i in range(40):
        hub.publish(bytes([i]))
        chunk = await fast.next_chunk()  # the fast one keeps up
        received.append(chunk)
    assert slow.dropped and slow.gone.is_set()
    assert await slow.next_chunk() is None
    assert not fast.dropped and hub.statistics().listeners == 1
    assert b"".join(c or b"" for c in received) == bytes(range(40))


async def test_progressive_stream_decodes_to_the_tone(program: Program) -> None:
    listener = program.progressive.subscribe()
    await feed(program, tone(1000, 1.0))
    data = await listener.next_chunk()
    assert data is not None
    frames = adts.parse_all(data)
    assert len(frames) >= 45
    samples, _ = decode_pcm(data, format="aac")
    assert dominant_frequency(samples[4800:]) == pytest.approx(1000, abs=5)
