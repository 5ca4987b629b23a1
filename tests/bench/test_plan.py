"""The plan's model, pure: table tests, no event loop, no sockets."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from townhall.bench.plan import (
    Costs,
    Scenario,
    cache_nodes_needed,
    cold_start_s,
    listener_bytes_per_s,
    listener_request_rate,
    near_call_share,
    notice_delays,
    origin_rates,
    plan,
    room_wait_s,
    simulate,
    still_waiting,
    storm_notice,
    weighted_percentile,
)

RAW: dict[str, Any] = {
    "origin_us": {
        "join": 100.0,
        "join_queued": 200.0,
        "ticket": 300.0,
        "leave": 50.0,
        "queue_doc": 40.0,
        "part": 20.0,
        "blocking_reload": 30.0,
        "playlist": 40.0,
        "segment": 40.0,
        "state": 50.0,
    },
    "nginx_us": 10.0,
    "node_idle_cores": 0.01,
    "room_owner_cores": 0.03,
    "room_follower_cores": 0.005,
    "redis_us": 5.0,
    "redis_ops": {"join": 2.0, "join_queued": 3.0, "ticket": 4.0, "leave": 1.0, "part": 3.0, "node_s": 1.0},
    "bytes": {
        "part": 4396.0,
        "blocking_reload": 2000.0,
        "playlist": 2000.0,
        "segment": 33068.0,
        "state": 1000.0,
        "queue_doc": 500.0,
    },
    "client_request_s": 0.001,
}  # fmt: skip
COSTS = Costs.from_json(RAW)
BACKGROUND_1 = 0.01 + 0.03  # one node: idle + the room it runs


@pytest.mark.parametrize(
    ("age_s", "give_up", "share"),
    [
        (0.0, 0.05, 1.0),
        (3.0, 0.05, 1.0),
        (16.5, 0.05, 0.975),
        (30.0, 0.05, 0.95),
        (300.0, 0.05, 0.95),
        (16.5, 1.0, 0.5),
        (100.0, 0.0, 1.0),
    ],
)
def test_still_waiting(age_s: float, give_up: float, share: float) -> None:
    assert still_waiting(age_s, give_up) == pytest.approx(share)


@pytest.mark.parametrize(
    ("samples", "q", "value"),
    [
        ([], 50, None),
        ([(1.0, 1.0)], 99, 1.0),
        ([(1.0, 1.0), (2.0, 1.0), (3.0, 1.0), (4.0, 1.0)], 50, 2.0),
        ([(1.0, 99.0), (10.0, 1.0)], 99, 1.0),
        ([(1.0, 98.0), (10.0, 2.0)], 99, 10.0),
        ([(5.0, 0.0), (1.0, 3.0)], 100, 1.0),
        ([(3.0, 1.0), (1.0, 1.0)], 0, 1.0),
    ],
)
def test_weighted_percentile(
    samples: list[tuple[float, float]], q: float, value: float | None
) -> None:
    assert weighted_percentile(samples, q) == value


@pytest.mark.parametrize(
    ("delivery", "listeners", "waiting", "caches", "expect"),
    [
        # a cache tier: each cache asks once per part, per max-age, per poll
        ("llhls", 1000, 0, 4, {"part": 4 / 0.512, "blocking_reload": 4 / 0.512, "state": 2.0}),
        ("llhls", 2, 0, 4, {"part": 2 / 0.512, "state": 1.0}),
        ("llhls", 1000, 500, 4, {"queue_doc": 4.0, "ticket": 500 / 40}),
        # no cache tier: every listener asks the origin
        (
            "llhls",
            1000,
            0,
            0,
            {"part": 1000 / 0.512, "blocking_reload": 1000 / 0.512, "state": 200.0},
        ),
        ("hls", 1000, 0, 0, {"segment": 1000 / 4.096, "playlist": 1000 / 4.096}),
        ("llhls", 0, 100, 0, {"queue_doc": 100.0, "part": 0.0}),
    ],
)
def test_origin_rates(
    delivery: str, listeners: float, waiting: float, caches: int, expect: dict[str, float]
) -> None:
    s = Scenario(arrivals=1, over_s=1, delivery=delivery)
    rates = origin_rates(COSTS, s, listeners=listeners, waiting=waiting, caches=caches)
    for kind, value in expect.items():
        assert rates[kind] == pytest.approx(value), kind


@pytest.mark.parametrize(
    ("listeners", "cores", "gbps", "nodes"),
    [
        # CPU: 1e6 x 4.1 req/s x 10 us = 41 cores; at 16 x 0.7 = 11.2 per node -> 4
        (1_000_000, 16.0, 1000.0, 4),
        # egress: 1e6 x ((4396 + 2000) / 0.512 + 200) B/s x 8 = 100.5 Gbit/s; 10 x 0.7 -> 15
        (1_000_000, 1000.0, 10.0, 15),
        (0, 16.0, 10.0, 1),
        (10, 16.0, 10.0, 1),
    ],
)
def test_cache_nodes_needed(listeners: float, cores: float, gbps: float, nodes: int) -> None:
    s = Scenario(arrivals=1, over_s=1, cache_node_cores=cores, cache_node_gbps=gbps)
    assert listener_request_rate(COSTS, s) == pytest.approx(2 / 0.512 + 0.2)
    assert listener_bytes_per_s(COSTS, s) == pytest.approx(6396 / 0.512 + 200)
    assert cache_nodes_needed(COSTS, s, listeners, 0) == nodes


def test_calibration_without_a_figure_is_refused_naming_it() -> None:
    broken = {**RAW, "origin_us": {k: v for k, v in RAW["origin_us"].items() if k != "state"}}
    broken.pop("nginx_us")
    with pytest.raises(ValueError, match=r"state.*nginx_us.*plan_calibrate"):
        Costs.from_json(broken)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"arrivals": 0}, "arrivals"),
        ({"give_up": 2.0}, "give_up"),
        ({"delivery": "dash"}, "delivery"),
        ({"step_s": 2.0}, "step_s"),
        ({"utilization": 0.0}, "utilization"),
    ],
)
def test_bad_scenarios_say_what_to_change(bad: dict[str, Any], words: str) -> None:
    s = replace(Scenario(arrivals=10, over_s=1), **bad)
    with pytest.raises(ValueError, match=words):
        s.check()


def base(**kw: Any) -> Scenario:
    return replace(
        Scenario(arrivals=1000, over_s=10, origin_cores=4.0, cache_nodes=1, rtt_s=0.0), **kw
    )


def test_uncapped_everyone_in_at_once_and_the_origin_pays_the_joins() -> None:
    r = simulate(COSTS, base(duration_s=20.0))
    assert r.admitted == pytest.approx(1000)
    assert r.wait_s["max"] == 0.0
    # 1000 joins x 100 us and the background over 20 s, plus what the one cache
    # asks while anyone listens (from ~0 s on): part + reload per part, state.json
    joins = 1000 * 100e-6 / 20
    per_cache = (20 + 30) * 1e-6 / 0.512 + 50e-6 / 2.0
    expect = joins + BACKGROUND_1 + per_cache
    assert r.origin_cpu_mean_cores == pytest.approx(expect, rel=0.05)
    assert r.ttfa_after_admission_s["p50"] == pytest.approx(5 * 0.001)


def test_a_cap_with_nobody_leaving_admits_the_cap_and_the_rest_waits() -> None:
    r = simulate(COSTS, base(cap=300, admit_rate_per_s=1000.0, duration_s=60.0))
    assert r.admitted == pytest.approx(300, abs=1)
    assert r.waiting_at_end == pytest.approx(700, abs=1)
    assert r.peak_listeners <= 300 + 1e-6


def test_the_line_drains_at_the_admission_rate() -> None:
    # all 1000 arrive before the start (pre 12 s, over 10 s); 100 let in per second
    s = base(pre_s=12.0, cap=10_000, admit_rate_per_s=100.0)
    r = simulate(COSTS, s)
    assert r.admitted == pytest.approx(1000, abs=1)
    # drawn in a random order: whoever came first (at 0 s) may be called last,
    # 1000 / 100 s after go-live at 12 s, and claims after the notice delay
    # (the page's poll, the cached copy, its look: 1.5 s on average, at most
    # 3 s); the middle one arrived at ~5 s and is called ~5 s after go-live
    delays = notice_delays(s)
    assert sum(delays) / len(delays) == pytest.approx(1.5)
    assert r.wait_s["max"] == pytest.approx(12 + 1000 / 100 + delays[-1], abs=1.5)
    assert r.wait_s["p50"] == pytest.approx(12 - 5 + 500 / 100 + 1.5, abs=1.5)
    # the draw is at go-live (it does not wait for the interval's turn): it
    # calls a second's allowance; the first page learns it when the one
    # cache fetches queue.json again, on the next whole second (the draw
    # anywhere in a second: 0.5 s on average, 0.1-0.9 s from p10 to p90),
    # and hears the room five requests later
    assert r.start_delay_s == pytest.approx(0.5 + 5 * 0.001, abs=0.05)
    assert r.start_delay_spread_s["p10"] == pytest.approx(0.1, abs=0.06)
    assert r.start_delay_spread_s["p90"] == pytest.approx(0.9, abs=0.06)


def test_give_ups_leave_their_place_and_are_counted() -> None:
    s = base(pre_s=12.0, cap=10_000, admit_rate_per_s=20.0, give_up=0.5)
    r = simulate(COSTS, s)
    assert r.admitted + r.gave_up == pytest.approx(1000, abs=1)
    assert 300 < r.gave_up <= 500


def test_leaving_listeners_free_places_for_the_line() -> None:
    closed = simulate(COSTS, base(cap=100, admit_rate_per_s=100.0, duration_s=80.0))
    moving = simulate(COSTS, base(cap=100, admit_rate_per_s=100.0, listen_s=10.0, duration_s=80.0))
    assert closed.admitted == pytest.approx(100, abs=1)
    assert moving.admitted > 400


def test_an_origin_short_of_cores_answers_late() -> None:
    # 10,000 joins/s x 100 us = 1 core of joins on 0.5 core: 0.5 CPU-s backlog per second
    s = base(arrivals=100_000, over_s=10, origin_cores=0.5, duration_s=12.0)
    r = simulate(COSTS, s)
    assert r.join_latency_peak_s == pytest.approx(10 * 0.5 / 0.5, rel=0.15)
    fast = simulate(COSTS, replace(s, origin_cores=4.0))
    assert fast.join_latency_peak_s < 0.01


def test_plan_sizes_origin_cores_and_caches_from_the_peak() -> None:
    s = Scenario(arrivals=100_000, over_s=10, rtt_s=0.0, utilization=0.5)
    r = plan(COSTS, s)
    assert r.origin_cores == math.ceil(r.origin_cpu_peak_cores / 0.5) or (
        r.origin_cores >= r.origin_cpu_peak_cores / 0.5
    )
    assert r.origin_cores >= 2  # 10,000 joins/s x 100 us = 1 core, at 50 %
    assert r.cache_nodes == cache_nodes_needed(COSTS, s, r.peak_listeners, r.peak_waiting)
    assert r.join_latency_peak_s < 0.01


def test_twenty_million_in_a_minute_runs_in_seconds_and_is_bounded() -> None:
    s = Scenario(arrivals=20_000_000, over_s=60, cap=20_000_000, admit_rate_per_s=400_000, pre_s=10)
    seen: list[float] = []
    r = plan(COSTS, s, progress=seen.append)
    assert seen and seen[-1] == pytest.approx(1.0)
    assert r.admitted + r.gave_up + r.waiting_at_end == pytest.approx(20_000_000, rel=1e-6)
    assert r.peak_listeners <= 20_000_000 * (1 + 1e-9)
    # joins alone: 333,333/s x 100-200 us = 33-67 cores
    assert r.origin_cpu_peak_cores > 33


def test_a_moving_line_costs_every_node_while_anyone_waits() -> None:
    costs = Costs.from_json({**RAW, "line_tick_cores": 0.1})
    # cap 100 and nobody leaves: 900 wait for the whole 30 s after the first second
    s = base(cap=100, admit_rate_per_s=1000.0, origin_nodes=3, duration_s=30.0)
    r = simulate(costs, s)
    assert r.origin_cpu_by_kind["line"] == pytest.approx(3 * 0.1 * 29 / 30, rel=0.05)
    assert "line" not in simulate(costs, replace(s, cap=0)).origin_cpu_by_kind


def test_no_first_audio_before_the_room_has_parts_on_every_node() -> None:
    # no cache: the origin answers a held request the moment it can
    costs = Costs.from_json({**RAW, "room_start_s": 4.0})
    s = base(pre_s=2.0, cap=10_000, admit_rate_per_s=1000.0, duration_s=20.0, cache_nodes=0)
    r = simulate(costs, s)
    assert r.start_delay_s == pytest.approx(4.0 + 5 * 0.001, abs=0.01)
    assert r.ttfa_from_arrival_s["max"] is not None and r.ttfa_from_arrival_s["max"] >= 6.0 - 0.2


@pytest.mark.parametrize(
    ("admitted", "ready", "poll", "wait"),
    [
        (5.0, 4.0, 0.5, 0.0),  # the room is ready: no wait
        (4.0, 4.0, 0.5, 0.0),
        (3.9, 4.0, 0.5, 0.5),  # 0.1 s early: the lock's first wake, 0.5 s on
        (3.5, 4.0, 0.5, 0.5),  # on the wake itself
        (3.4, 4.0, 0.5, 1.0),
        (1.0, 4.0, 0.5, 3.0),
        (1.1, 4.0, 0.5, 3.0),
        (3.9, 4.0, 0.0, 0.1),  # no cache: at once
        (3.0, 4.0, 0.3, 1.2),
    ],
)
def test_room_wait_s(admitted: float, ready: float, poll: float, wait: float) -> None:
    assert room_wait_s(admitted, ready, poll) == pytest.approx(wait)


@pytest.mark.parametrize(
    ("requests", "request_s", "backlog_s", "took"),
    [
        (5, 0.05, 0.0, 0.25),  # five round trips of 50 ms, an idle origin
        (5, 0.05, 0.1, 0.75),  # each miss behind 0.1 s of queued work
        (1, 0.001, 0.0, 0.001),
        (0, 0.05, 1.0, 0.0),
    ],
)
def test_cold_start_s(requests: int, request_s: float, backlog_s: float, took: float) -> None:
    assert cold_start_s(requests, request_s, backlog_s) == pytest.approx(took)


def test_cold_start_s_refuses_negative_figures() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        cold_start_s(5, 0.05, -0.1)


def test_a_cold_cache_pages_asking_during_the_first_fill_wait_a_lock_wake() -> None:
    # measured (nginx's log, 2026-12-02 04:40 and 05:03): no one listens
    # before the draw, so the first pages' parts are misses; those held
    # 0.3-0.4 s behind the draw's posts made the pages that asked meanwhile
    # wait for the lock's timer (0.5 s); on an idle origin (05:30) none waited
    s = base(pre_s=12.0, cap=10_000, admit_rate_per_s=100.0)
    idle = simulate(COSTS, s)
    seconds = sorted(idle.first_audio_by_admission, key=int)
    assert idle.first_audio_by_admission[seconds[0]]["ttfa_max_s"] == pytest.approx(5 * 0.001)
    # on 0.1 core the draw's first share queues 0.1 s (see the next test):
    # the pages of the first page's step ask while its fills are in flight
    busy = simulate(COSTS, replace(s, origin_cores=0.1))
    seconds = sorted(busy.first_audio_by_admission, key=int)
    first = busy.first_audio_by_admission[seconds[0]]
    assert first["ttfa_max_s"] == pytest.approx(0.5 + 5 * 0.001)  # one wake, then five hits
    assert busy.first_audio_by_admission[seconds[1]]["ttfa_max_s"] == pytest.approx(5 * 0.001)


def test_the_draws_burst_delays_a_first_page_behind_it_not_one_ahead() -> None:
    # the draw's first share: 100 posts x 300 us = 0.03 CPU-s in one 0.1-s
    # step, on 0.1 core (0.01 CPU-s a step), and more in the steps after: a
    # first page whose cache fetched the draw before the crowd's posts came
    # (the run's phase early) waits for nothing; one whose cache fetched it
    # after (late) finds the posts' queue before its claim and its misses
    s = base(pre_s=12.0, cap=10_000, admit_rate_per_s=100.0)
    fast = simulate(COSTS, s)
    slow = simulate(COSTS, replace(s, origin_cores=0.1))
    assert fast.start_delay_s is not None and slow.start_delay_s is not None
    assert slow.start_delay_spread_s["p10"] == pytest.approx(fast.start_delay_spread_s["p10"])
    late_fast, late_slow = fast.start_delay_spread_s["p90"], slow.start_delay_spread_s["p90"]
    assert late_fast is not None and late_slow is not None
    assert late_slow > late_fast + 0.5
    assert slow.start_delay_s > fast.start_delay_s + 0.3


def test_pages_before_the_room_is_ready_hear_it_on_the_cache_locks_wake() -> None:
    # measured (nginx's log, 2026-12-02): the first request for the room's
    # playlist was held 3.1 s at the origin; the pages that asked meanwhile got
    # it 0.5, 1.0, ... 3.5 s after they asked (proxy_cache_lock's timer)
    costs = Costs.from_json({**RAW, "room_start_s": 4.0})
    s = base(pre_s=2.0, cap=10_000, admit_rate_per_s=1000.0, duration_s=20.0)
    r = simulate(costs, s)
    held = simulate(costs, replace(s, cache_nodes=0))
    assert r.start_delay_s is not None and held.start_delay_s is not None
    assert held.start_delay_s <= r.start_delay_s < held.start_delay_s + 0.5
    # each cohort waits a whole number of wakes, then the five requests
    early = [v for k, v in r.first_audio_by_admission.items() if int(k) < 3]  # before 3 s
    assert early
    for second in early:
        wakes = (second["ttfa_p50_s"] - 5 * 0.001) / 0.5
        assert wakes == pytest.approx(round(wakes), abs=0.02) and round(wakes) >= 1
    assert r.ttfa_after_admission_s["p99"] > held.ttfa_after_admission_s["p99"]


def test_a_called_ticket_claimed_costs_an_admitted_join() -> None:
    # cap 100, nobody leaves: 100 admitted at once, the rest wait; a larger cap
    # later is not modelled, so claims come only from a line that is called
    s = base(cap=100, admit_rate_per_s=50.0, pre_s=5.0, duration_s=30.0)
    r = simulate(COSTS, s)
    claimed = r.admitted
    assert claimed == pytest.approx(100, abs=1)
    # every admission here is a claim (all arrived before go-live): the join's cost
    assert r.origin_cpu_by_kind["claim"] * 30.0 == pytest.approx(claimed * 100e-6, rel=0.02)
    measured = Costs.from_json({**RAW, "origin_us": {**RAW["origin_us"], "claim": 400.0}})
    again = simulate(measured, s)
    assert again.origin_cpu_by_kind["claim"] * 30.0 == pytest.approx(claimed * 400e-6, rel=0.02)


def test_redis_per_part_is_the_owners_write_and_each_followers_read() -> None:
    split = Costs.from_json({**RAW, "redis_ops": {**RAW["redis_ops"], "part_follower": 0.5}})
    assert split.redis_ops_per_part(1) == pytest.approx(3.0)
    assert split.redis_ops_per_part(3) == pytest.approx(3.0 + 2 * 0.5)
    assert COSTS.redis_ops_per_part(3) == pytest.approx(3 * 3.0)  # older calibration
    s = base(origin_nodes=3, duration_s=10.0, arrivals=1)
    parts_s = (1 / 0.512) * (split.redis_ops_per_part(3) - COSTS.redis_ops_per_part(3))
    gap = simulate(split, s).redis_ops_mean_per_s - simulate(COSTS, s).redis_ops_mean_per_s
    assert gap == pytest.approx(parts_s, rel=0.02)


@pytest.mark.parametrize(
    ("nodes", "max_age_s", "poll_s", "look_s", "lag_s", "mean_s"),
    [
        # one uniform wait: the page's next poll
        (1, 0.0, 1.0, 0.0, 0.0, 0.5),
        # three nodes (a node reads the line up to 2/3 of an interval late),
        # a cached copy, a poll and a look: 1/3 + 0.5 + 0.5 + 0.5
        (3, 1.0, 1.0, 1.0, 0.0, 1 / 3 + 1.5),
        # the storm: nginx's stale copy one poll old (a fixed lag)
        (3, 0.0, 1.0, 1.0, 1.0, 1 / 3 + 0.5 + 0.5 + 1.0),
        (2, 1.0, 1.0, 0.0, 0.0, 0.25 + 0.5 + 0.5),
    ],
)
def test_notice_delays(
    nodes: int, max_age_s: float, poll_s: float, look_s: float, lag_s: float, mean_s: float
) -> None:
    s = Scenario(
        arrivals=1,
        over_s=1,
        origin_nodes=nodes,
        doc_max_age_s=max_age_s,
        queue_poll_s=poll_s,
        claim_delay_s=look_s,
        doc_lag_s=lag_s,
    )
    delays = notice_delays(s, 10)
    assert len(delays) == 10
    assert delays == sorted(delays)
    assert sum(delays) / 10 == pytest.approx(mean_s, rel=1e-6)
    top = lag_s + (nodes - 1) / nodes + max_age_s + poll_s + look_s
    assert lag_s <= delays[0] and delays[-1] <= top


@pytest.mark.parametrize(
    ("poll", "rtt_s", "expected"),
    [
        # each waiter fetches for itself: nginx's copy up to max-age + 1 s old
        # (its cache clock counts whole seconds), a read every poll + round
        # trip, looked at half a round trip after
        (
            "each",
            0.05,
            {
                "doc_max_age_s": 2.0,
                "queue_poll_s": 1.05,
                "claim_delay_s": 0.0,
                "doc_lag_s": 0.025,
                "queue_poll_shared": False,
            },
        ),
        (
            "each",
            0.0,
            {
                "doc_max_age_s": 2.0,
                "queue_poll_s": 1.0,
                "claim_delay_s": 0.0,
                "doc_lag_s": 0.0,
                "queue_poll_shared": False,
            },
        ),
        # one shared poller: its copy one poll old, each waiter looks every 0.5-1.5 s
        (
            "shared",
            0.05,
            {
                "doc_max_age_s": 0.0,
                "queue_poll_s": 1.0,
                "claim_delay_s": 1.0,
                "doc_lag_s": 1.0,
                "queue_poll_shared": True,
            },
        ),
    ],
)
def test_storm_notice(poll: str, rtt_s: float, expected: dict[str, float]) -> None:
    got = storm_notice(poll, rtt_s, poll_s=1.0, max_age_s=1.0)
    assert got == pytest.approx(expected)
    # the shared poller's lag is a whole poll; a page polling itself is not held by one
    s = Scenario(arrivals=1, over_s=1, origin_nodes=3, **got)
    mean = sum(notice_delays(s, 10)) / 10
    assert mean == pytest.approx(
        1 / 3
        + sum(got[k] for k in ("doc_max_age_s", "queue_poll_s", "claim_delay_s")) / 2
        + got["doc_lag_s"]
    )


def test_storm_notice_refuses_an_unknown_poll() -> None:
    with pytest.raises(ValueError, match="each or shared"):
        storm_notice("sometimes", 0.05, poll_s=1.0, max_age_s=1.0)


def test_pages_polling_themselves_start_sooner_than_one_shared_poller() -> None:
    # the same night, the notice of each storm mode: one shared poller's copy
    # is a poll old and looked at up to 1.5 s later, so every call (the draw's
    # first) comes later than to pages fetching for themselves
    s = base(pre_s=5.0, cap=200, admit_rate_per_s=60.0, rtt_s=0.05, duration_s=40.0)
    each = simulate(COSTS, replace(s, **storm_notice("each", 0.05, poll_s=1.0, max_age_s=1.0)))
    shared = simulate(COSTS, replace(s, **storm_notice("shared", 0.05, poll_s=1.0, max_age_s=1.0)))
    assert each.start_delay_s is not None and shared.start_delay_s is not None
    # (the first page's notice, over the run's phase: the shared poller's
    # phase, 0.5 s on average, and its whole poll of lag; against nginx's
    # copy, fetched again every 2 s on a whole second, 1 s on average, and
    # half a round trip)
    assert shared.start_delay_s - each.start_delay_s == pytest.approx(1.5 - 1.025, abs=0.06)


@pytest.mark.parametrize(
    ("rate", "length", "share"),
    [
        # reach: 2 s of the rate + the rate over 3.5 s (half an interval, 1 s, two intervals) + 1
        (200.0, 0, 1.0),
        (200.0, 1101, 1.0),
        (200.0, 2202, 0.5),
        (200.0, 11010, 0.1),
        (10.0, 112, 0.5),
    ],
)
def test_near_call_share(rate: float, length: float, share: float) -> None:
    s = Scenario(arrivals=1, over_s=1, admit_rate_per_s=rate)
    assert near_call_share(s, length) == pytest.approx(share)


def test_a_post_after_the_draw_costs_the_ticket_until_measured() -> None:
    assert COSTS.origin_us["ticket_drawn"] == COSTS.origin_us["ticket"]
    assert COSTS.redis_op("ticket_drawn") == COSTS.redis_op("ticket")


DRAWN = Costs.from_json(
    {
        **RAW,
        "origin_us": {**RAW["origin_us"], "ticket_drawn": 700.0},
        "redis_ops": {**RAW["redis_ops"], "ticket_drawn": 6.0},
    }
)


def test_every_ticket_is_posted_once_after_the_draw_at_its_measured_cost() -> None:
    # all 1000 arrive before go-live (12 s); no renewals (a renewal a day)
    s = base(pre_s=12.0, cap=10_000, admit_rate_per_s=1000.0, ticket_renew_s=86_400.0)
    r = simulate(DRAWN, s)
    duration = r.timeline[-1]["t"] + s.step_s
    assert r.origin_cpu_by_kind["ticket_drawn"] * duration == pytest.approx(1000 * 700e-6, rel=0.01)
    assert r.redis_ops_by_kind["ticket_drawn"] * duration == pytest.approx(1000 * 6.0, rel=0.01)
    assert sum(r.redis_ops_by_kind.values()) == pytest.approx(r.redis_ops_mean_per_s)


def test_renewals_near_the_call_read_the_line_again() -> None:
    # cap 100, nobody leaves: 900 wait with a line moving at 10/s's reach (56
    # places): 56 of the 900 renew as post-draw tickets, the rest as renewals
    s = base(cap=100, admit_rate_per_s=10.0, duration_s=200.0)
    r = simulate(DRAWN, s)
    drawn = r.origin_cpu_by_kind["ticket_drawn"] / 700e-6
    far = r.origin_cpu_by_kind["ticket"] / 300e-6
    assert drawn / far == pytest.approx(56 / 844, rel=0.05)
    # Redis: a far renewal's 4 operations (RAW), a near one's 6
    assert r.redis_ops_by_kind["ticket"] / r.redis_ops_by_kind["ticket_drawn"] == pytest.approx(
        far * 4.0 / (drawn * 6.0), rel=1e-6
    )


SPARSE = Costs.from_json({**RAW, "origin_sparse_us": {"join": 400.0, "ticket": 900.0}})


@pytest.mark.parametrize(
    ("kind", "busy", "us"),
    [
        ("join", 0.0, 400.0),  # an idle loop: the one-at-a-time figure
        ("join", 1.0, 100.0),  # a busy one: 32 at once
        ("join", 0.7, 100.0 + 300.0 * 0.3),
        ("join", 2.0, 100.0),
        ("leave", 0.0, 50.0),  # not measured one at a time: the one figure
        ("ticket_drawn", 0.0, 900.0),  # not measured at all: the ticket's
        ("claim", 0.5, 250.0),  # nor this: the join's
    ],
)
def test_what_a_request_costs_on_a_loop_busy_so_often(kind: str, busy: float, us: float) -> None:
    assert SPARSE.request_us(kind, busy) == pytest.approx(us)


def test_a_quiet_origin_pays_the_one_at_a_time_cost_and_plan_sizes_at_its_target() -> None:
    # 1000 joins over 10 s on 4 cores: the loops are ~idle, each join costs 400 us
    r = simulate(SPARSE, base(duration_s=20.0))
    assert r.origin_cpu_by_kind["join"] * 20.0 == pytest.approx(1000 * 400e-6, rel=0.02)
    fixed = simulate(SPARSE, base(duration_s=20.0), busy=1.0)
    assert fixed.origin_cpu_by_kind["join"] * 20.0 == pytest.approx(1000 * 100e-6, rel=0.02)
    # sizing: cores for the peak at 50 % busy (100 + 300 x 0.5 = 250 us a join)
    sized = plan(SPARSE, Scenario(arrivals=100_000, over_s=10, rtt_s=0.0, utilization=0.5))
    assert sized.origin_cores >= math.floor(10_000 * 250e-6 / 0.5)


def test_first_audio_has_the_calibrations_tail() -> None:
    tailed = Costs.from_json({**RAW, "first_audio_p99_s": 0.05})
    r = simulate(tailed, base(duration_s=20.0))
    assert r.ttfa_after_admission_s["p50"] == pytest.approx(5 * 0.001)
    assert r.ttfa_after_admission_s["p99"] == pytest.approx(0.05)
    assert simulate(COSTS, base(duration_s=20.0)).ttfa_after_admission_s["p99"] == pytest.approx(
        5 * 0.001
    )


def test_every_call_is_claimed_when_the_notice_delays_span_several_ticks() -> None:
    # a line that outlives the arrivals (100/s in, 60/s let in) and pages that
    # see their call 2-5 s late: the shares of one call come after those of
    # the next, and none may be lost
    s = base(pre_s=5.0, cap=100_000, admit_rate_per_s=60.0, doc_lag_s=2.0, duration_s=60.0)
    r = simulate(COSTS, s)
    assert r.admitted == pytest.approx(1000, abs=1)
    assert r.waiting_at_end == pytest.approx(0, abs=1)


@pytest.mark.parametrize(("busy", "ops"), [(0.0, 6.0), (0.5, 5.0), (1.0, 4.0)])
def test_posts_in_flight_at_once_share_a_read_of_the_line(busy: float, ops: float) -> None:
    costs = Costs.from_json({**RAW, "redis_sparse_ops": {"ticket_drawn": 6.0}})
    assert costs.redis_op("ticket_drawn", busy) == pytest.approx(ops)  # 32 at once: the ticket's 4
    assert costs.redis_op("leave", busy) == pytest.approx(1.0)
