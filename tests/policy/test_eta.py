"""The ETA model: admit rate while places are free, leave rate once full."""

from __future__ import annotations

import math

import pytest

from townhall.policy.eta import (
    MAX_KNOTS,
    SPREAD_SHARE,
    Knots,
    batch_mean,
    called_at,
    eta_s,
    listen_sample,
    next_age,
    settled_rate,
    with_knot,
)

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
    def eta(position: int, full: float | None) -> float | None:
        return eta_s(
            position, free_places=0, admit_rate_per_s=100.0, full_rate_per_s=full, lag_s=1.5
        )

    assert eta(100, 10.0) == pytest.approx(11.5)
    assert eta(100, None) is None
    assert eta(0, 10.0) == 0.0


# (position, free places, admit rate, measured full rate, settled rate) -> seconds
SETTLED_CASES = [
    (1000, 0, 100.0, 40.0, 20.0, 50.0),  # the settled speed, not the swing of the moment
    (1000, 0, 100.0, None, 20.0, 50.0),  # known from listening times before the speed is
    (1000, 0, 100.0, 40.0, None, 25.0),  # not known yet: the measured speed, as before
    # free places last 100 / (100 - 20) s at the admit rate, then the settled speed
    (325, 100, 100.0, 50.0, 20.0, 1.25 + 200 / 20),
    (1000, 0, 100.0, 5.0, 0.0, None),  # nobody leaves once settled: unknown
    (50, 0, 100.0, 5.0, 200.0, 0.5),  # leaving faster than admitting: the admit rate
]


@pytest.mark.parametrize(
    ("position", "free", "admit", "full", "settled", "expected"), SETTLED_CASES
)
def test_eta_with_the_settled_speed(
    position: int,
    free: int,
    admit: float,
    full: float | None,
    settled: float | None,
    expected: float | None,
) -> None:
    got = eta_s(
        position,
        free_places=free,
        admit_rate_per_s=admit,
        full_rate_per_s=full,
        settled_rate_per_s=settled,
    )
    assert got == (None if expected is None else pytest.approx(expected))


# (position, free, admit, measured full rate, settled rate, settling) -> seconds
SETTLING_CASES = [
    # being measured: the measured speed (no-shows' places only) is not used
    (1000, 0, 100.0, 2.0, None, True, None),
    (50, 100, 100.0, 2.0, None, True, 0.5),  # within the free places: known
    (1000, 0, 100.0, 2.0, None, False, 500.0),  # not being measured: as before
    (1000, 0, 100.0, 2.0, 20.0, True, 50.0),  # known: the settled speed
]


@pytest.mark.parametrize(
    ("position", "free", "admit", "full", "settled", "settling", "expected"), SETTLING_CASES
)
def test_eta_while_the_settled_speed_is_measured(
    position: int,
    free: int,
    admit: float,
    full: float | None,
    settled: float | None,
    settling: bool,
    expected: float | None,
) -> None:
    got = eta_s(
        position,
        free_places=free,
        admit_rate_per_s=admit,
        full_rate_per_s=full,
        settled_rate_per_s=settled,
        settling=settling,
    )
    assert got == (None if expected is None else pytest.approx(expected))


def test_called_at_is_the_first_knot_through_a_number() -> None:
    knots = ((10.0, 5), (11.0, 8), (20.0, 12))
    assert called_at(knots, 1) == 10.0
    assert called_at(knots, 5) == 10.0
    assert called_at(knots, 5.5) == 11.0
    assert called_at(knots, 12) == 20.0
    assert called_at(knots, 13) is None
    assert called_at((), 1) is None


def test_the_history_keeps_what_can_still_be_matched() -> None:
    knots = with_knot((), 0.0, 100, cap=100)
    knots = with_knot(knots, 1.0, 100, cap=100)  # the pointer did not move: no knot
    assert knots == ((0.0, 100),)
    knots = with_knot(knots, 10.0, 150, cap=100)
    assert knots == ((0.0, 100), (10.0, 150))  # 51..100 are still in
    knots = with_knot(knots, 11.0, 200, cap=100)
    assert knots == ((10.0, 150), (11.0, 200))  # 1..100 have all left
    many: tuple[tuple[float, int], ...] = ()
    for i in range(1, 1000):
        many = with_knot(many, float(i), i, cap=10_000)
        assert len(many) <= MAX_KNOTS
    assert many[-1] == (999.0, 999)  # the newest knot is never thinned away


# (knots, now, pointer, freed, cap) -> (listening time, places) or None
SAMPLE_CASES = [
    # 100 called at 0, full; at 10 s the first 20 leave: matched with calls 1..20
    (((0.0, 100),), 10.0, 100, 20, 100, (10.0, 20)),
    # two waves: calls 101..200 at 11 s; the places freeing at 22 s are theirs
    (((0.0, 100), (11.0, 200)), 22.0, 200, 50, 100, (11.0, 50)),
    # the cap is still filling (pointer 60 of 100): free places, not departures
    (((0.0, 60),), 5.0, 60, 30, 100, None),
    # partly: only calls 1..10 are departures (the other 20 places were free)
    (((0.0, 80),), 5.0, 80, 30, 100, (5.0, 10)),
    ((), 5.0, 100, 10, 100, None),  # no history: no sample
    (((0.0, 100),), 5.0, 100, 0, 100, None),
]


