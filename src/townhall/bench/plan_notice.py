"""When the first page learns of the draw: the start delay's one random part.

:func:`~townhall.bench.plan_inputs.notice_delays` spreads the notice over the
pages (what the crowd's posts cost, and when). The start delay is the first
page's notice alone, and that is not a share of a spread: the pages behind one
cache read the same copy of queue.json, so the cache's phase is the same for
all of them, and one run lands anywhere in it. This gives that phase as a
distribution (equally likely values), so a run is compared with where it can
fall, and several runs with its mean.

Pure: a scenario in, seconds out.
"""

from __future__ import annotations

import math

from townhall.bench.plan_inputs import Scenario, weighted_percentile

DRAW_PHASES = 100  # where in a whole second the draw falls
SHARED_PHASES = 40  # the one poller's phase (bench storm --poll shared)
MAX_FETCHES = 60


def holds_draw(age_s: float, nodes: int, interval_s: float) -> float:
    """The chance that a node asked ``age_s`` after the draw answers with it:
    the node that drew (one of ``nodes``) has it at once; another learns of
    the go-live within ``interval_s``, at a phase of its own (the space
    feed's delay, or its next space-index refresh without it: see
    ``Scenario.index_delay_s``), and renders the drawn line then."""
    if nodes <= 1 or interval_s <= 0:
        return 1.0
    return 1.0 / nodes + (1.0 - 1.0 / nodes) * min(1.0, max(0.0, age_s) / interval_s)


def _first_copy(
    first_s: float, period_s: float, nodes: int, interval_s: float, caches: int = 1
) -> list[tuple[float, float]]:
    """(seconds after the draw, chance) of the first copy that holds the
    draw at any of ``caches`` caches that fetch together, ``first_s`` after
    it and then every ``period_s``: each fetch of each cache reaches any
    node (:func:`holds_draw`)."""
    out: list[tuple[float, float]] = []
    left, t = 1.0, first_s
    for _ in range(MAX_FETCHES):
        p = 1.0 - (1.0 - holds_draw(t, nodes, interval_s)) ** caches
        out.append((t, left * p))
        left *= 1.0 - p
        if left < 1e-9 or period_s <= 0:
            break
        t += period_s
    return out


def first_notice(s: Scenario, waiting: float, points: int = 20) -> list[float]:
    """Seconds from the draw until the first of ``waiting`` pages reads it
    in queue.json and posts its ticket, as ``points`` equally likely values,
    shortest first.

    Behind a cache (``cache_nodes``, ``doc_max_age_s`` above 0) every page of
    that cache reads the cache's copy. nginx fetches it again at the first
    request after it expired, and its cache clock counts whole seconds, so it
    does so on a whole second, every ``doc_max_age_s`` (rounded, at least 1:
    a copy with max-age 1 is fetched every 2 s, see :func:`storm_notice`),
    counted from the second its first fetch fell in. Caches that the crowd
    reached in the same second keep the same seconds (NTP), so they fetch
    together: more caches do not bring the fetch sooner. The draw (at
    go-live, ``pre_s``) falls anywhere in that cycle, or, with
    ``queue_first_fetch_s`` (when the caches first fetched, in the night's
    time), where that puts it, the first fetch anywhere in its second. A
    fetch reaches one of the ``origin_nodes``, which answers with the draw if
    it drew or learned of the go-live since (``Scenario.index_delay_s``: the
    space feed's few ms, or ``index_refresh_s`` when the go-live is not
    published; :func:`holds_draw`); if no cache's did, the next fetch. The first to read
    the new copy is the page whose request set off its fetch, the first
    after the whole second (a poll's share of the pages behind that cache).
    Then ``doc_lag_s`` and the shortest look of those pages
    (``claim_delay_s``).

    ``queue_poll_shared`` (`bench storm --poll shared`): one poller for all
    pages reads nginx's copy, which its reads set off, at a phase of its
    own: a cache whose fetches are ``queue_poll_s`` apart at any phase.

    Without a cache (or ``doc_max_age_s`` 0), pages ask the nodes themselves:
    the first to ask the node that drew learns it (a poll over the pages
    that ask that node)."""
    pages = max(1.0, waiting)
    nodes = max(1, s.origin_nodes)
    caches = max(1, s.cache_nodes or 0)
    refresh = s.index_delay_s
    samples: list[tuple[float, float]] = []
    if s.queue_poll_shared:
        # the poller's reads are the fetches; its phase is the run's own
        look = s.claim_delay_s / (pages + 1)
        for j in range(SHARED_PHASES):
            first = (j + 0.5) / SHARED_PHASES * s.queue_poll_s
            samples += [
                (t + s.doc_lag_s + look, c / SHARED_PHASES)
                for t, c in _first_copy(first, s.queue_poll_s, nodes, refresh)
            ]
    elif not s.cache_nodes or s.doc_max_age_s <= 0:
        asked = s.queue_poll_s * nodes / (pages + 1)
        samples = [(asked + s.doc_lag_s + s.claim_delay_s / (pages + 1), 1.0)]
    else:
        period = max(1, round(s.doc_max_age_s))
        after = s.doc_lag_s + (s.queue_poll_s + s.claim_delay_s) / (pages / caches + 1)
        for i in range(DRAW_PHASES):
            u = (i + 0.5) / DRAW_PHASES
            if s.queue_first_fetch_s is None:
                first = u * period  # the draw anywhere in the fetch cycle
            else:
                # the first fetch u s into its second; fetched again every
                # period from that second on
                grid = s.queue_first_fetch_s - u
                first = grid + (math.floor((s.pre_s - grid) / period) + 1) * period - s.pre_s
            samples += [
                (t + after, c / DRAW_PHASES)
                for t, c in _first_copy(first, period, nodes, refresh, caches)
            ]
    return [
        float(weighted_percentile(samples, 100.0 * (k + 0.5) / points) or 0.0)
        for k in range(points)
    ]
