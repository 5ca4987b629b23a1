"""The live window's parked requests and memo, in process: parked callbacks
share one entry and one timer per position, a publish answers them (through
the spreader), timeouts, cancellation, eviction."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from townhall import metrics
from townhall.media.cmaf import Part, SegmentEnd
from townhall.origin.fanout import Spreader
from townhall.origin.window import LiveWindow

PART = 480


def make_window(spreader: Spreader | None = None, **overrides: Any) -> LiveWindow:
    values: dict[str, Any] = {
        "epoch": 0,
        "first_msn": 0,
        "history": (),
        "sample_rate_hz": 48000,
        "part_duration_samples": PART,
        "segment_parts": 2,
        "window_segments": 3,
        "spreader": spreader,
    }
    values.update(overrides)
    return LiveWindow(**values)


def publish(window: LiveWindow, msn: int, index: int) -> None:
    data = bytes([msn % 256, index]) * 8
    window.publish_part(Part(msn, index, data, (msn * 2 + index) * PART, PART), 0.0)


def end(window: LiveWindow, msn: int) -> None:
    window.end_segment(SegmentEnd(msn, msn * 2 * PART, 2 * PART, 2))


def gauge(metric: Any) -> float:
    return float(metric._value.get())


# -- parked waiters --------------------------------------------------------------------------


async def test_thousand_waiters_share_one_entry_one_timer_and_one_publish() -> None:
    spreader = Spreader(batch=100)
    window = make_window(spreader)
    publish(window, 0, 0)
    answers: list[bool] = []
    before = gauge(metrics.HLS_BLOCKING_WAITERS)
    for _ in range(1000):
        assert not window.ready((1, 0))
        window.park((1, 0), answers.append, 30.0)
    assert list(window._waiters) == [(1, 0)]
    slot = window._waiters[(1, 0)]
    timer = slot.timer
    assert timer is not None and window.statistics().waiting == 1000
    assert gauge(metrics.HLS_BLOCKING_WAITERS) == before + 1000
    ticks: list[int] = []
    asyncio.get_running_loop().call_soon(lambda: ticks.append(len(answers)))
    publish(window, 0, 1)
    end(window, 0)
    assert answers == []  # (1, 0) is not there yet
    publish(window, 1, 0)
    assert window._waiters == {} and timer.cancelled()
    assert len(answers) == 100  # one slice per loop turn
    while spreader.statistics().pending_calls:
        await asyncio.sleep(0)
    assert answers == [True] * 1000
    assert ticks == [100]  # other callbacks ran between slices
    assert gauge(metrics.HLS_BLOCKING_WAITERS) == before


async def test_waiters_time_out_on_one_timer_each_at_its_own_deadline() -> None:
    window = make_window()
    publish(window, 0, 0)
    first: list[bool] = []
    late: list[bool] = []
    window.park((0, 1), first.append, 0.2)
    window.park((0, 1), first.append, 0.2)
    await asyncio.sleep(0.1)
    window.park((0, 1), late.append, 0.6)  # parked later, with a longer timeout
    await asyncio.sleep(0.35)
    assert first == [False, False]
    assert late == []  # its own deadline has not come
    assert window.statistics().waiting == 1
    publish(window, 0, 1)
    assert late == [True]
    assert window._waiters == {}


async def test_cancelled_waiter_is_never_called_and_leaves_nothing_behind() -> None:
    window = make_window()
    before = gauge(metrics.HLS_BLOCKING_WAITERS)
    calls: list[bool] = []
    waiter = window.park((0, 0), calls.append, 0.1)
    assert gauge(metrics.HLS_BLOCKING_WAITERS) == before + 1
    waiter.cancel()
    waiter.cancel()  # idempotent
    assert gauge(metrics.HLS_BLOCKING_WAITERS) == before
    await asyncio.sleep(0.2)
    assert calls == [] and window._waiters == {}


async def test_close_releases_every_waiter_as_published() -> None:
    window = make_window()
    calls: list[bool] = []
    for msn in range(3):
        window.park((msn, 0), calls.append, 10.0)
    window.close(ended=True)
    assert calls == [True, True, True]
    assert window.ready((99, 0))  # a closed window answers at once


async def test_wait_for_shares_the_position_and_times_out() -> None:
    window = make_window()
    tasks = [asyncio.create_task(window.wait_for((0, 0), 5.0)) for _ in range(10)]
    await asyncio.sleep(0)
    assert window.statistics().waiting == 10 and len(window._waiters) == 1
    publish(window, 0, 0)
    assert await asyncio.gather(*tasks) == [True] * 10
    assert await window.wait_for((0, 1), 0.05) is False
    cancelled = asyncio.create_task(window.wait_for((0, 1), 5.0))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert window.statistics().waiting == 0 or not any(
        w.active for w in window._waiters[(0, 1)].waiters
    )


# -- memo --------------------------------------------------------------------------------------


def test_memo_is_made_once_and_evicted_with_its_segment() -> None:
    window = make_window(window_segments=3)
    made: list[int] = []

    def make(msn: int) -> str:
        made.append(msn)
        return f"rendered {msn}"

    for msn in range(3):
        publish(window, msn, 0)
        publish(window, msn, 1)
        end(window, msn)
        assert window.memo("seg", lambda m=msn: make(m), msn=msn) == f"rendered {msn}"
        assert window.memo("seg", lambda m=msn: make(m), msn=msn) == f"rendered {msn}"
    assert made == [0, 1, 2]
    publish(window, 3, 0)
    publish(window, 3, 1)
    end(window, 3)  # segment 0 leaves the window, and its memo with it
    assert window.segment(0) is None and 0 not in window._memo
    assert 1 in window._memo


def test_versioned_memo_follows_the_window_version() -> None:
    window = make_window()
    publish(window, 0, 0)
    first = window.memo_versioned("ll", lambda: window.playlist("ll"))
    assert window.memo_versioned("ll", lambda: "never") is first
    publish(window, 0, 1)
    second = window.memo_versioned("ll", lambda: window.playlist("ll"))
    assert second != first and "part/0.1.m4s" in second
