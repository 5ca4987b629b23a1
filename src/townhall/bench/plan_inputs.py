"""The plan's inputs and its small pure pieces: what things cost (measured),
the night to plan (:class:`Scenario`), and the arithmetic of request rates,
bytes and cache nodes that :mod:`townhall.bench.plan` steps through time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from townhall.policy.admission import QueueState

# -- inputs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Costs:
    """What one thing costs, measured (``benchmarks/plan_calibrate.py``).

    ``origin_us``: server CPU microseconds per request at the origin, by kind:
    ``join`` (answered 200), ``join_queued`` (answered 202 with a ticket),
    ``ticket`` (a ticket posted before the draw, or far from its turn: a
    renewal), ``ticket_drawn`` (a numbered ticket posted after the draw near
    enough to its turn that the node reads the line again first: the
    ``ticket`` figures where it was not measured), ``claim`` (a called
    ticket exchanged for a listener token while the line moves; the ``join``
    figures where it was not measured), ``leave``,
    ``queue_doc`` (queue.json), ``part``, ``blocking_reload`` (a parked LL-HLS
    reload, woken by the part's publish), ``playlist``, ``segment``, ``state``
    (state.json), measured 32 at once (a busy node); ``origin_sparse_us``:
    the same one at a time (a request that finds the node's loop idle pays
    its own wake-ups, and those of each Redis reply), where measured (see
    :meth:`request_us`); ``redis_sparse_ops`` likewise for Redis (posts in
    flight at once share one read of the line, :meth:`redis_op`). ``nginx_us``: a cache's CPU per request it answers.
    ``node_idle_cores``: one node's background CPU with no live room;
    ``room_owner_cores`` / ``room_follower_cores``: one live room on the node
    that runs it / on each node that follows it over the bus.
    ``redis_us``: Redis CPU per operation; ``redis_ops``: operations per
    ``join``, per ``ticket``, per ``part`` (owner's write and each follower's
    read; with ``part_follower`` measured, ``part`` is the owner's write and
    ``part_follower`` each follower's read), per node and second at rest
    (``node_s``).
    ``bytes``: answer sizes with headers; ``client_request_s``: one request as
    a player sees it with a few hundred players on the machine (`bench
    listeners`' first-audio p50 over its five requests; at least the idle
    round trip); ``first_audio_p99_s``: that run's first-audio p99 (the
    tail); ``room_start_s``: from the host's start until the room's first
    part is on every node;
    ``line_tick_cores`` (and ``redis_ops["line_s"]``): what each node spends
    per second on a space whose line is moving (the admission tick, queue.json)."""

    origin_us: Mapping[str, float]
    nginx_us: float
    node_idle_cores: float
    room_owner_cores: float
    room_follower_cores: float
    redis_us: float
    redis_ops: Mapping[str, float]
    bytes: Mapping[str, float]
    client_request_s: float
    room_start_s: float = 0.0
    first_audio_p99_s: float = 0.0
    line_tick_cores: float = 0.0
    part_s: float = 0.512
    segment_s: float = 4.096
    meta: Mapping[str, Any] = field(default_factory=dict)
    origin_sparse_us: Mapping[str, float] = field(default_factory=dict)
    redis_sparse_ops: Mapping[str, float] = field(default_factory=dict)

    ORIGIN_KINDS = (
        "join",
        "join_queued",
        "ticket",
        "leave",
        "queue_doc",
        "part",
        "blocking_reload",
        "playlist",
        "segment",
        "state",
    )

    def redis_ops_per_part(self, nodes: int) -> float:
        """Redis operations per part of one room on ``nodes`` nodes: the owner's
        write (``part``) and each follower's read (``part_follower``); an older
        calibration without the split counted ``part`` on every node."""
        follower = self.redis_ops.get("part_follower")
        if follower is None:
            return self.redis_ops["part"] * nodes
        return self.redis_ops["part"] + follower * (nodes - 1)

    def request_us(self, kind: str, busy: float) -> float:
        """CPU microseconds of one request of ``kind`` on a node whose loop is
        busy ``busy`` (0-1) of the time: an arrival finds it idle with
        probability 1 - busy and then costs the one-at-a-time figure."""
        saturated = self.origin_us[kind]
        sparse = self.origin_sparse_us.get(kind, saturated)
        return saturated + (sparse - saturated) * (1.0 - min(1.0, max(0.0, busy)))

    def redis_op(self, kind: str, busy: float = 1.0) -> float:
        """Redis operations per request of ``kind`` (a ticket's when not
        measured) on a node busy ``busy`` of the time: posts in flight at
        once share one read of the line (``redis_sparse_ops``: one at a time)."""
        saturated = self.redis_ops.get(kind, self.redis_ops["ticket"])
        sparse = self.redis_sparse_ops.get(kind, saturated)
        return saturated + (sparse - saturated) * (1.0 - min(1.0, max(0.0, busy)))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Costs:
        """Costs from the calibration JSON; a missing figure is a ValueError
        naming it (the plan never guesses a cost)."""
        missing = [k for k in cls.ORIGIN_KINDS if k not in data.get("origin_us", {})]
        for key in ("part", "blocking_reload", "playlist", "state", "queue_doc"):
            if key not in data.get("bytes", {}):
                missing.append(f"bytes.{key}")
        for key in ("join", "ticket", "part", "node_s"):
            if key not in data.get("redis_ops", {}):
                missing.append(f"redis_ops.{key}")
        optional = {
            "meta",
            "part_s",
            "segment_s",
            "room_start_s",
            "line_tick_cores",
            "origin_sparse_us",
            "first_audio_p99_s",
            "redis_sparse_ops",
        }
        names = {f.name for f in fields(cls)} - optional
        missing += [n for n in sorted(names) if n not in data]
        if missing:
            raise ValueError(
                "The calibration file lacks " + ", ".join(missing) + ": run "
                "benchmarks/plan_calibrate.py on this machine to measure them."
            )
        origin_us = {k: float(v) for k, v in data["origin_us"].items()}
        redis_ops = {k: float(v) for k, v in data["redis_ops"].items()}
        sizes = {k: float(v) for k, v in data["bytes"].items()}
        origin_us.setdefault("claim", origin_us["join"])
        redis_ops.setdefault("claim", redis_ops["join"])
        origin_us.setdefault("ticket_drawn", origin_us["ticket"])
        sparse = {k: float(v) for k, v in data.get("origin_sparse_us", {}).items()}
        for kind, like in (("claim", "join"), ("ticket_drawn", "ticket")):
            if kind not in sparse and like in sparse and kind not in data["origin_us"]:
                sparse[kind] = sparse[like]
        redis_ops.setdefault("ticket_drawn", redis_ops["ticket"])
        if "join" in sizes:
            sizes.setdefault("claim", sizes["join"])
        if "ticket" in sizes:
            sizes.setdefault("ticket_drawn", sizes["ticket"])
        return cls(
            origin_us=origin_us,
            nginx_us=float(data["nginx_us"]),
            node_idle_cores=float(data["node_idle_cores"]),
            room_owner_cores=float(data["room_owner_cores"]),
            room_follower_cores=float(data["room_follower_cores"]),
            redis_us=float(data["redis_us"]),
            redis_ops=redis_ops,
            bytes=sizes,
            client_request_s=float(data["client_request_s"]),
            room_start_s=float(data.get("room_start_s", 0.0)),
            first_audio_p99_s=float(data.get("first_audio_p99_s", 0.0)),
            line_tick_cores=float(data.get("line_tick_cores", 0.0)),
            part_s=float(data.get("part_s", 0.512)),
            segment_s=float(data.get("segment_s", 4.096)),
            meta=dict(data.get("meta", {})),
            origin_sparse_us=sparse,
            redis_sparse_ops={k: float(v) for k, v in data.get("redis_sparse_ops", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Scenario:
    """One night. ``cap`` 0: no cap. ``origin_cores`` / ``cache_nodes`` None:
    the model sizes them (:func:`plan`). ``pre_s``: the host goes live this
    long after the first arrival (arrivals before are drawn in a random
    order). ``listen_s`` 0: admitted listeners stay to the end.
    ``cache_nodes`` 0: listeners read the origin itself. A page learns of
    its call (and of the draw) from queue.json: see :func:`notice_delays`
    (``queue_poll_s``, ``doc_max_age_s``, ``doc_lag_s``, ``claim_delay_s``;
    ``queue_poll_shared``: one poller reads it for every page, as `bench
    storm --poll shared` does), and for the first page, the start delay's,
    :func:`townhall.bench.plan_notice.first_notice`."""

    arrivals: int
    over_s: float
    cap: int = 0
    admit_rate_per_s: float = 200.0
    pre_s: float = 0.0
    listen_s: float = 0.0
    give_up: float = 0.0
    delivery: str = "llhls"
    origin_nodes: int = 1
    origin_cores: float | None = None
    cache_nodes: int | None = None
    cache_node_cores: float = 16.0
    cache_node_gbps: float = 10.0
    utilization: float = 0.7
    rtt_s: float = 0.05
    # nginx's proxy_cache_lock: a request waiting on another's fill of the
    # same URI is woken every 0.5 s (fixed in nginx), not when the fill is done
    cache_lock_poll_s: float = 0.5
    claim_s: float = 6.0
    queue_interval_s: float = 1.0
    queue_poll_s: float = 1.0
    claim_delay_s: float = 1.0
    doc_max_age_s: float = 1.0
    doc_lag_s: float = 0.0
    queue_poll_shared: bool = False
    # how soon a node that did not draw shows the draw: it learns of the
    # go-live and draws-or-reads the line then (server/admission.py
    # tick_gone_live). Published (the space feed, store/space_feed.py, on by
    # default): every node within golive_bus_s of it. Not published (the
    # validation runs up to session 9): at its next space-index refresh
    # (space_index_refresh_ms), every index_refresh_s. See index_delay_s.
    golive_published: bool = True
    golive_bus_s: float = 0.005
    index_refresh_s: float = 1.0
    # when the caches first fetched queue.json (the night's time; None: the
    # draw falls anywhere in their fetch cycle), see plan_notice
    queue_first_fetch_s: float | None = None
    ticket_renew_s: float = 40.0
    state_poll_s: float = 5.0
    state_max_age_s: float = 2.0
    step_s: float = 0.1
    duration_s: float | None = None

    def check(self) -> None:
        """A ValueError with a sentence for a scenario that cannot be run."""
        if self.arrivals < 1:
            raise ValueError("arrivals must be at least 1.")
        if not 0 < self.over_s <= 86_400:
            raise ValueError("over_s must be above 0 and at most a day.")
        if self.delivery not in ("llhls", "hls"):
            raise ValueError("delivery must be llhls or hls.")
        if not 0 <= self.give_up <= 1:
            raise ValueError("give_up is a fraction between 0 and 1.")
        if not 0 < self.utilization <= 1:
            raise ValueError("utilization is a fraction above 0, at most 1.")
        if not 0.001 <= self.step_s <= self.queue_interval_s:
            raise ValueError("step_s must be between 1 ms and queue_interval_s.")
        if self.origin_cores is not None and self.origin_cores <= 0:
            raise ValueError("origin_cores must be above 0 (or left out to size it).")
        if not 0 <= self.cache_lock_poll_s <= 60:
            raise ValueError("cache_lock_poll_s must be between 0 and 60 s (nginx's is 0.5).")
        if not 0 <= self.golive_bus_s <= 10 or not 0 <= self.index_refresh_s <= 3600:
            raise ValueError("golive_bus_s must be 0-10 s and index_refresh_s 0-3600 s.")
        if self.cap < 0 or self.origin_nodes < 1 or self.admit_rate_per_s <= 0:
            raise ValueError("cap >= 0, origin_nodes >= 1 and admit_rate_per_s > 0, please.")

    @property
    def index_delay_s(self) -> float:
        """The longest a node that did not draw takes to show the draw."""
        return self.golive_bus_s if self.golive_published else self.index_refresh_s

    @property
    def horizon_s(self) -> float:
        if self.duration_s is not None:
            return self.duration_s
        drain = 0.0
        if self.cap > 0:
            drain = self.arrivals / self.admit_rate_per_s
            if self.listen_s > 0 and self.cap < self.arrivals:
                drain += self.listen_s * 1.5 * (self.arrivals / max(1, self.cap))
        return max(self.over_s, self.pre_s) + min(drain, 7_200.0) + 30.0


# -- small pure pieces (table-tested) -------------------------------------------------


def still_waiting(age_s: float, give_up: float, lo_s: float = 3.0, hi_s: float = 30.0) -> float:
    """Share of a cohort still waiting after ``age_s`` when ``give_up`` of
    them give up after a uniform 3-30 s (as `townhall bench storm` does)."""
    if give_up <= 0 or age_s <= lo_s:
        return 1.0
    return 1.0 - give_up * min(1.0, (age_s - lo_s) / (hi_s - lo_s))


def room_wait_s(admitted_s: float, ready_s: float, lock_poll_s: float) -> float:
    """How long a page admitted at ``admitted_s`` waits for a room that a
    cache can serve from ``ready_s``. Its first request meets the cache's
    fill of that URI in flight (the first page's miss, held by the origin
    until the room has parts), and nginx's proxy_cache_lock wakes a waiting
    request on a timer, every ``lock_poll_s`` from when that request began
    to wait: it gets the answer at the first wake at or after ``ready_s``.
    0 when the room is ready (or without a cache: ``lock_poll_s`` 0, the
    origin answers the held request the moment it can)."""
    wait = ready_s - admitted_s
    if wait <= 0:
        return 0.0
    if lock_poll_s <= 0:
        return wait
    return math.ceil(wait / lock_poll_s - 1e-9) * lock_poll_s


def cold_start_s(requests: int, request_s: float, backlog_s: float) -> float:
    """How long the first page of a room takes to hear it through a cache
    that holds none of it: each of its ``requests`` (one after another) is a
    miss the origin answers behind its backlog, so each takes
    ``request_s`` (a round trip and its service) plus ``backlog_s`` (the
    origin's queued work over its cores). Until then the room is not
    servable from the cache: pages that ask meanwhile wait on the fill
    (:func:`room_wait_s`, with this as the ready time)."""
    if requests < 0 or request_s < 0 or backlog_s < 0:
        raise ValueError("requests, request_s and backlog_s must be >= 0")
    return requests * (request_s + backlog_s)


def weighted_percentile(samples: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-th percentile (0-100) of (value, weight) samples; None if empty."""
    total = sum(w for _, w in samples if w > 0)
    if total <= 0:
        return None
    ordered = sorted((v, w) for v, w in samples if w > 0)
    need = total * q / 100.0
    run = 0.0
    for value, weight in ordered:
        run += weight
        if run >= need - 1e-9 * total:
            return value
    return ordered[-1][0]


def notice_delays(s: Scenario, slices: int = 10) -> list[float]:
    """Seconds from a call (or the draw) until the page posts its ticket, as
    ``slices`` equal shares (the mean delay of each, shortest first). The sum
    of four waits, each uniform from 0: the node that answers queue.json
    reads the line at its own tick (up to an interval behind the node that
    moved it: ``queue_interval_s`` x (nodes - 1) / nodes), the cache's copy
    (``doc_max_age_s``), the page's next poll (``queue_poll_s``) and the
    page's next look at what it read (``claim_delay_s``; `bench storm`'s
    waiters look at a shared copy every 0.5-1.5 s); plus ``doc_lag_s``, a
    fixed lag (`bench storm`'s one shared poller reads nginx's
    stale-while-updating copy, which is always one poll old)."""
    spans = (
        s.queue_interval_s * (s.origin_nodes - 1) / s.origin_nodes,
        s.doc_max_age_s,
        s.queue_poll_s,
        s.claim_delay_s,
    )
    points = 6
    sums = [0.0]
    for span in spans:
        sums = [a + span * (k + 0.5) / points for a in sums for k in range(points)]
    sums.sort()
    return [s.doc_lag_s + d for d in _slice_means(sums, slices)]


def storm_notice(poll: str, rtt_s: float, *, poll_s: float, max_age_s: float) -> dict[str, Any]:
    """The notice parameters of :class:`Scenario` for `bench storm`'s
    waiters (``--poll``), ``rtt_s`` from nginx, with ``poll_s`` the storm's
    POLL_S and ``max_age_s`` queue.json's Cache-Control max-age (which nginx
    honours, serving its stale copy while it fetches a new one).

    ``each``: every waiter fetches queue.json itself, as the page does. With
    hundreds polling, nginx's copy is fetched again at the first request
    after it expires (the stale copy is served for that fetch's few ms).
    nginx's cache clock counts whole seconds (``valid_sec = ngx_time() +
    max-age``, stale once ``valid_sec < ngx_time()``), so a copy with
    max-age N is served until N to N + 1 s after its fetch, and under steady
    asking it is fetched every N + 1 s, at a whole second: its age is
    uniform over ``max_age_s + 1`` (nginx's access log: queue.json fetched
    every 2.0 s at .0 s with max-age 1, 2026-12-02). A waiter sleeps ``poll_s`` and
    then fetches (a round trip), so its reads are ``poll_s + rtt_s`` apart;
    it looks at what it fetched at once, half a round trip after nginx read
    its copy.

    ``shared``: one poller every ``poll_s`` reads nginx's copy, which is
    always one poll old (its max-age is shorter than the poll, so each read
    gets the stale copy and sets off the fetch the next read gets); each
    waiter looks at the poller's copy every 0.5-1.5 s. The model spreads the
    poller's phase over the waiters; a run has one phase for all of them
    (see docs/BENCHMARKS.md)."""
    if rtt_s < 0 or poll_s <= 0 or max_age_s < 0:
        raise ValueError("rtt_s and max_age_s must be >= 0 and poll_s > 0.")
    if poll == "each":
        return {
            "doc_max_age_s": max_age_s + 1.0,
            "queue_poll_s": poll_s + rtt_s,
            "claim_delay_s": 0.0,
            "doc_lag_s": rtt_s / 2,
            "queue_poll_shared": False,
        }
    if poll == "shared":
        return {
            "doc_max_age_s": 0.0,
            "queue_poll_s": poll_s,
            "claim_delay_s": 1.0,
            "doc_lag_s": poll_s,
            "queue_poll_shared": True,
        }
    raise ValueError(f"poll must be each or shared, not {poll!r}.")


def _slice_means(sums: Sequence[float], slices: int) -> list[float]:
    per = len(sums) / slices
    return [
        sum(sums[round(j * per) : round((j + 1) * per)])
        / max(1, round((j + 1) * per) - round(j * per))
        for j in range(slices)
    ]


def near_call_share(s: Scenario, line_length: float) -> float:
    """Share of a line of ``line_length`` places whose ticket, posted now,
    makes the node read the line again before it answers: those within the
    reach of ``policy.admission.may_have_called`` (two seconds of the admit
    rate, plus the rate over the view's mean age, half an interval, and the
    slack the server allows, 1 s + two intervals)."""
    if line_length <= 0:
        return 1.0
    rate = s.admit_rate_per_s
    interval = s.queue_interval_s
    reach = max(1.0, 2.0 * rate) + rate * (interval / 2 + 1.0 + 2 * interval) + 1.0
    return min(1.0, reach / line_length)


def origin_rates(
    costs: Costs, s: Scenario, *, listeners: float, waiting: float, caches: int
) -> dict[str, float]:
    """Requests per second reaching the origin that do not depend on
    arrivals: listening, waiting (queue.json, ticket renewals), state.json.
    With a cache tier each cache node asks once per cacheable answer
    (proxy_cache_lock collapses the rest); without one every listener asks."""
    per_part = costs.part_s
    out: dict[str, float] = {}
    askers = float(min(caches, math.ceil(listeners))) if caches > 0 else listeners
    if s.delivery == "llhls":
        out["part"] = askers / per_part
        out["blocking_reload"] = askers / per_part
    else:
        out["segment"] = askers / costs.segment_s
        out["playlist"] = askers / costs.segment_s
    watchers = listeners + waiting
    if caches > 0:
        out["state"] = min(caches, math.ceil(watchers)) / s.state_max_age_s if watchers else 0.0
        out["queue_doc"] = min(caches, math.ceil(waiting)) / s.queue_poll_s if waiting else 0.0
    else:
        out["state"] = listeners / s.state_poll_s
        out["queue_doc"] = waiting / s.queue_poll_s
    out["ticket"] = waiting / s.ticket_renew_s
    return out


def listener_request_rate(costs: Costs, s: Scenario) -> float:
    """Requests per second one listener makes at its cache."""
    media = 2.0 / costs.part_s if s.delivery == "llhls" else 2.0 / costs.segment_s
    return media + 1.0 / s.state_poll_s


def listener_bytes_per_s(costs: Costs, s: Scenario) -> float:
    """Bytes per second a cache sends one listener (media, playlists, state.json)."""
    b = costs.bytes
    if s.delivery == "llhls":
        media = (b["part"] + b["blocking_reload"]) / costs.part_s
    else:
        seg = b.get("segment", b["part"] * costs.segment_s / costs.part_s)
        media = (seg + b["playlist"]) / costs.segment_s
    return media + b["state"] / s.state_poll_s


def cache_nodes_needed(costs: Costs, s: Scenario, listeners: float, waiting: float) -> int:
    """Cache nodes for ``listeners`` playing and ``waiting`` in line, at the
    scenario's utilization: the larger of what CPU (nginx's cost per request)
    and egress (``cache_node_gbps``) ask for."""
    if listeners + waiting <= 0:
        return 1
    rps = listeners * listener_request_rate(costs, s) + waiting / s.queue_poll_s
    cpu_nodes = rps * costs.nginx_us * 1e-6 / (s.cache_node_cores * s.utilization)
    bps = (listeners * listener_bytes_per_s(costs, s) + waiting * costs.bytes["queue_doc"]) * 8
    net_nodes = bps / (s.cache_node_gbps * 1e9 * s.utilization)
    return max(1, math.ceil(max(cpu_nodes, net_nodes)))


def first_audio_by_second(early: list[tuple[float, float, float]]) -> dict[str, dict[str, float]]:
    """Per second of admission after go-live (the first 20): how many were
    admitted and their first audio's p50 and max."""
    buckets: dict[int, list[tuple[float, float]]] = {}
    for at, ttfa, n in early:
        if 0 <= at < 20 and n > 0:
            buckets.setdefault(int(at // 1), []).append((ttfa, n))
    out: dict[str, dict[str, float]] = {}
    for k, samples in sorted(buckets.items()):
        out[str(k)] = {
            "admitted": round(sum(n for _, n in samples), 1),
            "ttfa_p50_s": round(weighted_percentile(samples, 50) or 0.0, 3),
            "ttfa_max_s": round(max(v for v, _ in samples), 3),
        }
    return out


def depart(departures: dict[int, float], s: Scenario, step: int, count: float) -> None:
    """Schedule ``count`` listeners to leave after 0.5-1.5 x listen_s (20 slices)."""
    if s.listen_s <= 0 or count <= 0:
        return
    slices = 20
    for k in range(slices):
        after = s.listen_s * (0.5 + (k + 0.5) / slices)
        due = step + max(1, round(after / s.step_s))
        departures[due] = departures.get(due, 0.0) + count / slices


def claim_batches(line: QueueState, lo: int, hi: int, came: float) -> list[Any]:
    """The line's batches with ``came`` claims added to those inside (lo, hi]."""
    out = []
    left = round(came)
    for b in line.batches:
        if left > 0 and b.lo < hi and b.hi > lo:
            take = min(left, b.open_places)
            left -= take
            b = replace(b, claimed=b.claimed + take)
        out.append(b)
    return out
