"""The first page's notice of the draw (townhall.bench.plan_notice): the one
random part of the start delay, as the phases a run can have."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from townhall.bench.plan_inputs import Scenario, storm_notice
from townhall.bench.plan_notice import first_notice, holds_draw

ONE = Scenario(
    arrivals=1000,
    over_s=10,
    cache_nodes=1,
    origin_nodes=1,
    doc_max_age_s=2.0,
    queue_poll_s=1.0,
    claim_delay_s=0.0,
    doc_lag_s=0.0,
)


def night(**kw: Any) -> Scenario:
    return replace(ONE, **kw)


def unpublished(**kw: Any) -> Scenario:
    """A night whose go-live is not published (the validation runs up to
    session 9): a node that did not draw learns of it at its next refresh."""
    return night(golive_published=False, **kw)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.parametrize(
    ("age_s", "nodes", "interval_s", "chance"),
    [
        (0.0, 1, 1.0, 1.0),  # one node: it drew
        (0.0, 3, 1.0, 1 / 3),  # at once: only the node that drew
        (0.5, 3, 1.0, 1 / 3 + 2 / 3 * 0.5),  # half the others ticked since
        (1.0, 3, 1.0, 1.0),  # a whole interval: every node ticked
        (5.0, 4, 1.0, 1.0),
        (-1.0, 2, 1.0, 0.5),  # (before the draw: only the drawing node's own answer)
        (0.3, 3, 0.0, 1.0),  # no interval: every node knows at once
        (0.1, 3, 0.2, 1 / 3 + 2 / 3 * 0.5),  # the validation's refresh, 0.2 s
        (0.0025, 3, 0.005, 1 / 3 + 2 / 3 * 0.5),  # the space feed: a few ms
        (0.005, 3, 0.005, 1.0),
    ],
)
def test_holds_draw(age_s: float, nodes: int, interval_s: float, chance: float) -> None:
    assert holds_draw(age_s, nodes, interval_s) == pytest.approx(chance)


def test_one_cache_one_node_waits_for_the_next_fetch_on_a_whole_second() -> None:
    # a copy fetched every 2 s on a whole second; the draw anywhere: uniform 0-2 s
    points = first_notice(ONE, waiting=1000, points=20)
    assert len(points) == 20
    assert points == sorted(points)
    assert mean(points) == pytest.approx(1.0, abs=0.01)
    assert points[0] == pytest.approx(0.05, abs=0.02)
    assert points[-1] == pytest.approx(1.95, abs=0.02)


def test_three_nodes_a_fetch_may_reach_one_that_has_not_seen_the_go_live() -> None:
    # the fetch after g = 1 - f s (half the runs) holds the draw with chance
    # 1/3 + 2g/3, else the one 2 s later: E = 2 + 1/2 - 2 x 2/3 = 7/6; the
    # fetch after 1 + g s (the other half) always holds it: E = 3/2
    s = unpublished(origin_nodes=3, index_refresh_s=1.0)
    points = first_notice(s, waiting=1000, points=200)
    assert mean(points) == pytest.approx((7 / 6 + 3 / 2) / 2, abs=0.02)
    # (the latest: a cache fetch that missed, and the next 2 s later)
    assert 2.5 < max(points) < 3.0


def test_caches_filled_in_the_same_second_fetch_together() -> None:
    # NTP and one crowd: every cache fetches on the same whole seconds, so a
    # thousand caches bring the fetch no sooner (uniform 0-2 s, one node)...
    many = first_notice(night(cache_nodes=1000), waiting=1_000_000, points=100)
    assert mean(many) == pytest.approx(1.0, abs=0.01)
    # ...but with three nodes a fetch that reached a node without the draw
    # is made up by another cache's fetch of the same second
    one = first_notice(unpublished(origin_nodes=3), waiting=1000, points=200)
    three = first_notice(unpublished(origin_nodes=3, cache_nodes=3), waiting=1000, points=200)
    assert mean(three) < mean(one) - 0.1
    assert mean(three) == pytest.approx(1.0 + 2.0 * _miss_share(3), abs=0.02)


def _miss_share(caches: int) -> float:
    # the fetch g s after the draw, g uniform over the 2 s cycle, misses at
    # every cache with chance (2/3 x (1 - g))^caches for g < 1 (refresh 1 s)
    steps = 10_000
    return sum((2 / 3 * (1 - (k + 0.5) / steps)) ** caches for k in range(steps)) / steps / 2


def test_the_first_fetch_sets_where_the_draw_falls() -> None:
    # bench storm: the caches' first fetch at its start (0), the draw 3.14 s
    # later; the first fetch u s into its second (u uniform), fetched again
    # 2, 4 s after that second: for u < 0.86 the fetch 0.86 - u s after the
    # draw, else 2.86 - u (one node: each holds it)
    s = night(pre_s=3.14, queue_first_fetch_s=0.0)
    points = first_notice(s, waiting=1000, points=100)
    late = 1 - 0.86
    assert mean(points) == pytest.approx(0.86 * 0.43 + late * (2.86 - 0.93), abs=0.01)
    assert sum(1 for p in points if p > 1.8) == pytest.approx(100 * late, abs=1)


def test_the_pages_own_waits_are_the_shortest_of_the_pages_behind_a_cache() -> None:
    # one page: its whole poll and look; a thousand: a thousandth of them
    lone = first_notice(night(claim_delay_s=1.0), waiting=1, points=20)
    crowd = first_notice(night(claim_delay_s=1.0), waiting=999, points=20)
    assert mean(lone) - mean(crowd) == pytest.approx((1.0 + 1.0) / 2 - 2.0 / 1000, abs=0.01)


def test_a_copy_with_max_age_1_is_fetched_every_second_in_the_model_of_max_age() -> None:
    # doc_max_age_s is the fetch period (storm_notice gives max-age + 1)
    assert mean(first_notice(night(doc_max_age_s=1.0), waiting=1000)) == pytest.approx(
        0.5, abs=0.01
    )


def test_without_a_cache_a_page_asks_the_node_that_drew() -> None:
    points = first_notice(night(cache_nodes=0, doc_lag_s=0.02), waiting=999, points=20)
    assert points == pytest.approx([0.02 + 1.0 / 1000] * 20)


def test_one_shared_poller_has_a_phase_of_its_own_and_a_poll_of_lag() -> None:
    s = replace(ONE, **storm_notice("shared", 0.05, poll_s=1.0, max_age_s=1.0))
    points = first_notice(s, waiting=1000, points=40)
    # its phase (0.5 s on average) and the copy's poll of lag (1 s)
    assert mean(points) == pytest.approx(1.5, abs=0.01)
    assert points[0] == pytest.approx(1.0, abs=0.05)


def test_the_storm_each_notice_at_50_ms() -> None:
    # bench storm --poll each, three nodes, one nginx, 50 ms away: the
    # validation's own scenario
    each = storm_notice("each", 0.05, poll_s=1.0, max_age_s=1.0)
    points = first_notice(replace(unpublished(origin_nodes=3), **each), waiting=600, points=200)
    pages = (1.05 + 0.0) / 601
    assert mean(points) == pytest.approx((7 / 6 + 3 / 2) / 2 + 0.025 + pages, abs=0.02)
    # published, every node shows the draw a few ms after it: as one node
    points = first_notice(replace(night(origin_nodes=3), **each), waiting=600, points=200)
    assert mean(points) == pytest.approx(1.0 + 0.025 + pages, abs=0.01)


def test_a_fast_index_refresh_rarely_sends_a_fetch_back_empty() -> None:
    # refreshing every 0.2 s (the validation's nodes), the fetch g s after the
    # draw (the early half of runs) misses it only for g < 0.2, with chance
    # 2/3 x (1 - g / 0.2): 2/3 x 0.1 of that half waits 2 s more
    s = unpublished(origin_nodes=3, index_refresh_s=0.2)
    fast = first_notice(s, waiting=1000, points=400)
    early = 0.5 + 2.0 * (2 / 3) * 0.1
    assert mean(fast) == pytest.approx((early + 1.5) / 2, abs=0.01)


def test_the_index_delay_is_the_feeds_when_the_go_live_is_published() -> None:
    assert ONE.golive_published and ONE.index_delay_s == pytest.approx(0.005)
    assert unpublished(index_refresh_s=0.2).index_delay_s == pytest.approx(0.2)
    with pytest.raises(ValueError, match="golive_bus_s"):
        night(golive_bus_s=-1.0).check()


def test_a_published_go_live_shows_on_every_node_at_once() -> None:
    # three nodes and the space feed: a fetch a few ms after the draw reaches
    # a node that has it, so no fetch comes back empty: as one node (uniform
    # 0-2 s), against 1.33 s and up to 3 s without it
    one = first_notice(ONE, waiting=1000, points=200)
    three = first_notice(night(origin_nodes=3), waiting=1000, points=200)
    assert mean(three) == pytest.approx(mean(one), abs=0.005)
    assert max(three) < 2.0
    old = first_notice(unpublished(origin_nodes=3), waiting=1000, points=200)
    assert mean(old) > mean(three) + 0.3 and max(old) > 2.5
