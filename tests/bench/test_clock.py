"""``python -m townhall.bench.clock``'s figures from two /metrics scrapes, and
the clock's metrics themselves: every tick observed, every skip counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import REGISTRY, generate_latest

from tests.live.stage_helpers import running_stage, stage_settings
from townhall.bench.clock import clock_figures

BOUNDS = ("0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1.0", "+Inf")


def scrape(cumulative: list[int], skipped: int) -> str:
    lines = [
        f'townhall_mixer_clock_late_seconds_bucket{{le="{le}"}} {n}.0'
        for le, n in zip(BOUNDS, cumulative, strict=True)
    ]
    lines.append(f"townhall_mixer_clock_late_seconds_count {cumulative[-1]}.0")
    lines.append(f"townhall_mixer_skipped_frames_total {skipped}.0")
    return "\n".join(lines) + "\n"


def test_figures_are_the_difference_between_two_scrapes() -> None:
    before = scrape([10] * 11, 3)
    # 1000 more ticks: 980 within 1 ms, 10 in (10, 20] ms, 10 in (200, 500] ms
    after = scrape([990, 990, 990, 990, 1000, 1000, 1000, 1000, 1010, 1010, 1010], 8)
    figures = clock_figures(before, after)
    assert figures.ticks == 1000
    assert figures.skipped_frames == 5
    assert figures.late_p50_ms <= 1.0
    assert 10.0 < figures.late_p99_ms <= 20.0
    assert figures.late_max_ms == 500.0
    assert figures.share_within_20ms == 0.99


def test_no_ticks_gives_zeros_not_an_error() -> None:
    figures = clock_figures("", "")
    assert figures.ticks == 0 and figures.late_p99_ms == 0.0 and figures.skipped_frames == 0


async def test_the_clock_metrics_exist_count_ticks_and_skips(tmp_path: Path) -> None:
    settings = stage_settings(tmp_path, clock_max_catchup_ms=100)
    async with running_stage(settings) as (_stage, _sink):
        await asyncio.sleep(0.2)
        before = generate_latest(REGISTRY).decode()
        time.sleep(0.5)  # a stall: the clock must skip ahead and say so
        await asyncio.sleep(0.3)
        after = generate_latest(REGISTRY).decode()
    figures = clock_figures(before, after)
    assert figures.ticks >= 5  # every tick is observed by the lateness histogram
    assert figures.skipped_frames >= 15  # ~500 ms / 20 ms, less the allowed catch-up
    assert figures.late_max_ms >= 20.0  # the tick after the stall ran late, and is seen so
