"""The admission decision and the line's pointer, table-driven."""

from __future__ import annotations

from dataclasses import replace

import pytest

from townhall.policy.admission import (
    DEGRADED,
    Batch,
    Capacity,
    QueueState,
    advance,
    decide,
    may_have_called,
    newest,
    number_of,
    phase_of,
    shuffle,
)

EMPTY = QueueState()
LINE = QueueState(issued=20, through=10, lottery=0, batches=(Batch(100.0, 8, 10, 1),))

# (kind, capacity, line, phase, number) -> (outcome, code, status, delivery)
CASES = [
    # no cap: everyone in, no queue, even before the start
    ("arrival", Capacity(0, 10_000), EMPTY, "open", None, "admit", "admitted", 200, "llhls"),
    ("arrival", Capacity(0, 5), EMPTY, "waiting_room", None, "admit", "admitted", 200, "llhls"),
    # room and nobody waiting
    ("arrival", Capacity(10, 9), EMPTY, "open", None, "admit", "admitted", 200, "llhls"),
    # full
    ("arrival", Capacity(10, 10), EMPTY, "open", None, "queue", "full", 202, "llhls"),
    # places free but all reserved for called tickets: queue
    ("arrival", Capacity(10, 9), LINE, "open", None, "queue", "full", 202, "llhls"),
    # people waiting: nobody new passes them, even with room
    ("arrival", Capacity(100, 0), LINE, "open", None, "queue", "full", 202, "llhls"),
    # before the start: everyone to the draw; before the waiting room opens: refused
    (
        "arrival",
        Capacity(10, 0),
        EMPTY,
        "waiting_room",
        None,
        "queue",
        "before_start",
        202,
        "llhls",
    ),
    ("arrival", Capacity(10, 0), EMPTY, "closed", None, "refuse", "not_open", 503, "llhls"),
    # renewals always: a lowered cap or a full node cuts nobody off
    ("renewal", Capacity(1, 50, 10, 10), LINE, "open", None, "admit", "renewal", 200, "llhls"),
    # node full
    ("arrival", Capacity(0, 0, 10, 10), EMPTY, "open", None, "refuse", "node_full", 503, "llhls"),
    ("ticket", Capacity(10, 0, 10, 10), LINE, "open", 9, "refuse", "node_full", 503, "llhls"),
    # tickets: before the draw, before its turn, in its reserved place
    ("ticket", Capacity(10, 10), LINE, "open", None, "queue", "not_drawn", 202, "llhls"),
    ("ticket", Capacity(10, 5), LINE, "open", 15, "queue", "not_your_turn", 202, "llhls"),
    ("ticket", Capacity(10, 9), LINE, "open", 9, "admit", "ticket", 200, "llhls"),
    # reserved place but the space is full (cap lowered meanwhile): waits
    ("ticket", Capacity(10, 10), LINE, "open", 9, "queue", "next", 202, "llhls"),
    # called long ago (no open batch): needs a free place
    ("ticket", Capacity(10, 8), LINE, "open", 3, "admit", "ticket", 200, "llhls"),
    ("ticket", Capacity(10, 9), LINE, "open", 3, "queue", "next", 202, "llhls"),
    # uncapped space: a ticket from when it had a cap just comes in
    ("ticket", Capacity(0, 9), LINE, "open", 15, "admit", "ticket", 200, "llhls"),
    # degrade before queueing: LL-HLS budget spent
    ("arrival", Capacity(10, 2, 0, 0, 5, 5), EMPTY, "open", None, "admit", "admitted", 200, "hls"),
    ("arrival", Capacity(0, 2, 0, 0, 5, 4), EMPTY, "open", None, "admit", "admitted", 200, "llhls"),
]


@pytest.mark.parametrize(
    ("kind", "capacity", "line", "phase", "number", "outcome", "code", "status", "delivery"),
    CASES,
)
def test_decide(kind, capacity, line, phase, number, outcome, code, status, delivery) -> None:  # type: ignore[no-untyped-def]
    decision = decide(kind, capacity, line, phase=phase, number=number)
    assert (decision.outcome, decision.code, decision.status, decision.delivery) == (
        outcome,
        code,
        status,
        delivery,
    )
    assert decision.detail.endswith(".")
    if delivery == "hls":
        assert decision.detail == DEGRADED


def test_before_its_turn_says_where() -> None:
    d = decide("ticket", Capacity(10, 10), LINE, phase="open", number=12_355)
    assert d.detail == "Your turn has not come yet: you are number 12,345 in line."


def test_phase() -> None:
    assert phase_of("live", None, 0, 600) == "open"
    assert phase_of("ended", 50.0, 0, 600) == "open"
    assert phase_of("scheduled", 1000.0, 300.0, 600) == "closed"
    assert phase_of("scheduled", 1000.0, 400.0, 600) == "waiting_room"
    assert phase_of("scheduled", 1000.0, 2000.0, 600) == "waiting_room"  # late host


