"""No dead air at the ends of a recording (issue 12): a talk followed by
minutes of silence (the host left; the space ends itself after
``host_absent_end_s``) is recorded up to the last audio plus about a second.
Checked by decoding recording.m4a and the VOD's segments: the program in-process,
and a real `townhall serve` whose space ends by itself after its speaker bot
stops."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer
from tests.live.test_program import SPACE, feed, small_settings
from tests.media.hls_validator import decode_pcm
from tests.web.browser import write_voice_wav
from townhall.live.program import Program
from townhall.live.trim import TAIL_S, AudioExtent, first_parts, plan_tail
from townhall.media.signals import dominant_frequency, tone
from townhall.store.m4a import build_fragmented
from townhall.store.recordings import SegmentRecord

DEAD_AIR_BOUND_S = 2.0
PASSWORD = "correct horse battery"


def _record(msn: int, start: int, duration: int, parts: int) -> SegmentRecord:
    return SegmentRecord(msn, 0, start, duration, 0.0, False, parts)


def test_plan_keeps_up_to_the_cut_rounded_up_to_a_part() -> None:
    segments = tuple(_record(i, i * 400, 400, 4) for i in range(5))  # parts of 100
    cut = plan_tail(segments, keep_until_samples=950, part_samples=100)
    assert cut is not None
    assert [r.msn for r in cut.segments] == [0, 1, 2]
    assert cut.segments[-1].duration_samples == 200 and cut.segments[-1].part_count == 2
    assert cut.shortened == (2, 2)
    on_boundary = plan_tail(segments, keep_until_samples=800, part_samples=100)
    assert on_boundary is not None and [r.msn for r in on_boundary.segments] == [0, 1]
    assert on_boundary.shortened is None
    assert plan_tail(segments, keep_until_samples=5000, part_samples=100) is None
    only_silence = plan_tail(segments, keep_until_samples=0, part_samples=100)
    assert only_silence is not None and len(only_silence.segments) == 1


def test_extent_marks_the_last_audible_frame() -> None:
    extent = AudioExtent()
    extent.feed(np.zeros(960, np.int16), 0)
    assert extent.last_audible_end is None
    loud = (tone(440, 0.02) * 0.5).astype(np.int16)
    extent.feed(loud[:960], 960)
    extent.feed(np.full(960, 20, np.int16), 1920)  # below the threshold: silence
    assert extent.last_audible_end == 1920


def test_first_parts_cuts_at_a_moof_mdat_pair() -> None:
    def box(kind: bytes, body: bytes) -> bytes:
        return (8 + len(body)).to_bytes(4, "big") + kind + body

    pairs = [box(b"moof", bytes([i])) + box(b"mdat", bytes([i]) * 3) for i in range(3)]
    segment = box(b"styp", b"") + b"".join(pairs)
    assert first_parts(segment, 2) == box(b"styp", b"") + pairs[0] + pairs[1]
    with pytest.raises(ValueError, match="fewer than 4"):
        first_parts(segment, 4)


def _audible_span_s(samples: np.ndarray, rate: int) -> tuple[float, float, float]:
    """(first audible, last audible, total) in seconds of decoded audio."""
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    assert loud.size, "nothing audible was decoded"
    return loud[0] / rate, (loud[-1] + 1) / rate, len(samples) / rate


async def test_recording_ends_at_the_last_audio(tmp_path: Path) -> None:
    settings = small_settings(tmp_path)
    program = Program(SPACE, settings)
    await program.start()
    talk = tone(1000, 3.0)
    await feed(program, np.concatenate([talk, np.zeros(48000 * 20, np.int16)]))
    await program.finish()
    manifest = program.recording.load()
    assert manifest is not None and manifest.ended
    samples, rate = decode_pcm(build_fragmented(program.recording).read_bytes())
    _, last_s, total_s = _audible_span_s(samples, rate)
    assert last_s >= 2.9, "the talk itself must all be there"
    assert total_s - last_s <= DEAD_AIR_BOUND_S, f"{total_s - last_s:.2f} s of dead air at the end"
    assert total_s - last_s >= TAIL_S - 0.1  # a natural pause is kept
    assert dominant_frequency(samples[: int(2.5 * rate)], rate) == pytest.approx(1000, abs=5)
    # the VOD (init + the manifest's segments, as disk_playlist lists them) says the same
    store = program.recording
    vod = store.read_init(manifest.epochs[0]) or b""
    vod += b"".join(store.read_segment(r.msn) or b"" for r in manifest.segments)
    vod_samples, vod_rate = decode_pcm(vod)
    assert len(vod_samples) / vod_rate == pytest.approx(total_s, abs=0.05)
    listed_s = sum(r.duration_samples for r in manifest.segments) / manifest.sample_rate_hz
    assert listed_s <= last_s + DEAD_AIR_BOUND_S
    assert not any(store.segment_path(manifest.segments[-1].msn + 1 + i).exists() for i in range(3))


async def test_trimming_can_be_turned_off(tmp_path: Path) -> None:
    program = Program(SPACE, small_settings(tmp_path, recording_trim_silence=False))
    await program.start()
    await feed(program, np.concatenate([tone(1000, 1.0), np.zeros(48000 * 6, np.int16)]))
    await program.finish()
    samples, rate = decode_pcm(build_fragmented(program.recording).read_bytes())
    assert len(samples) / rate >= 6.5


@pytest.mark.slow
def test_a_space_that_ended_itself_has_no_dead_air(tmp_path: Path) -> None:
    server = LiveServer(
        tmp_path / "data",
        extra_env={
            "TOWNHALL_PROGRAM_WAITS_FOR_HOST": "true",
            "TOWNHALL_HOST_ABSENT_END_S": "8",
            "TOWNHALL_HOST_ABSENT_CHECK_S": "0.5",
        },
    ).start()
    client = httpx.Client(base_url=server.url, timeout=30)
    try:
        client.post("/api/accounts", json={"username": "leavinghost", "password": PASSWORD})
        token = client.post(
            "/api/sessions", json={"username": "leavinghost", "password": PASSWORD}
        ).json()["token"]
        space = client.post(
            "/api/spaces",
            json={"title": "Left early"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        wav = write_voice_wav(tmp_path / "voice.wav", 440.0, seconds=3.0)
        # the host talks for about 6 s, then the bot (their only microphone) is gone
        subprocess.run(
            [sys.executable, "-m", "townhall", "speak", str(wav), "--server", server.url,
             "--space", space["id"], "--username", "leavinghost", "--password", PASSWORD,
             "--loop", "--duration-s", "6"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            timeout=90, check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        state = "live"
        while state == "live" and time.monotonic() < deadline:
            time.sleep(0.5)
            state = client.get(f"/api/spaces/{space['id']}").json()["state"]
        assert state == "ended", "the space did not end by itself"
        response = client.get(f"/spaces/{space['id']}/recording.m4a")
        assert response.status_code == 200, response.text
        samples, rate = decode_pcm(response.content)
        first_s, last_s, total_s = _audible_span_s(samples, rate)
        print(
            f"recording {total_s:.1f} s: audio from {first_s:.2f} s to {last_s:.2f} s "
            f"(dead air {first_s:.2f} s at the start, {total_s - last_s:.2f} s at the end)"
        )
        assert total_s - last_s <= DEAD_AIR_BOUND_S
        assert first_s <= DEAD_AIR_BOUND_S
        assert last_s - first_s >= 3.0  # the talk is there
        assert dominant_frequency(samples[int(first_s * rate) :][: 2 * rate], rate) == (
            pytest.approx(440, abs=5)
        )
    finally:
        client.close()
        server.stop()