@pytest.mark.parametrize(("knots", "now", "through", "freed", "cap", "expected"), SAMPLE_CASES)
def test_listen_sample(
    knots: Knots,
    now: float,
    through: int,
    freed: int,
    cap: int,
    expected: tuple[float, int] | None,
) -> None:
    assert listen_sample(knots, now, through=through, freed=freed, cap=cap) == expected


def test_settled_rate_is_cap_over_the_mean_listening_time() -> None:
    assert settled_rate(200, 19 * 10.0, 19) is None  # fewer than 20 departures yet
    assert settled_rate(200, 20 * 10.0, 20) == pytest.approx(20.0)
    assert settled_rate(30, 3 * 15.0, 3) == pytest.approx(2.0)  # a tenth of a small cap
    assert settled_rate(0, 100.0, 10) is None
    assert settled_rate(200, 0.0, 50) is None


def _centre(share: float) -> float:
    """Where the times matched so far sit on the batch, weighted as the sums
    are (e^-1 per cap's worth): the mean of u e^u over 0..share."""
    return ((share - 1) * math.exp(share) + 1) / (math.exp(share) - 1)


def _even(lo: float, hi: float, share: float) -> tuple[float, float, float]:
    """A batch whose listening times are spread evenly from ``lo`` to ``hi``,
    its first ``share`` gone: (mean of the matched times, share, next age)."""
    return lo + (hi - lo) * _centre(share), share, lo + (hi - lo) * share


# (mean of the times matched, share of the batch gone, next call's age) -> batch mean
BATCH_CASES = [
    (*_even(10, 30, 0.1), 20.0),  # evenly spread 10..30 s: the mean from a tenth on
    (*_even(10, 30, 0.3), 20.0),
    (*_even(10, 30, 0.55), 20.0),
    (*_even(5, 45, 0.2), 25.0),
    (15.0, 0.2, 15.0, 15.0),  # all stay 15 s: 15 s
    (15.0, 0.2, 14.0, 15.0),  # the next one younger than the mean (noise): no spread
    # fewer than a tenth gone: the spread is taken at share / SPREAD_SHARE of its slope
    (*_even(10, 30, 0.05), 10 + 20 * _centre(0.05) + 10 * (0.5 - _centre(0.05))),
]


@pytest.mark.parametrize(("mean", "share", "next_s", "expected"), BATCH_CASES)
def test_batch_mean(mean: float, share: float, next_s: float, expected: float) -> None:
    assert batch_mean(mean, share, next_s) == pytest.approx(expected)


def test_batch_mean_beats_the_shortest_times_on_a_long_tail() -> None:
    """Exponential listening times (mean 20 s), a fifth of the batch gone:
    the estimate is short (the tail is not seen yet) but nearer the truth
    than the mean of the times matched so far, or the next call's age."""
    share = 0.2
    grid = [share * (i + 0.5) / 1000 for i in range(1000)]
    weights = [math.exp(u - share) for u in grid]
    times = [-20.0 * math.log(1 - u) for u in grid]
    mean = sum(w * x for w, x in zip(weights, times, strict=True)) / sum(weights)
    next_s = -20.0 * math.log(1 - share)
    got = batch_mean(mean, share, next_s)
    assert max(mean, next_s) < got < 20.0
    assert share >= SPREAD_SHARE  # the slope is not shrunk here


def test_until_a_cap_has_left_the_batch_mean_is_used() -> None:
    # 20 of 200 matched: a tenth of the batch
    assert settled_rate(200, 20 * 8.0, 20, next_age_s=12.0, matched=20) == pytest.approx(
        200 / batch_mean(8.0, 0.1, 12.0)
    )
    assert settled_rate(200, 20 * 8.0, 20, next_age_s=8.0, matched=20) == pytest.approx(200 / 8)
    assert settled_rate(200, 20 * 8.0, 20, matched=20) == pytest.approx(200 / 8)  # no history
    assert settled_rate(200, 20 * 8.0, 20, next_age_s=12.0) == pytest.approx(200 / 8)
    assert settled_rate(200, 19 * 8.0, 19, next_age_s=12.0, matched=19) is None
    # a whole cap's worth has left (200 * (1 - 1/e) = 126.4): the mean covers whole batches
    assert settled_rate(200, 127 * 10.0, 127, next_age_s=14.0, matched=199) == pytest.approx(20.0)
    assert settled_rate(200, 126 * 10.0, 126, next_age_s=14.0, matched=199) == pytest.approx(
        200 / batch_mean(10.0, 199 / 200, 14.0)
    )


# (knots, now, pointer, cap) -> age of the next call to be matched (the oldest still in)
AGE_CASES = [
    (((0.0, 100), (11.0, 200)), 15.0, 150, 100, 15.0),  # 51 is next, called at 0
    (((0.0, 100), (11.0, 200)), 15.0, 200, 100, 4.0),  # 101, called at 11
    (((0.0, 60),), 15.0, 60, 100, None),  # the cap is not all taken from the line
    ((), 15.0, 200, 100, None),
]


@pytest.mark.parametrize(("knots", "now", "through", "cap", "expected"), AGE_CASES)
def test_next_age(knots: Knots, now: float, through: int, cap: int, expected: float | None) -> None:
    assert next_age(knots, now, through=through, cap=cap) == expected