def test_advance_moves_by_rate_and_free_places() -> None:
    s = QueueState(issued=100, lottery=0, last_s=0.0)
    s = advance(s, 1.0, cap=1000, admitted=0, rate_per_s=10, claim_s=5, live=True)
    assert s.through == 10 and s.reserved == 10
    s = s.claimed(3).claimed(4)
    assert s.reserved == 8
    # only 2 free places: the pointer moves by 2
    s = advance(s, 2.0, cap=20, admitted=10, rate_per_s=10, claim_s=5, live=True)
    assert s.through == 12
    # the unclaimed places of the first batch are given on once it closes
    s = advance(s, 6.5, cap=20, admitted=12, rate_per_s=10, claim_s=5, live=True)
    # (the second batch, 2 places, is still open: 20 - 12 admitted - 2 = 6 free)
    assert [(b.lo, b.hi) for b in s.batches] == [(10, 12), (12, 18)]
    assert s.through == 18
    assert s.released == 8  # the first batch's unclaimed places


def test_advance_is_bounded_after_a_quiet_spell() -> None:
    s = QueueState(issued=10_000, lottery=0, last_s=0.0)
    s = advance(s, 3600.0, cap=0, admitted=0, rate_per_s=100, claim_s=5, live=True)
    assert s.through == 200


def test_advance_waits_for_the_start_then_draws() -> None:
    s = QueueState(issued=500, last_s=0.0)
    s = advance(s, 1.0, cap=100, admitted=0, rate_per_s=50, claim_s=5, live=False)
    assert s.through == 0 and s.lottery is None
    s = advance(s, 1.5, cap=100, admitted=0, rate_per_s=50, claim_s=5, live=True)
    assert s.lottery == 500 and s.through == 25


def test_never_past_the_last_number() -> None:
    s = QueueState(issued=3, lottery=0, last_s=0.0)
    s = advance(s, 10.0, cap=0, admitted=0, rate_per_s=100, claim_s=5, live=True)
    assert s.through == 3 and s.waiting == 0


def test_shuffle_is_a_keyed_permutation() -> None:
    for size in (1, 2, 3, 7, 64, 1000, 1025):
        image = sorted(shuffle(i, size, b"k") for i in range(1, size + 1))
        assert image == list(range(1, size + 1))
    order_a = [shuffle(i, 1000, b"k1") for i in range(1, 1001)]
    order_b = [shuffle(i, 1000, b"k2") for i in range(1, 1001)]
    assert order_a != order_b
    # the first arrivals are spread over the line, not kept at its head
    assert sum(order_a[:100]) / 100 > 300
    with pytest.raises(ValueError):
        shuffle(0, 10, b"k")


def test_number_of() -> None:
    assert number_of(5, None, b"k") is None
    assert number_of(501, 500, b"k") == 501
    assert 1 <= (number_of(5, 500, b"k") or 0) <= 500


def test_speed_is_measured_only_while_someone_waits() -> None:
    s = QueueState(issued=100, lottery=0, last_s=0.0, speed_per_s=10.0)
    s = advance(s, 1.0, cap=0, admitted=0, rate_per_s=20, claim_s=5, live=True)
    assert s.speed_per_s > 10.0  # 20 called, 80 still waiting
    emptied = advance(
        QueueState(issued=3, lottery=0, last_s=0.0, speed_per_s=10.0),
        1.0,
        cap=0,
        admitted=0,
        rate_per_s=20,
        claim_s=5,
        live=True,
    )
    assert emptied.through == 3 and emptied.speed_per_s == 10.0


# ------------------------------------------------------- views of one line on many nodes


def test_newest_never_keeps_an_older_line() -> None:
    old = QueueState(issued=5, through=0, lottery=0, version=3)
    moved = QueueState(issued=5, through=1, lottery=0, version=4, batches=(Batch(1.0, 0, 1),))
    assert newest(None, old) is old
    assert newest(old, moved) is moved
    assert newest(moved, old) is moved  # a slow read arriving late is ignored
    # same version: the larger counts of issued numbers and claims win
    mine = replace(moved, issued=7, batches=(Batch(1.0, 0, 1, claimed=1),))
    merged = newest(mine, moved)
    assert merged.issued == 7 and merged.batches[0].claimed == 1 and merged.through == 1


def test_advance_counts_versions() -> None:
    s = QueueState(issued=3, lottery=0, last_s=0.0)
    assert advance(s, 1.0, cap=0, admitted=0, rate_per_s=1, claim_s=5, live=True).version == 1
    assert advance(s, 1.0, cap=0, admitted=0, rate_per_s=1, claim_s=5, live=False).version == 1


