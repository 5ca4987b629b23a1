"""`townhall bench storm`: its pure figures, and a small real storm against a
real server with a cap (nobody beyond the cap, the line moves, places of
those who gave up are reclaimed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from townhall.bench.hlsclient import ListenerStats
from townhall.bench.playout import Playout
from townhall.bench.storm import clock_late_p99
from townhall.bench.storm_report import Arrival, Sample, reclaim_times, spearman


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_reclaim_times() -> None:
    a = Arrival(
        0, 0.0, False, 5.0, 10.0, ListenerStats(0.0, Playout(0.0)), number=3, gave_up_at=1.0
    )
    samples = [
        Sample(10.0, 0, 5, 2, 0, 10, 0),
        Sample(11.0, 0, 5, 3, 0, 10, 0),  # called
        Sample(17.5, 0, 5, 4, 1, 10, 0),  # released
    ]
    assert reclaim_times([a], samples) == [6.5]


def test_clock_late_p99() -> None:
    def scrape(counts: list[int]) -> str:
        bounds = ["0.001", "0.005", "0.02", "+Inf"]
        return "\n".join(
            f'townhall_mixer_clock_late_seconds_bucket{{le="{b}"}} {c}'
            for b, c in zip(bounds, counts, strict=True)
        )

    assert clock_late_p99(scrape([0, 0, 0, 0]), scrape([980, 995, 1000, 1000])) == 0.005
    assert clock_late_p99(scrape([5, 5, 5, 5]), scrape([5, 5, 5, 5])) is None


@pytest.mark.slow
def test_small_storm(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra_env={"TOWNHALL_MAX_LISTENERS": "5"}).start()
    try:
        plot = tmp_path / "storm.png"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "townhall",
                "bench",
                "storm",
                "--target",
                server.url,
                "--arrivals",
                "30",
                "--over-s",
                "2",
                "--pre-s",
                "1",
                "--listen-s",
                "4",
                "--give-up",
                "0.2",
                "--duration-s",
                "25",
                "--json",
                "--plot",
                str(plot),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout)
    finally:
        server.stop()
    assert summary["cap"] == 5 and summary["arrivals"] == 30
    assert summary["admitted_beyond_cap"] == 0
    assert summary["admitted"] > 5  # the line moved as listeners left
    assert summary["start_delay_s"] is not None
    assert summary["max_position_age_s"] < 3
    assert plot.stat().st_size > 1000
