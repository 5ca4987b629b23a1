"""Jitter buffer: order, bounds, underruns."""

from __future__ import annotations

import numpy as np
import pytest

from townhall.media.jitter import JitterBuffer


def frame(value: int, n: int = 960) -> np.ndarray:
    return np.full(n, value, dtype=np.int16)


def test_frames_come_out_in_order_after_prefill() -> None:
    buf = JitterBuffer(depth_ms=60, frame_ms=20)
    assert buf.capacity == 3
    assert buf.prefill_frames == 2
    buf.push(frame(1))
    assert buf.pop() is None  # still prefilling: not an underrun
    buf.push(frame(2))
    buf.push(frame(3))
    out = [buf.pop() for _ in range(3)]
    assert [int(f[0]) for f in out if f is not None] == [1, 2, 3]
    stats = buf.statistics()
    assert (stats.frames_in, stats.frames_out, stats.dropped, stats.underruns) == (3, 3, 0, 0)


def test_overflow_drops_the_oldest_and_counts_it() -> None:
    buf = JitterBuffer(depth_ms=60, frame_ms=20)
    for i in range(1, 8):
        buf.push(frame(i))
    assert len(buf) == 3
    assert [int(buf.pop()[0]) for _ in range(3)] == [5, 6, 7]  # type: ignore[index]
    assert buf.statistics().dropped == 4


def test_underrun_gives_none_counts_and_waits_for_prefill_again() -> None:
    buf = JitterBuffer(depth_ms=80, frame_ms=20)
    assert buf.prefill_frames == 2
    buf.push(frame(1))
    buf.push(frame(2))
    assert buf.pop() is not None
    assert buf.pop() is not None
    assert buf.pop() is None
    assert buf.statistics().underruns == 1
    buf.push(frame(3))
    assert buf.pop() is None  # re-prefilling after the underrun
    buf.push(frame(4))
    assert int(buf.pop()[0]) == 3  # type: ignore[index]
    assert buf.statistics().underruns == 1


@pytest.mark.parametrize(("depth_ms", "capacity"), [(0, 1), (10, 1), (20, 1), (60, 3), (1000, 50)])
def test_capacity_is_depth_in_frames_at_least_one(depth_ms: int, capacity: int) -> None:
    buf = JitterBuffer(depth_ms=depth_ms, frame_ms=20)
    assert buf.capacity == capacity
    assert 1 <= buf.prefill_frames <= capacity


def test_a_frame_of_the_wrong_size_is_refused() -> None:
    buf = JitterBuffer(depth_ms=60)
    with pytest.raises(ValueError, match="960 mono samples"):
        buf.push(np.zeros(480, dtype=np.int16))


def test_clear_forgets_audio_and_prefills_again() -> None:
    buf = JitterBuffer(depth_ms=60, prefill_frames=1)
    buf.push(frame(1))
    buf.clear()
    assert len(buf) == 0
    assert buf.pop() is None
    assert buf.statistics().underruns == 0
