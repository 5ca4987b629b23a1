"""The 20 ms clock: one frame per period on a monotonic schedule, catching up
after a stall instead of drifting, skipping ahead after a long one."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from tests.live.stage_helpers import running_stage, stage_settings


def skipped_total() -> float:
    return REGISTRY.get_sample_value("townhall_mixer_skipped_frames_total") or 0.0


async def test_silence_without_speakers_and_catch_up_after_a_short_stall(tmp_path: Path) -> None:
    async with running_stage(stage_settings(tmp_path)) as (_stage, sink):
        await asyncio.sleep(0.1)
        first = len(sink.frames)
        started = time.monotonic()
        await asyncio.sleep(0.3)
        time.sleep(0.3)  # the event loop is blocked: no tick can run
        await asyncio.sleep(0.3)
        elapsed = time.monotonic() - started
        got = len(sink.frames) - first
    expected = elapsed / 0.020
    # every missed frame is made up: the count follows the wall clock, not the sleeps
    assert abs(got - expected) <= 3, (got, expected)
    assert not np.concatenate(sink.frames).any()  # nobody speaks: silence


async def test_long_stall_skips_ahead_and_counts_it(tmp_path: Path) -> None:
    before = skipped_total()
    settings = stage_settings(tmp_path, clock_max_catchup_ms=100)
    async with running_stage(settings) as (_stage, sink):
        await asyncio.sleep(0.1)
        first = len(sink.frames)
        started = time.monotonic()
        time.sleep(0.5)
        await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        got = len(sink.frames) - first
    skipped = skipped_total() - before
    assert skipped >= 15  # about 500 ms / 20 ms, less the allowed catch-up
    assert got < elapsed / 0.020 - 10


async def test_a_failing_sink_is_logged_counted_and_the_clock_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from townhall.live.stage import Stage

    calls = []

    def flaky(pcm: np.ndarray) -> None:
        calls.append(len(pcm))
        if len(calls) == 3:
            raise RuntimeError("sink broke once")

    before = REGISTRY.get_sample_value("townhall_stage_task_failures_total", {"task": "clock"}) or 0
    stage = Stage("flaky", stage_settings(tmp_path), sink=flaky)
    await stage.start()
    try:
        async with asyncio.timeout(5):
            while len(calls) < 10:
                await asyncio.sleep(0.02)
    finally:
        await stage.stop()
    after = REGISTRY.get_sample_value("townhall_stage_task_failures_total", {"task": "clock"})
    assert after == before + 1
    assert "mixer clock of flaky failed; restarting it" in caplog.text
    assert "RuntimeError: sink broke once" in caplog.text  # with the traceback
