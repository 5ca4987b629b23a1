"""The fan-out, in process: the spreader's slices (the event loop gets a turn
between them) and counted failures; the progressive hub's stream sinks:
batching, burst, lag bound and end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from townhall import metrics
from townhall.origin.chunked import LAST_CHUNK, http_chunk
from townhall.origin.fanout import ProgressiveHub, Spreader

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

    before = metrics.LISTENER_WAKE_FAILURES._value.get()
    spreader.submit(call, [0, 1, 2])
    assert seen == [0, 2]
    assert "callback failed" in caplog.text and "RuntimeError: boom" in caplog.text
    assert spreader.statistics().failures == 1
    assert metrics.LISTENER_WAKE_FAILURES._value.get() - before == 1


def test_spreader_without_a_loop_finishes_at_once() -> None:
    spreader = Spreader(batch=2)
    seen: list[int] = []
    spreader.submit(seen.append, list(range(7)))
    assert seen == list(range(7)) and spreader.statistics().pending_calls == 0


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
