"""The live window's wake-ups, memo and the progressive hub's direct writes, in
process: parked callbacks share one entry and one timer per position, a publish
answers them in slices (the event loop gets a turn between slices), timeouts,
cancellation, eviction, and the stream sinks' batching, burst, lag bound and end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from townhall import metrics
from townhall.media.cmaf import Part, SegmentEnd
from townhall.origin.chunked import LAST_CHUNK, http_chunk
from townhall.origin.fanout import ProgressiveHub, Spreader
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


# -- Spreader ----------------------------------------------------------------------------


async def test_spreader_runs_slices_in_order_with_loop_turns_between() -> None:
    spreader = Spreader(batch=3)
    seen: list[Any] = []
    marks: list[int] = []
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: marks.append(len(seen)))  # queued before the second slice
    spreader.submit(seen.append, list(range(5)))
    spreader.submit(seen.append, ["a", "b", "c", "d"])
    assert seen == [0, 1, 2]  # the first slice at once
    assert spreader.statistics().pending_calls == 6
    while spreader.statistics().pending_calls:
        await asyncio.sleep(0)
    assert seen == [0, 1, 2, 3, 4, "a", "b", "c", "d"]
    assert marks == [3]  # the loop ran other work between slices
    assert spreader.statistics().turns == 3


async def test_spreader_survives_a_failing_callback(caplog: pytest.LogCaptureFixture) -> None:
    spreader = Spreader(batch=10)
    seen: list[int] = []

    def call(i: int) -> None:
        if i == 1:
            raise RuntimeError("boom")
        seen.append(i)

    spreader.submit(call, [0, 1, 2])
    assert seen == [0, 2]
    assert "callback failed" in caplog.text


def test_spreader_without_a_loop_finishes_at_once() -> None:
    spreader = Spreader(batch=2)
    seen: list[int] = []
    spreader.submit(seen.append, list(range(7)))
    assert seen == list(range(7)) and spreader.statistics().pending_calls == 0


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


# -- the progressive hub's stream sinks -------------------------------------------------------


class FakeTransport:
    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[bytes] = []
        self.buffered = buffered
        self.aborted = False
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing or self.aborted

    def abort(self) -> None:
        self.aborted = True


def make_hub(**overrides: Any) -> ProgressiveHub:
    values: dict[str, Any] = {
        "max_lag_ms": 2000,
        "burst_ms": 100,
        "frame_ms": 20.0,
        "bitrate_bps": 64000,
        "batch_ms": 100,
        "spreader": Spreader(2),
    }
    values.update(overrides)
    return ProgressiveHub(**values)


async def test_sinks_get_one_chunk_per_batch_and_a_burst_without_duplicates() -> None:
    hub = make_hub()
    assert hub.batch_frames == 5
    listener = hub.subscribe()  # an app-path listener keeps the plain burst (5 frames)
    for i in range(7):  # one batch written (no sinks yet), two frames pending
        hub.publish(bytes([100 + i]))
    transport = FakeTransport()
    ended: list[bool] = []
    late = hub.subscribe()
    assert late.statistics().queued_frames == 5 and listener.statistics().queued_frames == 7
    sink = hub.attach(transport, ended.append)  # type: ignore[arg-type]
    assert sink is not None
    # the burst: the most recent frames (burst + one batch: up to 10), the
    # pending two included
    assert transport.writes == [http_chunk(bytes(range(100, 107)))]
    for i in range(7, 13):
        hub.publish(bytes([100 + i]))
    # so the next batch (5..9) brings it only what the burst did not carry
    assert transport.writes[1:] == [http_chunk(bytes([107, 108, 109]))]
    hub.close()
    assert transport.writes[2:] == [http_chunk(bytes([110, 111, 112])), LAST_CHUNK]
    assert ended == [False] and hub.statistics().listeners == 0 and late.closed
    received = b"".join(transport.writes)
    for i in range(13):
        assert received.count(bytes([100 + i])) == 1, i


async def test_sink_over_the_lag_bound_is_aborted_and_counted_others_unaffected() -> None:
    hub = make_hub(max_lag_ms=1000, burst_ms=0, spreader=Spreader(1))
    assert hub.max_lag_bytes >= 10_000  # 1 s at 64 kbit/s with slack
    dropped_before = metrics.PROGRESSIVE_DROPPED._value.get()
    slow, fast = FakeTransport(), FakeTransport()
    slow_end: list[bool] = []
    hub.attach(slow, slow_end.append)  # type: ignore[arg-type]
    hub.attach(fast, lambda dropped: None)  # type: ignore[arg-type]
    for i in range(5):
        hub.publish(bytes([i]))
    await asyncio.sleep(0)  # the second slice (batch of one listener per turn)
    assert len(slow.writes) == len(fast.writes) == 1
    slow.buffered = hub.max_lag_bytes + 1  # it stopped reading
    for i in range(5):
        hub.publish(bytes([i]))
    await asyncio.sleep(0)
    assert slow.aborted and slow_end == [True]
    assert metrics.PROGRESSIVE_DROPPED._value.get() == dropped_before + 1
    assert len(fast.writes) == 2 and not fast.aborted and hub.statistics().listeners == 1


def test_detached_and_closing_sinks_are_skipped() -> None:
    hub = make_hub(burst_ms=0, spreader=Spreader(10))
    gone, closing = FakeTransport(), FakeTransport()
    sink = hub.attach(gone, lambda dropped: None)  # type: ignore[arg-type]
    assert sink is not None
    hub.attach(closing, lambda dropped: None)  # type: ignore[arg-type]
    hub.detach(sink)
    hub.detach(sink)
    closing.closing = True
    for i in range(5):
        hub.publish(bytes([i]))
    assert gone.writes == [] and closing.writes == [] and hub.statistics().listeners == 0
    hub.close()
    assert hub.attach(FakeTransport(), lambda dropped: None) is None  # type: ignore[arg-type]