@pytest.mark.parametrize(
    ("number", "last_s", "expected"),
    [
        (None, 100.0, True),  # not drawn here: the draw may have happened elsewhere
        (10, 100.0, True),  # called already in this view (the count may be stale)
        (11, 100.0, True),  # next in line
        (10 + 24, 100.0, True),  # 2 s of allowance + 10/s for 1 s (+1 s slack) + 1
        (10 + 100, 100.0, False),  # far back: no newer line can have called it yet
        (10 + 100, 90.0, True),  # an old view: it may have
    ],
)
def test_may_have_called(number: int | None, last_s: float, expected: bool) -> None:
    s = QueueState(issued=500, through=10, lottery=0, last_s=last_s)
    assert may_have_called(s, number, 101.0, rate_per_s=10, slack_s=1.0) is expected


def test_the_full_lines_speed_is_measured() -> None:
    s = QueueState(issued=1000, through=100, lottery=0, last_s=0.0)
    step = {"cap": 100, "rate_per_s": 50.0, "claim_s": 5.0, "live": True}
    s = advance(s, 1.0, admitted=100, **step)  # type: ignore[arg-type]
    assert s.full_rate is None and s.free == 0  # full, no place freed yet: unknown
    # the first places free: called, but that interval only partly saw leaves
    s = advance(s, 2.0, admitted=97, **step)  # type: ignore[arg-type]
    assert s.through == 103 and s.full_rate is None
    t = 2.0
    for _ in range(3):  # then 10 a second (those called came in, 10 others left)
        assert s.full_rate is None  # known after 3 s of it
        t += 1.0
        s = advance(replace(s, batches=()), t, admitted=90, **step)  # type: ignore[arg-type]
    assert s.full_rate == pytest.approx(10.0) and s.through == 133
    # 20 a second: faster
    s = advance(replace(s, batches=()), t + 1, admitted=80, **step)  # type: ignore[arg-type]
    assert s.through == 153 and 10.0 < (s.full_rate or 0) < 20.0
    # with free places the rate, not the leaves, bounds the line: not measured
    before = s.full_rate
    s = advance(replace(s, batches=()), t + 2, admitted=0, **step)  # type: ignore[arg-type]
    assert s.through == 153 + 100 and s.full_rate == before  # two seconds of allowance


def test_the_settled_speed_is_cap_over_the_listening_time() -> None:
    """A full space whose listeners each stay 10 s: the line's measured speed
    swings wave by wave, its settled speed is 100 / 10 s from the first
    departures on."""
    step = {"cap": 100, "rate_per_s": 50.0, "claim_s": 5.0, "live": True}
    s = QueueState(issued=5000, lottery=0, last_s=0.0)
    calls: list[tuple[float, int]] = []  # (time, how many) called
    settled: list[float] = []
    measured: list[float] = []
    for t in range(1, 121):
        admitted = sum(n for at, n in calls if at > t - 10.0)  # everyone called came at once
        before = s.through
        s = advance(replace(s, batches=()), float(t), admitted=admitted, **step)  # type: ignore[arg-type]
        calls.append((float(t), s.through - before))
        if s.settled_rate is not None and t > 20:
            settled.append(s.settled_rate)
        if s.full_rate is not None and t > 20:
            measured.append(s.full_rate)
    assert s.settled_rate == pytest.approx(10.0, rel=0.05)
    assert min(settled) > 9.0 and max(settled) < 11.0
    assert max(measured) - min(measured) > 2 * (
        max(settled) - min(settled)
    )  # the swing it replaces


def test_the_settled_speed_waits_for_the_rest_of_the_first_batch() -> None:
    """Listeners who stay 10 to 14 s: the first to leave are the quickest, so
    their mean alone is short; the whole batch's mean is estimated from the
    spread of their times so far."""
    step = {"cap": 100, "rate_per_s": 100.0, "claim_s": 5.0, "live": True}
    s = QueueState(issued=5000, lottery=0, last_s=0.0)
    s = advance(s, 1.0, admitted=0, **step)  # type: ignore[arg-type]
    assert s.through == 100  # all called at 1 s; they leave at 11..15 s, 20 a second
    assert s.settling and s.settled_rate is None  # the cap is called: being measured
    for t in range(2, 14):
        left = max(0, min(100, 20 * (t - 10)))
        admitted = 100 - left + (s.through - 100)  # those called since came in
        s = advance(replace(s, batches=()), float(t), admitted=admitted, **step)  # type: ignore[arg-type]
    # at 13 s, 60 have left after 10-12 s (their mean: 11 s), 40 are in after
    # 12 s; the batch's mean is 12 s (whole-second ticks make it 11.7)
    assert s.settled_rate is not None and not s.settling
    assert 100 / s.settled_rate == pytest.approx(12.0, rel=0.03)
    assert 100 / s.settled_rate > s.listen_sum_s / s.listen_n + 0.4  # the times matched: 11.1
