"""Playout deadlines and stalls on a fake timeline; ADTS frame counting."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from townhall.bench import report
from townhall.bench.hlsclient import ListenerStats
from townhall.bench.playout import AdtsCounter, Playout


def test_no_stall_when_parts_arrive_in_time() -> None:
    p = Playout(startup_s=1.5)
    for i in range(3):  # join: three parts at once
        p.add(0.5, 10.0 + 0.01 * i)
    assert p.play_start_s == pytest.approx(10.02)
    for i in range(1, 21):  # then one part every 0.5 s, on time
        p.add(0.5, 10.02 + 0.5 * i)
    p.finish(20.0)
    assert p.stall_events == 0
    assert p.stalled_s == 0
    assert p.played_s(20.0) == pytest.approx(20.0 - 10.02)


def test_late_part_is_one_stall_of_the_gap() -> None:
    p = Playout(startup_s=1.0)
    p.add(1.0, 0.0)  # plays 0..1
    p.add(0.5, 0.9)  # buffer until 1.5
    p.add(0.5, 2.5)  # dry at 1.5, arrives at 2.5: stalled 1.0 s
    assert p.stall_events == 1
    assert p.stalled_s == pytest.approx(1.0)
    assert p.dry_at_s == pytest.approx(3.0)
    assert p.played_s(3.0) == pytest.approx(2.0)  # 3 s of wall clock, 1 s stalled
    assert not p.stalled_at(2.9)
    assert p.stalled_at(3.1)


def test_dry_buffer_at_the_end_counts() -> None:
    p = Playout(startup_s=0.5)
    p.add(0.5, 0.0)
    p.finish(2.0)
    assert p.stall_events == 1
    assert p.stalled_s == pytest.approx(1.5)
    assert p.played_s(2.0) == pytest.approx(0.5)


def test_playback_waits_for_the_startup_buffer() -> None:
    p = Playout(startup_s=1.0)
    p.add(0.4, 0.0)
    p.add(0.4, 0.3)
    assert p.play_start_s is None
    p.add(0.4, 0.7)
    assert p.play_start_s == 0.7
    assert p.dry_at_s == pytest.approx(1.9)


def test_never_started_is_not_played() -> None:
    p = Playout(startup_s=1.0)
    p.finish(5.0)
    assert p.played_s(5.0) == 0
    assert p.stall_events == 0


def test_summary_stall_ratio_and_percentiles() -> None:
    listeners = []
    for i in range(10):
        t = 0.1 * (i + 1)
        s = ListenerStats(started_at_s=0.0, playout=Playout(0.5))
        s.playout.add(0.5, t)  # plays from t, dry at t + 0.5
        s.first_audio_s = t
        s.playout.add(10.0, t + (1.5 if i == 0 else 0.1))  # the first one arrives 1 s late
        listeners.append(s)
    summary = report.summarize(listeners, end_s=10.0, wall_s=10.0, cpu_s=2.0, meta={"mode": "hls"})
    played = sum(10.0 - 0.1 * (i + 1) for i in range(10)) - 1.0
    assert summary["listeners_held"] == 10
    assert summary["stall_events"] == 1
    assert summary["stalled_s"] == pytest.approx(1.0)
    assert summary["stall_ratio"] == pytest.approx(1.0 / played, abs=1e-6)
    assert summary["ttfa_p50_s"] == pytest.approx(0.5)
    assert summary["ttfa_p99_s"] == pytest.approx(1.0)
    assert summary["client_cpu_percent"] == 20.0
    assert not summary["client_saturated"]
    assert "20 % of one core" in report.format_table(summary)


def test_summary_counts_a_listener_dry_at_the_end_as_not_held() -> None:
    s = ListenerStats(started_at_s=0.0, playout=Playout(0.5))
    s.playout.add(0.5, 0.0)
    summary = report.summarize([s], end_s=3.0, wall_s=3.0, cpu_s=2.9, meta={})
    assert summary["listeners_held"] == 0
    assert summary["listeners_started"] == 1
    assert summary["stalled_s"] == pytest.approx(2.5)
    assert summary["client_saturated"]
    assert "SATURATED" in report.format_table(summary)


def test_percentile_nearest_rank() -> None:
    assert report.percentile([], 50) is None
    assert report.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert report.percentile(list(range(1, 101)), 99) == 99


def _adts_file(tmp_path: Path, seconds: float) -> bytes:
    path = tmp_path / "tone.aac"
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency=440:sample_rate=48000:duration={seconds}",
            "-ac",
            "1",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "adts",
            str(path),
        ],
        check=True,
    )
    return path.read_bytes()


def test_adts_counter_gives_media_time_in_any_chunking(tmp_path: Path) -> None:
    data = _adts_file(tmp_path, 2.0)
    whole = AdtsCounter()
    whole.feed(data)
    assert whole.sample_rate_hz == 48000
    assert whole.media_s == pytest.approx(2.0, abs=0.05)
    assert whole.lost_sync_bytes == 0
    for size in (1, 5, 7, 100, 4096):
        c = AdtsCounter()
        for i in range(0, len(data), size):
            c.feed(data[i : i + size])
        assert c.frames == whole.frames, size


def test_adts_counter_resyncs_after_garbage(tmp_path: Path) -> None:
    data = _adts_file(tmp_path, 1.0)
    c = AdtsCounter()
    c.feed(b"\x00garbage" + data)
    assert c.lost_sync_bytes == 8
    assert c.media_s == pytest.approx(1.0, abs=0.05)
