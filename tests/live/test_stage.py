"""Stage with real aiortc peers in the same event loop: audio in, mix out,
checked by decoding (FFT / Goertzel)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from tests.live.stage_helpers import (
    N,
    running_stage,
    speaker,
    stage_settings,
    tone,
    wait_for,
)
from townhall.live.tracks import SpeakerStatus
from townhall.media import signals

ABSENT = 0.01  # amplitude under which a tone counts as not there (it went in at 0.3)
PRESENT = 0.15  # amplitude over which it counts as there


def amp(pcm: np.ndarray, freq_hz: float) -> float:
    return signals.goertzel_amplitude(pcm, freq_hz)


async def test_published_tone_arrives_in_the_program(tmp_path: Path) -> None:
    async with (
        running_stage(stage_settings(tmp_path)) as (stage, sink),
        speaker(stage, "host1", tone(1000.0), role="host"),
    ):
        await wait_for(lambda: stage.speaker_status()["host1"].speaking)
        start = len(sink.frames)
        await asyncio.sleep(1.0)
        program = sink.since(start)
        status = stage.speaker_status()["host1"]
    assert len(program) >= 25 * N
    assert signals.dominant_frequency(program) == pytest.approx(1000.0, abs=3)
    assert PRESENT < amp(program, 1000.0) < 0.33  # unity gain, give or take the codec
    assert status.connected and status.speaking and not status.muted
    assert status.level == pytest.approx(0.3 / np.sqrt(2), rel=0.2)


async def test_two_speakers_each_hear_only_the_other(tmp_path: Path) -> None:
    async with (
        running_stage(stage_settings(tmp_path)) as (stage, sink),
        speaker(stage, "a", tone(440.0), role="host") as a,
        speaker(stage, "b", tone(880.0)) as b,
    ):
        await wait_for(lambda: all(s.speaking for s in stage.speaker_status().values()))
        start = len(sink.frames)
        a_start, b_start = len(a.recorder.frames), len(b.recorder.frames)
        await asyncio.sleep(1.0)
        program = sink.since(start)
        a_hears = np.concatenate(a.recorder.frames[a_start:])
        b_hears = np.concatenate(b.recorder.frames[b_start:])
    found = {
        name: (amp(pcm, 440.0), amp(pcm, 880.0))
        for name, pcm in (("program", program), ("a", a_hears), ("b", b_hears))
    }
    # present: well above the floor (a late frame under load may cost a little);
    # absent: 30x below the input level
    assert found["program"][0] > PRESENT and found["program"][1] > PRESENT, found
    assert found["a"][1] > PRESENT and found["a"][0] < ABSENT, found
    assert found["b"][0] > PRESENT and found["b"][1] < ABSENT, found


async def test_abruptly_dropped_speaker_leaves_the_mix_going(tmp_path: Path) -> None:
    async with (
        running_stage(stage_settings(tmp_path)) as (stage, sink),
        speaker(stage, "a", tone(440.0), role="host") as a,
        speaker(stage, "b", tone(880.0)) as b,
    ):
        await wait_for(lambda: all(s.speaking for s in stage.speaker_status().values()))
        # cut b's network without any goodbye: stop its ICE transport
        transport = b.pc.getTransceivers()[0].sender.transport
        assert transport is not None
        await transport.transport.stop()
        await wait_for(lambda: not stage.speaker_status()["b"].speaking, timeout_s=3.0)
        start = len(sink.frames)
        a_start = len(a.recorder.frames)
        await asyncio.sleep(1.0)
        program = sink.since(start)
        a_hears = np.concatenate(a.recorder.frames[a_start:])
        status = stage.speaker_status()
    assert len(program) >= 25 * N  # the clock kept ticking
    assert PRESENT < amp(program, 440.0) < 0.33  # a is unaffected
    assert amp(program, 880.0) < ABSENT  # b is silence
    assert len(a_hears) >= 25 * N  # a's return stream kept flowing (silence now)
    assert amp(a_hears, 880.0) < ABSENT
    assert "b" in status  # b keeps the seat during the reconnect grace
    assert status["a"].speaking


async def test_reconnect_replaces_the_peer_and_keeps_the_seat(tmp_path: Path) -> None:
    async with (
        running_stage(stage_settings(tmp_path)) as (stage, sink),
        speaker(stage, "a", tone(440.0)),
    ):
        await wait_for(lambda: stage.speaker_status()["a"].speaking)
        await stage.set_muted("a", True)
        async with speaker(stage, "a", tone(660.0)):
            assert list(stage.speaker_status()) == ["a"]
            await stage.set_muted("a", False)
            await wait_for(lambda: stage.speaker_status()["a"].speaking)
            await asyncio.sleep(0.2)
            start = len(sink.frames)
            await asyncio.sleep(0.6)
            program = sink.since(start)
    assert amp(program, 660.0) > PRESENT  # the new connection is heard
    assert amp(program, 440.0) < ABSENT  # the old one is not


async def test_closed_peer_is_removed_after_the_grace(tmp_path: Path) -> None:
    settings = stage_settings(tmp_path, speaker_reconnect_grace_s=0.2)
    async with running_stage(settings) as (stage, _sink), speaker(stage, "a", tone(440.0)) as a:
        assert "a" in stage.speaker_status()
        await a.pc.close()
        await wait_for(lambda: "a" not in stage.speaker_status(), timeout_s=5.0)


async def test_muted_speaker_is_not_in_the_program(tmp_path: Path) -> None:
    async with running_stage(stage_settings(tmp_path)) as (stage, sink):
        await stage.set_muted("b", True)  # muted before connecting: remembered
        # and shown (state.json, the seats other nodes read, a takeover's mutes)
        assert stage.speaker_status() == {
            "b": SpeakerStatus(connected=False, muted=True, speaking=False, level=0.0)
        }
        async with speaker(stage, "a", tone(440.0)), speaker(stage, "b", tone(880.0)):
            await wait_for(lambda: stage.speaker_status()["a"].speaking)
            await asyncio.sleep(0.2)
            start = len(sink.frames)
            await asyncio.sleep(0.6)
            program = sink.since(start)
            status = stage.speaker_status()
            await stage.disconnect("a")
            after = stage.speaker_status()
    assert amp(program, 440.0) > PRESENT
    assert amp(program, 880.0) < ABSENT
    assert status["b"].muted and not status["b"].speaking and status["b"].level == 0.0
    assert list(after) == ["b"]
