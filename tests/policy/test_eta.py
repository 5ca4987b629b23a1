"""The ETA model: admit rate while places are free, leave rate once full."""

from __future__ import annotations

import pytest

from townhall.policy.eta import eta_s

# (position, free places, admit rate, leave rate) -> seconds (None: unknown)
CASES = [
    (None, 10, 100.0, 5.0, None),
    (0, 10, 100.0, 5.0, 0.0),
    (50, 100, 100.0, None, 0.5),  # within the free places: the admit rate
    (150, 100, 100.0, None, None),  # past them, nobody has left yet: unknown
    (150, 100, 100.0, 0.0, None),
    # free places last 100 / (100 - 20) = 1.25 s: 125 called at 100/s, then 20/s
    (125, 100, 100.0, 20.0, 1.25),
    (325, 100, 100.0, 20.0, 1.25 + 200 / 20),
    (1000, 0, 100.0, 20.0, 50.0),  # full: only as fast as listeners leave
    (1000, 0, 100.0, 200.0, 10.0),  # leaving faster than admitting: the admit rate
    (10, 0, 0.0, 5.0, None),
]


@pytest.mark.parametrize(("position", "free", "admit", "leave", "expected"), CASES)
def test_eta(
    position: int | None, free: int, admit: float, leave: float | None, expected: float | None
) -> None:
    got = eta_s(position, free_places=free, admit_rate_per_s=admit, full_rate_per_s=leave)
    assert got == (None if expected is None else pytest.approx(expected))


def test_lag_is_added_to_a_known_eta_only() -> None:
    kw = {"free_places": 0, "admit_rate_per_s": 100.0, "lag_s": 1.5}
    assert eta_s(100, full_rate_per_s=10.0, **kw) == pytest.approx(11.5)
    assert eta_s(100, full_rate_per_s=None, **kw) is None
    assert eta_s(0, full_rate_per_s=10.0, **kw) == 0.0
