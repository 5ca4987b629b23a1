"""The plan to internet scale: a discrete-time event model of one big night.

Pure: no sockets, no clock, no event loop. :func:`simulate` steps an event
through time in slices of ``step_s`` with cohorts (every arrival of one slice
is one cohort) instead of one object per listener, so 20 million arrivals
cost the same as 2,000. In each slice it:

- lets the slice's arrivals join (the join reaches the origin through the
  cache tier; the origin answers after its backlog), admitted at once or
  handed a ticket, exactly as :func:`townhall.policy.admission.decide` says;
- moves the line once per ``queue_interval_s`` with the server's own
  :func:`townhall.policy.admission.advance` (cap, rate, claim window), the
  called tickets claiming their place after the page's poll delay, those who
  gave up waiting leaving their place unclaimed (released after ``claim_s``);
- lets listeners leave after 0.5-1.5 x ``listen_s``;
- adds up the CPU every request costs at the origin and at the caches, the
  Redis operations and the bytes, from costs measured on a real machine
  (:class:`Costs`, the JSON ``benchmarks/plan_calibrate.py`` writes), and
  queues the origin's work behind its cores (a FIFO backlog: a request waits
  for the work before it, a burst within one step included); a page's first
  audio through a cache that holds none of the room waits for the first
  page's misses (each behind that backlog) on the cache lock's wake.

What a person reads from it (:class:`Result`): origin cores and cache nodes
needed, Redis operations per second, the start delay, the wait
distribution, time to first audio, egress. The start delay is the first
page's, run at each of the phases a night can have (when the caches next
fetch queue.json after the draw: :mod:`townhall.bench.plan_notice`) through
the same queue, cache and room start: its mean, with p10-p90 beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from townhall.bench.plan_inputs import (
    Costs,
    Scenario,
    cache_nodes_needed,
    claim_batches,
    cold_start_s,
    depart,
    first_audio_by_second,
    listener_bytes_per_s,
    listener_request_rate,
    near_call_share,
    notice_delays,
    origin_rates,
    room_wait_s,
    still_waiting,
    storm_notice,
    weighted_percentile,
)
from townhall.bench.plan_notice import first_notice
from townhall.policy.admission import QueueState, advance

__all__ = [
    "Costs",
    "Result",
    "Scenario",
    "cache_nodes_needed",
    "cold_start_s",
    "first_notice",
    "listener_bytes_per_s",
    "listener_request_rate",
    "near_call_share",
    "notice_delays",
    "origin_rates",
    "plan",
    "room_wait_s",
    "simulate",
    "still_waiting",
    "storm_notice",
    "weighted_percentile",
]

# a player's first audio: the playlist, the init segment and the parts (or
# segments) from PART-HOLD-BACK (3 parts) behind the edge, one after another
START_REQUESTS = 5
CLAIM_SLICES = 10
START_PHASES = 20  # the first page's notice: equally likely phases of a run

# -- the simulation -------------------------------------------------------------------


@dataclass
class _Cohort:
    """Numbers ``lo < n <= hi`` in line; ``arrivals``: (arrival time, share)."""

    lo: int
    hi: int
    arrivals: list[tuple[float, float]]


@dataclass
class Result:
    scenario: Scenario
    origin_cores: float
    cache_nodes: int
    origin_cpu_peak_cores: float
    origin_cpu_mean_cores: float
    origin_cpu_by_kind: dict[str, float]
    redis_ops_peak_per_s: float
    redis_ops_mean_per_s: float
    redis_ops_by_kind: dict[str, float]
    first_audio_by_admission: dict[str, dict[str, float]]
    redis_cores_peak: float
    redis_shards: int
    start_delay_s: float | None  # the mean over the phases a run can have
    start_delay_spread_s: dict[str, float | None]
    start_delay_points_s: list[float]  # equally likely, over the draw's phases
    wait_s: dict[str, float | None]
    ttfa_after_admission_s: dict[str, float | None]
    ttfa_from_arrival_s: dict[str, float | None]
    join_latency_peak_s: float
    admitted: float
    gave_up: float
    waiting_at_end: float
    peak_listeners: float
    peak_waiting: float
    egress_peak_gbps: float
    egress_per_cache_gbps: float
    origin_egress_peak_mbps: float
    timeline: list[dict[str, float]]

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["scenario"] = asdict(self.scenario)
        out.pop("timeline")
        return out


def simulate(
    costs: Costs,
    s: Scenario,
    *,
    progress: Callable[[float], None] | None = None,
    busy: float | None = None,
) -> Result:
    """Run the night in steps of ``s.step_s``; ``origin_cores`` and
    ``cache_nodes`` must be set (see :func:`plan` to size them). ``busy``:
    the share of time the origin's event loops are busy, fixed (None: from
    the origin's CPU in the step before, over one loop per core and at
    least one per node); it sets what a request costs
    (:meth:`Costs.request_us`)."""
    s.check()
    if s.origin_cores is None or s.cache_nodes is None:
        raise ValueError("simulate needs origin_cores and cache_nodes; plan() sizes them.")
    dt = s.step_s
    steps = math.ceil(s.horizon_s / dt)
    rate = s.arrivals / s.over_s
    line = QueueState()
    cohorts: list[_Cohort] = []
    lottery_cohort: _Cohort | None = None
    pending: dict[int, list[tuple[float, float]]] = {}  # step -> (count, arrival t)
    claims: dict[int, list[tuple[int, int]]] = {}  # step -> (places called, batch lo)
    departures: dict[int, float] = {}
    admitted_now = 0.0
    listeners = waiting = arrived = gave_up = admitted_total = 0.0
    backlog = 0.0  # origin CPU-seconds queued
    last_cpu = 0.0  # the origin's CPU-seconds in the step before
    loops = max(float(s.origin_nodes), s.origin_cores)  # one event loop per core (a node at least)
    draw_posts: dict[int, float] = {}  # step -> tickets posted after the draw
    delays = notice_delays(s, CLAIM_SLICES)
    capacity = s.origin_cores * dt
    waits: list[tuple[float, float]] = []
    ttfa_arr: list[tuple[float, float]] = []
    ttfa_adm: list[tuple[float, float]] = []
    early: list[tuple[float, float, float]] = []  # (admitted after go-live, first audio, n)
    by_kind: dict[str, float] = {}
    redis_by_kind: dict[str, float] = {}
    timeline: list[dict[str, float]] = []
    cpu_window: list[float] = []
    redis_window: list[float] = []  # the last second's steps, as cpu_window
    cpu_peak = redis_peak = egress_peak = origin_bytes_peak = join_lat_peak = 0.0
    cpu_total = redis_total = 0.0
    first_audio_at: float | None = None
    first_direct: float | None = None  # of those admitted at their join
    probes_due: dict[int, int] = {}  # step -> first pages (of the draw's phases)
    probes: list[float] = []  # their first audio
    warm_at_draw: float | None = None
    live_at = s.pre_s
    live = s.pre_s <= 0
    # the nodes tick on a grid of their own: half an interval off the start
    next_tick = s.queue_interval_s / 2 if s.pre_s > 0 else 0.0
    start_requests = START_REQUESTS
    room_ready = live_at + costs.room_start_s
    part_lat = costs.client_request_s + s.rtt_s
    per_listener_bps = listener_bytes_per_s(costs, s)
    report_every = max(1, steps // 200)

    def origin_request_s(work: dict[str, float] | None = None, busy_now: float = 0.0) -> float:
        """The wait behind the origin's queued work, for a request in the
        middle of the step: the backlog, plus half of ``work`` (what reached
        it so far in this step), less half a step of its cores (fluid FIFO:
        a burst over the cores queues within the step, spread requests on
        idle cores do not)."""
        if not s.origin_cores:
            return 0.0
        queued = backlog
        if work:
            burst = 1e-6 * sum(costs.request_us(k, busy_now) * v for k, v in work.items())
            queued = max(backlog, backlog + 0.5 * (burst - capacity))
        return queued / s.origin_cores

    # a player's first audio once the room has parts: START_REQUESTS requests
    # one after another, at the calibration's p50 (98 %) and its tail (2 %)
    tail = [(start_requests * part_lat, 1.0)]
    if costs.first_audio_p99_s > start_requests * costs.client_request_s:
        p99 = costs.first_audio_p99_s + start_requests * s.rtt_s
        tail = [(start_requests * part_lat, 0.98), (p99, 0.02)]

    # a page before the room is ready waits on the cache's lock (woken every
    # cache_lock_poll_s); without a cache the origin answers it at once
    lock_poll_s = s.cache_lock_poll_s if s.cache_nodes else 0.0

    # with a cache, the room is servable from it once the first page's
    # misses are filled (each in flight for the origin's queue then); the
    # first page is the fill itself, the pages within that wait on the lock
    cache_ready: float | None = None

    def first_audio(admit_t: float, behind: float, warm: float | None) -> float:
        """The first audio of a page admitted at ``admit_t``, the origin's
        requests ``behind`` its queued work by so much, the cache warm since
        ``warm`` (None: this page's misses fill it)."""
        if not lock_poll_s:
            # no cache: every request reaches the origin, behind its backlog
            return (
                admit_t
                + room_wait_s(admit_t, room_ready, 0.0)
                + start_requests * behind
                + tail[0][0]
            )
        if warm is None:
            # the first page's five misses, each behind the queue
            return max(admit_t, room_ready) + cold_start_s(start_requests, part_lat, behind)
        return admit_t + room_wait_s(admit_t, warm, lock_poll_s) + tail[0][0]

    def heard(admit_t: float, at: float, n: float, behind: float) -> float:
        """Record the first audio of ``n`` admitted at ``admit_t`` who
        arrived at ``at``, the origin's requests ``behind`` its queued work
        by so much; the earliest of it."""
        nonlocal cache_ready
        first = first_audio(admit_t, behind, cache_ready)
        if lock_poll_s and cache_ready is None:
            # a page that asks a URL while the first page's fill is in
            # flight (for the queue's wait) hears it on the lock's wake
            cache_ready = max(admit_t, room_ready) + behind
        # the rest of the cohort: the same as a page on a warm cache (or,
        # without one, as every page), before the tail's share
        base = first_audio(admit_t, behind, cache_ready) - tail[0][0]
        for extra, share in tail:
            audio = base + extra
            ttfa_adm.append((audio - admit_t, n * share))
            ttfa_arr.append((audio - at, n * share))
            early.append((admit_t - live_at, audio - admit_t, n * share))
        return first

    for i in range(steps):
        t = i * dt
        work: dict[str, float] = {}
        ops: dict[str, float] = {}  # Redis operations of this step, by kind
        # a request that finds its node's loop idle pays its own wake-ups and
        # its own reads (measured one at a time); a busy loop shares them
        busy_now = busy if busy is not None else min(1.0, last_cpu / (loops * dt))
        if not live and t >= live_at:
            live = True
        posts = draw_posts.pop(i, 0.0)
        if posts > 0:
            # a numbered ticket posted after the draw, its turn not come yet
            work["ticket_drawn"] = work.get("ticket_drawn", 0.0) + posts
            _add(ops, "ticket_drawn", posts * costs.redis_op("ticket_drawn", busy_now))
        # 1. arrivals of this step reach the origin's queue
        n = rate * dt if t < s.over_s else 0.0
        if t < s.over_s and t + dt > s.over_s:
            n = rate * (s.over_s - t)
        if n > 0:
            arrived += n
            # the origin works on a join when it comes (charged as admitted;
            # a 202 is set right when it is answered)
            work["join"] = work.get("join", 0.0) + n
            lat = origin_request_s(work, busy_now) + costs.origin_us["join"] * 1e-6 + s.rtt_s
            due = i + max(0, round(lat / dt))
            pending.setdefault(due, []).append((n, t))
            join_lat_peak = max(join_lat_peak, lat)
        # 2. joins answered this step: admitted at once or a ticket
        for count, at in pending.pop(i, []):
            if s.cap <= 0:
                take = count
            elif live and line.waiting == 0:
                take = max(0.0, min(count, s.cap - admitted_now - line.reserved))
            else:
                take = 0.0
            if take > 0:
                _add(ops, "join", take * costs.redis_ops["join"])
                admitted_now += take
                listeners += take
                admitted_total += take
                waits.append((0.0, take))
                audio = heard(t, at, take, origin_request_s(work, busy_now))
                first_audio_at = audio if first_audio_at is None else first_audio_at
                first_direct = audio if first_direct is None else first_direct
                depart(departures, s, i, take)
            rest = count - take
            if rest > 0:
                work["join_queued"] = work.get("join_queued", 0.0) + rest
                work["join"] = work.get("join", 0.0) - rest
                _add(ops, "join_queued", rest * costs.redis_op("join_queued", busy_now))
                lo = line.issued
                hi = lo + max(1, round(rest))
                line = replace(line, issued=hi)
                waiting += rest
                if not live:
                    if lottery_cohort is None:
                        lottery_cohort = _Cohort(lo, hi, [])
                        cohorts.append(lottery_cohort)
                    lottery_cohort.hi = hi
                    lottery_cohort.arrivals.append((at, rest))
                else:
                    cohorts.append(_Cohort(lo, hi, [(at, rest)]))
        # 3. the line moves once per queue interval
        # (before go-live too: each tick sets the time the next allowance
        # counts from), and the draw at go-live itself: it does not wait for
        # the interval's turn (store/admission.py, 2026-12-02)
        on_grid = t + 1e-9 >= next_tick
        if s.cap > 0 and (on_grid or (live and line.lottery is None)):
            if on_grid:
                next_tick += s.queue_interval_s
            before = line.through
            drawn = line.lottery is not None
            line = advance(
                line,
                t,
                cap=s.cap,
                admitted=round(admitted_now),
                rate_per_s=s.admit_rate_per_s,
                claim_s=s.claim_s,
                live=live,
            )
            if live and not drawn:
                # every ticket is posted once after the draw, when its page sees it
                for after in delays:
                    due = i + max(1, round(after / dt))
                    draw_posts[due] = draw_posts.get(due, 0.0) + waiting / CLAIM_SLICES
                if waiting >= 0.5:
                    # the first page's notice, over the phases a run can have
                    # (plan_notice): each a page that posts then and hears
                    warm_at_draw = cache_ready
                    for after in first_notice(s, waiting, START_PHASES):
                        due = i + max(1, round(after / dt))
                        probes_due[due] = probes_due.get(due, 0) + 1
            if line.through > before:
                # pages see their turn in queue.json: the posts come after the
                # delays of notice_delays (CLAIM_SLICES equal shares)
                called = line.through - before
                for j, after in enumerate(delays):
                    # (rounded to the nearest: a lone place gets the median delay)
                    lo = before + (called * j + CLAIM_SLICES // 2) // CLAIM_SLICES
                    hi = before + (called * (j + 1) + CLAIM_SLICES // 2) // CLAIM_SLICES
                    if hi > lo:
                        claims.setdefault(i + max(1, round(after / dt)), []).append((hi - lo, lo))
        # 4. called tickets come (those still waiting), the rest stay away
        for _ in range(probes_due.pop(i, 0)):
            behind = origin_request_s(work, busy_now)
            admit_t = t + behind + costs.origin_us["claim"] * 1e-6 + s.rtt_s
            probes.append(first_audio(admit_t, behind, warm_at_draw))
        due_now = claims.pop(i, [])
        if due_now:
            # cohorts below every call still to come are done with (the
            # calls' shares come out of order when the delays span more
            # than an interval)
            low = min(b for due in (due_now, *claims.values()) for _, b in due)
            while cohorts and cohorts[0].hi <= low:
                cohorts.pop(0)
        for called, lo in due_now:
            hi = lo + called
            came = 0.0
            for c in cohorts:
                if c.lo >= hi:
                    break
                overlap = min(hi, c.hi) - max(lo, c.lo)
                if overlap <= 0:
                    continue
                size = c.hi - c.lo
                for at, w in c.arrivals:
                    people = w * overlap / size
                    alive = people * still_waiting(t - at, s.give_up)
                    came += alive
                    gave_up += people - alive
                    waiting -= people
                    behind = origin_request_s(work, busy_now)
                    lat = behind + costs.origin_us["claim"] * 1e-6 + s.rtt_s
                    waits.append((t + lat - at, alive))
                    audio = heard(t + lat, at, alive, behind)
                    first_audio_at = audio if first_audio_at is None else first_audio_at
            # a called ticket exchanged for a listener token (measured: the
            # ticket's use, the admission, the claim count, and a read of the
            # line where the node's view was older than the call)
            work["claim"] = work.get("claim", 0.0) + came
            _add(ops, "claim", came * costs.redis_op("claim", busy_now))
            admitted_now += came
            listeners += came
            admitted_total += came
            depart(departures, s, i, came)
            # the places of those who stayed away are released after claim_s
            line = replace(line, batches=tuple(claim_batches(line, lo, hi, came)))
        # 5. listeners leave
        gone = departures.pop(i, 0.0)
        if gone:
            gone = min(gone, listeners)
            listeners -= gone
            admitted_now = max(0.0, admitted_now - gone)
            work["leave"] = work.get("leave", 0.0) + gone
            _add(ops, "leave", gone * costs.redis_op("leave", busy_now))
        # 6. what listening and waiting cost the origin, in this step
        waiting = max(0.0, waiting)
        rates = origin_rates(costs, s, listeners=listeners, waiting=waiting, caches=s.cache_nodes)
        if live and rates.get("ticket"):
            # renewals after the draw: those near enough to the call make the
            # node read the line again (as the draw's posts do)
            near = near_call_share(s, line.issued - line.through)
            rates["ticket_drawn"] = rates["ticket"] * near
            rates["ticket"] *= 1.0 - near
        for kind, per_s in rates.items():
            work[kind] = work.get(kind, 0.0) + per_s * dt
            if kind in ("ticket", "ticket_drawn"):
                _add(ops, kind, per_s * dt * costs.redis_op(kind, busy_now))
        parts = dt / costs.part_s
        _add(ops, "part", parts * costs.redis_ops_per_part(s.origin_nodes))
        _add(ops, "node", costs.redis_ops["node_s"] * s.origin_nodes * dt)
        cpu = 0.0
        for k, v in work.items():
            us = costs.request_us(k, busy_now)
            cpu += us * v * 1e-6
            by_kind[k] = by_kind.get(k, 0.0) + us * v * 1e-6
        background = (
            s.origin_nodes * costs.node_idle_cores
            + costs.room_owner_cores
            + (s.origin_nodes - 1) * costs.room_follower_cores
        ) * dt
        by_kind["background"] = by_kind.get("background", 0.0) + background
        if live and waiting >= 0.5:  # every node ticks a moving line
            tick = s.origin_nodes * costs.line_tick_cores * dt
            by_kind["line"] = by_kind.get("line", 0.0) + tick
            background += tick
            _add(ops, "line", s.origin_nodes * costs.redis_ops.get("line_s", 0.0) * dt)
        cpu += background
        last_cpu = cpu
        cpu_total += cpu
        redis_ops = sum(ops.values())
        for k, v in ops.items():
            redis_by_kind[k] = redis_by_kind.get(k, 0.0) + v
        backlog = max(0.0, backlog + cpu - capacity)
        cpu_window.append(cpu)
        window = max(1, round(1.0 / dt))
        if len(cpu_window) > window:
            cpu_window.pop(0)
        cpu_peak = max(cpu_peak, sum(cpu_window) / (len(cpu_window) * dt))
        redis_total += redis_ops
        # (over one second, as the CPU's: a share of a call lands in one step)
        redis_window.append(redis_ops)
        if len(redis_window) > window:
            redis_window.pop(0)
        redis_peak = max(redis_peak, sum(redis_window) / (len(redis_window) * dt))
        egress = (listeners * per_listener_bps + waiting * costs.bytes["queue_doc"]) * 8
        egress_peak = max(egress_peak, egress)
        askers = min(s.cache_nodes, math.ceil(listeners)) if s.cache_nodes else listeners
        origin_bytes = (
            askers * (costs.bytes["part"] + costs.bytes["blocking_reload"]) / costs.part_s
            + sum(v * costs.bytes.get(k, 0.0) for k, v in work.items()) / dt
        ) * 8
        origin_bytes_peak = max(origin_bytes_peak, origin_bytes)
        if i % report_every == 0 or i == steps - 1:
            timeline.append(
                {
                    "t": round(t, 3),
                    "arrived": arrived,
                    "waiting": waiting,
                    "listening": listeners,
                    "origin_cores": sum(cpu_window) / (len(cpu_window) * dt),
                    "redis_ops_per_s": redis_ops / dt,
                    "join_latency_s": origin_request_s(),
                }
            )
            if progress is not None:
                progress((i + 1) / steps)
        quiet = waiting < 0.5 and not pending and not claims and not probes_due and listeners < 0.5
        if s.duration_s is None and t > s.over_s + 1 and quiet:
            break
    duration = (i + 1) * dt
    pct = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    peak_waiting = max((p["waiting"] for p in timeline), default=0.0)
    peak_listeners = max((p["listening"] for p in timeline), default=0.0)
    # the start delay: the first page's first audio, over the draw's phases
    # (probes), or the first admitted at its join, whichever is sooner
    starts = [p if first_direct is None else min(p, first_direct) for p in probes]
    if not starts and first_audio_at is not None:
        starts = [first_audio_at]
    starts = [max(0.0, a - live_at) for a in starts]
    spread = [(v, 1.0) for v in starts]
    return Result(
        scenario=s,
        origin_cores=s.origin_cores,
        cache_nodes=s.cache_nodes,
        origin_cpu_peak_cores=cpu_peak,
        origin_cpu_mean_cores=cpu_total / duration,
        origin_cpu_by_kind={k: v / duration for k, v in sorted(by_kind.items())},
        redis_ops_peak_per_s=redis_peak,
        redis_ops_mean_per_s=redis_total / duration,
        redis_ops_by_kind={k: v / duration for k, v in sorted(redis_by_kind.items())},
        first_audio_by_admission=first_audio_by_second(early),
        redis_cores_peak=redis_peak * costs.redis_us * 1e-6,
        redis_shards=max(1, math.ceil(redis_peak * costs.redis_us * 1e-6 / s.utilization)),
        start_delay_s=sum(starts) / len(starts) if starts else None,
        start_delay_points_s=sorted(starts),
        start_delay_spread_s={
            k: weighted_percentile(spread, q)
            for k, q in (("p10", 10.0), ("p50", 50.0), ("p90", 90.0))
        },
        wait_s={k: weighted_percentile(waits, q) for k, q in pct.items()},
        ttfa_after_admission_s={k: weighted_percentile(ttfa_adm, q) for k, q in pct.items()},
        ttfa_from_arrival_s={k: weighted_percentile(ttfa_arr, q) for k, q in pct.items()},
        join_latency_peak_s=join_lat_peak,
        admitted=admitted_total,
        gave_up=gave_up,
        waiting_at_end=waiting,
        peak_listeners=peak_listeners,
        peak_waiting=peak_waiting,
        egress_peak_gbps=egress_peak / 1e9,
        egress_per_cache_gbps=egress_peak / 1e9 / max(1, s.cache_nodes),
        origin_egress_peak_mbps=origin_bytes_peak / 1e6,
        timeline=timeline,
    )


def _add(ops: dict[str, float], kind: str, count: float) -> None:
    ops[kind] = ops.get(kind, 0.0) + count


def plan(
    costs: Costs,
    s: Scenario,
    *,
    progress: Callable[[float], None] | None = None,
) -> Result:
    """Size what the scenario leaves open, then run it: a first pass with
    unbounded origin cores finds the peak of listeners, waiters and origin
    CPU; cache nodes come from that peak, origin cores from the peak CPU at
    the scenario's utilization (rounded up to whole cores); the second pass
    runs the night on those."""
    s.check()
    first = s
    if s.cache_nodes is None:
        rough = min(s.arrivals, s.cap) if s.cap > 0 else s.arrivals
        first = replace(first, cache_nodes=cache_nodes_needed(costs, s, rough, 0.0))
    if s.origin_cores is None:
        first = replace(first, origin_cores=1e9)
    half: Callable[[float], None] | None = None
    if progress is not None:
        done = progress
        half = lambda f: done(f / 2)  # noqa: E731
    # unbounded cores are never busy: size for the utilization aimed at
    sized = simulate(costs, first, progress=half, busy=s.utilization)
    cache_nodes = (
        s.cache_nodes
        if s.cache_nodes is not None
        else cache_nodes_needed(costs, s, sized.peak_listeners, sized.peak_waiting)
    )
    cores = (
        s.origin_cores
        if s.origin_cores is not None
        else float(math.ceil(sized.origin_cpu_peak_cores / s.utilization))
    )
    final = replace(s, cache_nodes=cache_nodes, origin_cores=cores)
    rest: Callable[[float], None] | None = None
    if progress is not None:
        done2 = progress
        rest = lambda f: done2(0.5 + f / 2)  # noqa: E731
    return simulate(costs, final, progress=rest)
