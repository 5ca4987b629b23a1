"""`townhall bench latency`: the pure matching and playout arithmetic, and one
short run against a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import LiveServer
from townhall.bench.bursts import (
    BURST_FREQS_HZ,
    PartTimeline,
    match_latencies,
    onset_send_times,
    plan_bursts,
)
from townhall.bench.latency import latency_command
from townhall.media import signals


def test_match_latencies_pairs_each_heard_onset_with_the_burst_before_it() -> None:
    sent = [1.0, 2.0, 3.0]
    heard = [1.15, 2.16, 3.14, 0.5, 9.0]  # 0.5: before anything was sent; 9.0: too late
    assert match_latencies(sent, heard, 1.0) == pytest.approx([0.15, 0.16, 0.14])
    # a burst is matched once, even if heard twice
    assert match_latencies([1.0], [1.1, 1.2], 1.0) == pytest.approx([0.1])


def test_plan_bursts_cycles_tones_one_per_period_and_each_is_detectable() -> None:
    plan = plan_bursts(6, lead_ms=500, period_ms=1000)
    assert plan.count == 6
    assert plan.onsets[BURST_FREQS_HZ[0]] == (24000, 24000 + 4 * 48000)
    assert plan.onsets[BURST_FREQS_HZ[1]] == (72000, 72000 + 4 * 48000)
    assert plan.onsets[BURST_FREQS_HZ[3]] == (168000,)
    for freq, onsets in plan.onsets.items():
        found = signals.detect_onsets(plan.pcm, freq, threshold=0.1)
        assert len(found) == len(onsets), freq  # no other tone leaks into this one
        assert all(abs(f - o) <= 240 for f, o in zip(found, onsets, strict=True))


def test_onset_send_times_use_the_frame_hand_over_times() -> None:
    frame_times = [10.0, 10.02, 10.04]
    assert onset_send_times((0, 960 + 480, 5000), frame_times) == pytest.approx([10.0, 10.03])


def test_part_timeline_plays_in_real_time_and_stalls_for_a_late_part() -> None:
    timeline = PartTimeline()
    timeline.add(0.5, 100.0)
    timeline.add(0.5, 100.0)  # start-up: two parts at once, playback starts at 100.0
    timeline.add(0.5, 100.6)  # due at 101.0, arrived early
    timeline.add(0.5, 102.0)  # due at 101.5, arrived late: a stall until 102.0
    assert timeline.play_starts(2) == pytest.approx([100.0, 100.5, 101.0, 102.0])
    assert timeline.play_time(0.25, 2) == pytest.approx(100.25)
    assert timeline.play_time(1.6, 2) == pytest.approx(102.1)
    assert timeline.play_time(2.5, 2) is None


def test_latency_refuses_a_remote_target_without_allow_remote() -> None:
    result = CliRunner().invoke(latency_command, ["--target", "http://192.0.2.9:8000"])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output


@pytest.mark.slow
def test_latency_run_against_a_real_server(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        result = CliRunner().invoke(
            latency_command, ["--target", server.url, "--bursts", "4", "--json"]
        )
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    rows = {row["metric"]: row for row in report["rows"]}
    speaker = rows["speaker_to_speaker"]
    assert speaker["bursts_matched"] == 4
    assert 0.0 < speaker["p50_s"] < 1.0
    listener = rows["speaker_to_llhls_listener"]
    assert listener["bursts_matched"] >= 2
    # a listener is behind the speakers by at least the playlist's hold-back
    assert listener["p50_s"] > report["part_hold_back_s"]
