#!/usr/bin/env python3
"""Check `townhall bench plan`'s model against a real run of the three-node
deployment at small scale.

    python benchmarks/plan_validate.py    # reads src/townhall/bench/plan_costs.json
    python benchmarks/plan_validate.py --calibrate-first   # calibrates minutes before, same load
    python benchmarks/plan_validate.py --rtt-ms 50   # the storm's clients 50 ms away

Three `townhall serve` nodes with the segment bus (the machine's PostgreSQL,
a database of their own; a redis-server of their own), nginx in front
(deploy/nginx-nodes.conf), all pinned to core 0; `townhall bench storm`
through nginx on core 1. The nodes' CPU comes from /proc over the storm.
The model is then run on the same scenario with the calibration JSON, and
the two are written side by side (benchmarks/results/plan_validate.json),
with a per-second timeline of the nodes' CPU and Redis commands (INFO
commandstats) beside the model's. ``--calibrate-first`` runs
benchmarks/plan_calibrate.py just before (writing --costs), so the machine's
load is the same for both. ``--rtt-ms`` puts a round trip between the storm
and nginx (townhall.bench.delay_proxy on the storm's core: this kernel has
no sch_netem for a veth pair in a namespace) and gives the model the same
``rtt_s``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_lab import (
    BUS,
    CLIENT_CORE,
    OPEN_LIMITS,
    ROOT,
    Lab,
    Node,
    commands_delta,
    loadavg,
    log,
    proc_cpu_s,
)

sys.path.insert(0, str(ROOT / "src"))
from townhall.bench.plan import Costs, Scenario, simulate, storm_notice, weighted_percentile
from townhall.bench.storm import POLL_S

# queue.json's Cache-Control max-age (server/api_queue.py), which nginx honours
QUEUE_DOC_MAX_AGE_S = 1.0
# the nodes' space-index refresh (as tests/scale's cluster: a node learns a
# new space within 0.2 s); the model is given the same. Since the space feed
# (store/space_feed.py) a go-live reaches every node within a few ms and the
# refresh is only its safety net: ``--no-space-feed`` runs the nodes (and the
# model) as before, where each node learned of a go-live at its refresh.
INDEX_REFRESH_MS = 200


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--costs", default=str(ROOT / "src/townhall/bench/plan_costs.json"))
    ap.add_argument("--out", help="default benchmarks/results/plan_validate[_rttN].json")
    ap.add_argument("--arrivals", type=int, default=2000)
    ap.add_argument("--over-s", type=float, default=10.0)
    ap.add_argument("--pre-s", type=float, default=3.0)
    ap.add_argument("--cap", type=int, default=200)
    ap.add_argument("--listen-s", type=float, default=10.0)
    ap.add_argument("--give-up", type=float, default=0.05)
    ap.add_argument("--duration-s", type=float, default=150.0)
    ap.add_argument(
        "--rtt-ms",
        type=float,
        default=0.0,
        help="A round trip between the storm's clients and nginx (a delaying forwarder).",
    )
    ap.add_argument(
        "--poll",
        choices=("each", "shared"),
        default="each",
        help="The storm's waiters fetch queue.json each for themselves, as pages do (each), "
        "or read one shared poller's copy (shared); the model gets the matching notice.",
    )
    ap.add_argument(
        "--nginx-log",
        help="Also write nginx's access log (time, request time, cache status) to this file.",
    )
    ap.add_argument(
        "--no-space-feed",
        action="store_true",
        help="Nodes without the space feed (TOWNHALL_SPACE_FEED=false): each learns of the "
        "go-live at its index refresh, as in the runs up to session 9; the model likewise.",
    )
    ap.add_argument(
        "--model-only",
        action="store_true",
        help="Do not run the storm: predict again for the run saved in --out (after a model change).",
    )
    ap.add_argument(
        "--calibrate-first",
        action="store_true",
        help="Run benchmarks/plan_calibrate.py --out COSTS first (same load as the storm).",
    )
    args = ap.parse_args(argv)
    if args.out is None:
        tail = f"_rtt{args.rtt_ms:g}" if args.rtt_ms else ""
        args.out = str(ROOT / f"benchmarks/results/plan_validate{tail}.json")
    calibrated_at = None
    if args.calibrate_first and not args.model_only:
        import plan_calibrate

        log(f"calibrating first: {args.costs}")
        calibrated_at = time.time()
        plan_calibrate.main(["--out", args.costs])
    costs = Costs.from_json(json.loads(Path(args.costs).read_text()))
    if args.model_only:
        saved = json.loads(Path(args.out).read_text())
        args.rtt_ms = float(saved.get("rtt_ms", args.rtt_ms))
        args.poll = str(saved.get("storm", {}).get("poll", "shared"))
        # runs saved before the space feed had none: their go-live was not published
        args.no_space_feed = not saved.get("space_feed", False)
        saved["measured"].setdefault("start_post_s", saved.get("storm", {}).get("start_post_s"))
        saved.update(compare(costs, args, saved["measured"]))
        Path(args.out).write_text(json.dumps(saved, indent=2, default=str) + "\n")
        print(json.dumps(saved["predicted_over_measured"], indent=2))
        return 0
    root = Path(tempfile.mkdtemp(prefix="plan-val-"))
    lab = Lab(root)
    try:
        env = {
            **OPEN_LIMITS,
            **BUS,
            "TOWNHALL_DATABASE_URL": lab.postgres(),
            "TOWNHALL_REDIS_URL": lab.redis(),
            "TOWNHALL_REDIS_PREFIX": "plan:",
            "TOWNHALL_SIGNING_KEYS": secrets.token_urlsafe(32),
            "TOWNHALL_MAX_LISTENERS": str(args.cap),
            # as tests/scale's cluster: a node learns a new space within 0.2 s
            "TOWNHALL_SPACE_INDEX_REFRESH_MS": str(INDEX_REFRESH_MS),
            "TOWNHALL_SPACE_FEED": "false" if args.no_space_feed else "true",
        }
        nodes = [lab.node("node-a", env)]
        nodes += [lab.node(name, env) for name in ("node-b", "node-c")]
        fields = {f"@NODE{i}@": f"127.0.0.1:{n.port}" for i, n in enumerate(nodes, 1)}
        extra = ""
        if args.nginx_log:
            extra = (
                "log_format timing '$msec $request_time $upstream_cache_status $status "
                '$upstream_response_time $connection $connection_requests "$request_uri" $upstream_addr\'; '
                f"access_log {Path(args.nginx_log).resolve()} timing;"
            )
        nginx, url = lab.nginx("nginx-nodes.conf", fields, http_extra=extra)
        proxy = None
        if args.rtt_ms > 0:
            proxy, url = lab.delay_proxy(url, args.rtt_ms)
        time.sleep(2)
        idle0 = [n.cpu_s() for n in nodes]
        time.sleep(10)
        idle = [(n.cpu_s() - c) / 10 for n, c in zip(nodes, idle0, strict=True)]
        load_before = loadavg()
        cmd = [
            "taskset", "-c", CLIENT_CORE, sys.executable, "-m", "townhall", "bench", "storm",
            "--target", url, "--arrivals", str(args.arrivals), "--over-s", str(args.over_s),
            "--pre-s", str(args.pre_s), "--listen-s", str(args.listen_s),
            "--give-up", str(args.give_up), "--duration-s", str(args.duration_s), "--json",
            "--no-progress", "--records", str(root / "records.jsonl"), "--poll", args.poll,
        ]  # fmt: skip
        log("storm: " + " ".join(cmd[3:]))
        cpu0 = [n.cpu_s() for n in nodes]
        ng0 = proc_cpu_s(nginx.pid)
        px0 = proc_cpu_s(proxy.pid) if proxy else 0.0
        ops0, rcpu0, cmd0 = lab.redis_ops(), lab.redis_cpu_s(), lab.redis_commands()
        w0, storm_at = time.monotonic(), time.time()
        stop = threading.Event()
        timeline: list[dict[str, Any]] = []
        sampler = threading.Thread(
            target=sample, args=(lab, nodes, w0, stop, timeline), daemon=True
        )
        sampler.start()
        for attempt in range(3):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration_s + 120)
            if out.returncode == 0 or "/api/sessions" not in out.stderr:
                break
            # the host's sign-in refused (503: Redis slow to answer on a loaded
            # machine, sign-in fails closed): the storm had not begun; again
            log(f"the storm's sign-in was refused (attempt {attempt + 1}); again")
            time.sleep(3)
            w0, storm_at = time.monotonic(), time.time()
            cpu0 = [n.cpu_s() for n in nodes]
            ng0 = proc_cpu_s(nginx.pid)
            px0 = proc_cpu_s(proxy.pid) if proxy else 0.0
            ops0, rcpu0, cmd0 = lab.redis_ops(), lab.redis_cpu_s(), lab.redis_commands()
            timeline.clear()
        wall = time.monotonic() - w0
        stop.set()
        sampler.join(timeout=5)
        commands = commands_delta(lab.redis_commands(), cmd0)
        cpu = [n.cpu_s() - c for n, c in zip(nodes, cpu0, strict=True)]
        nginx_cpu = proc_cpu_s(nginx.pid) - ng0
        proxy_cpu = proc_cpu_s(proxy.pid) - px0 if proxy else 0.0
        redis_ops = lab.redis_ops() - ops0
        redis_cpu = lab.redis_cpu_s() - rcpu0
        if out.returncode != 0:
            raise RuntimeError(f"bench storm failed: {out.stderr[-2000:]}")
        storm = json.loads(out.stdout.strip().splitlines()[-1])
        load_after = loadavg()
        early = first_audio_by_admission(root / "records.jsonl", args.pre_s)
        if args.nginx_log:
            early["start_requests"] = start_requests(Path(args.nginx_log))
            if storm.get("live_at"):
                early["notice"] = notice_evidence(
                    Path(args.nginx_log), float(storm["live_at"]), storm.get("first_audio_at")
                )
    finally:
        lab.close()
    measured = {
        "origin_cpu_mean_cores": sum(cpu) / wall,
        "origin_cpu_by_node_cores": [c / wall for c in cpu],
        "idle_before_by_node_cores": idle,
        "nginx_cpu_mean_cores": nginx_cpu / wall,
        "delay_proxy_cpu_mean_cores": proxy_cpu / wall,
        "redis_ops_mean_per_s": redis_ops / wall,
        "redis_cpu_mean_cores": redis_cpu / wall,
        "redis_commands": commands,
        "start_delay_s": storm.get("start_delay_s"),
        # when the host's start answered, after pre_s (the storm's 0.2 s loop
        # and the round trip): the night's go-live as it happened
        "start_post_s": storm.get("start_post_s"),
        # from the records, unrounded (the storm's summary rounds to 1 ms)
        "ttfa_after_admission_p50_s": early.get("ttfa_p50_s", storm.get("ttfa_p50_s")),
        "ttfa_after_admission_p99_s": early.get("ttfa_p99_s", storm.get("ttfa_p99_s")),
        "storm_ttfa_p50_s": storm.get("ttfa_p50_s"),
        "storm_ttfa_p99_s": storm.get("ttfa_p99_s"),
        "wait_p50_s": storm.get("wait_p50_s"),
        "wait_p99_s": storm.get("wait_p99_s"),
        "admitted": storm.get("admitted"),
        "gave_up": storm.get("gave_up"),
        "wall_s": wall,
        # the load generator's own CPU (the storm's process), on the client core
        "generator_cpu_mean_cores": (storm.get("client_cpu_percent") or 0.0) / 100,
    }
    out = compare(costs, args, measured)
    result: dict[str, Any] = {
        "command": "python benchmarks/plan_validate.py " + " ".join(argv or sys.argv[1:]),
        "rtt_ms": args.rtt_ms,
        "poll": args.poll,
        "space_feed": not args.no_space_feed,
        "nodes": {n.name: n.port for n in nodes},
        "calibrated_minutes_before": None
        if calibrated_at is None
        else round((storm_at - calibrated_at) / 60, 1),
        "costs": args.costs,
        "timeline": timeline,
        "storm_command": " ".join(cmd[3:])
        .replace(url, "http://<nginx>")
        .replace(str(root), "<lab>"),
        "first_audio_by_admission": early,
        "load_before": load_before,
        "load_after": load_after,
        "measured": measured,
        **out,
        "storm": storm,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("measured", "predicted_over_measured")}, indent=2))
    return 0


def first_audio_by_admission(path: Path, pre_s: float) -> dict[str, Any]:
    """When the first pages were admitted (seconds after go-live, taken as
    the first arrival plus ``pre_s``) and how long their first audio took:
    per second of admission, the count and the first audio's p50 and max."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    arrived = [r["arrived_at"] for r in rows if r.get("arrived_at")]
    if not arrived:
        return {}
    live = min(arrived) + pre_s
    got = sorted(
        (r["admitted_at"] - live, r["first_audio_at"] - r["admitted_at"])
        for r in rows
        if r.get("admitted_at") and r.get("first_audio_at")
    )
    buckets: dict[int, list[float]] = {}
    for at, ttfa in got:
        if at < 20:
            buckets.setdefault(int(at // 1), []).append(ttfa)
    ttfa = [(t, 1.0) for _, t in got]
    return {
        "ttfa_p50_s": weighted_percentile(ttfa, 50),
        "ttfa_p99_s": weighted_percentile(ttfa, 99),
        "first_admitted_after_live_s": round(got[0][0], 3) if got else None,
        "by_second": {
            str(k): {
                "admitted": len(v),
                "ttfa_p50_s": round(sorted(v)[len(v) // 2], 3),
                "ttfa_max_s": round(max(v), 3),
            }
            for k, v in sorted(buckets.items())
        },
    }


def start_requests(log: Path, slow_s: float = 0.1) -> dict[str, Any]:
    """From nginx's access log (--nginx-log): each admitted page's requests
    after its join's 200 on the same connection, up to its first audio
    (START_REQUESTS of them): how many, and those that took nginx
    ``slow_s`` or more, by what was asked, cache status and time (a wait
    on proxy_cache_lock is a multiple of 0.5 s)."""
    from townhall.bench.plan import START_REQUESTS

    by_conn: dict[str, list[tuple[float, float, str, str, str]]] = {}
    with log.open() as lines:
        for line in lines:
            f = line.split()
            if len(f) < 8:
                continue
            uri = f[7].strip('"')
            by_conn.setdefault(f[5], []).append((float(f[0]), float(f[1]), f[2], f[3], uri))
    pages = 0
    spans: list[tuple[float, float]] = []
    slow: dict[str, int] = {}
    for rows in by_conn.values():
        for i, (t, _, _, status, uri) in enumerate(rows):
            if not (uri.endswith("/join") and status == "200"):
                continue
            seq = rows[i + 1 : i + 1 + START_REQUESTS]
            if len(seq) < START_REQUESTS:
                break
            pages += 1
            spans.append((seq[-1][0] - t, 1.0))
            for _, took, cache, _, asked in seq:
                if took >= slow_s:
                    name = asked.rsplit("/", 1)[-1].split("?")[0]
                    kind = "playlist" if name.endswith(".m3u8") else name.split(".")[-1]
                    key = f"{kind} {cache} {round(took * 2) / 2:g}s"
                    slow[key] = slow.get(key, 0) + 1
            break
    return {
        "pages": pages,
        "span_p50_s": weighted_percentile(spans, 50) if spans else None,
        "span_p99_s": weighted_percentile(spans, 99) if spans else None,
        "slow_requests": dict(sorted(slow.items(), key=lambda kv: -kv[1])),
    }


def notice_evidence(log: Path, live_at: float, first_audio_at: float | None) -> dict[str, Any]:
    """From nginx's access log: how the first page learned of the draw. The
    fetches of queue.json from the nodes (not HIT) from 3 s before go-live
    to 6 s after, as seconds after go-live with the node asked, and the
    first called ticket's post (a join answered 200 with a ticket in the
    body cannot be told from the log: the first join 200 after go-live)."""
    fetches: list[dict[str, Any]] = []
    first_join: float | None = None
    with log.open() as lines:
        for line in lines:
            f = line.split()
            if len(f) < 9:
                continue
            at = float(f[0]) - float(f[1]) - live_at  # when the request came
            if not -3.0 <= at <= 6.0:
                continue
            uri = f[7].strip('"')
            if uri.endswith("/queue.json") and f[2] not in ("HIT", "-"):
                fetches.append({"at_s": round(at, 3), "cache": f[2], "node": f[8]})
            elif uri.endswith("/join") and f[3] == "200" and at >= 0 and first_join is None:
                first_join = round(at, 3)
    return {
        "queue_fetches": fetches,
        "first_join_200_s": first_join,
        "first_audio_s": None if first_audio_at is None else round(first_audio_at - live_at, 3),
    }


def sample(
    lab: Lab, nodes: list[Node], w0: float, stop: threading.Event, out: list[dict[str, Any]]
) -> None:
    """Once a second: the nodes' CPU (cores over the second) and Redis commands."""
    last_cpu, last_ops, last_t = [n.cpu_s() for n in nodes], lab.redis_ops(), time.monotonic()
    while not stop.wait(1.0):
        cpu, ops, t = [n.cpu_s() for n in nodes], lab.redis_ops(), time.monotonic()
        span = t - last_t
        out.append(
            {
                "t": round(t - w0, 2),
                "origin_cores": round(sum(cpu) / span - sum(last_cpu) / span, 4),
                "redis_ops_per_s": round((ops - last_ops) / span, 1),
            }
        )
        last_cpu, last_ops, last_t = cpu, ops, t


def compare(costs: Costs, args: argparse.Namespace, measured: dict[str, Any]) -> dict[str, Any]:
    """The model on the storm's scenario, beside what was measured."""
    wall = float(measured["wall_s"])
    scenario = Scenario(
        arrivals=args.arrivals,
        over_s=args.over_s,
        pre_s=args.pre_s + float(measured.get("start_post_s") or 0.0),
        cap=args.cap,
        listen_s=args.listen_s,
        give_up=args.give_up,
        origin_nodes=3,
        origin_cores=1.0,
        cache_nodes=1,
        rtt_s=args.rtt_ms / 1000,
        duration_s=wall,
        index_refresh_s=INDEX_REFRESH_MS / 1000,
        golive_published=not args.no_space_feed,
        # the storm asks queue.json (for the cap) just before its clock
        # starts: nginx's first fetch, from which it fetches again every 2 s
        queue_first_fetch_s=0.0,
        # how the storm's waiters learn of a call (--poll): from the storm's
        # POLL_S, queue.json's max-age and the round trip, not from the run
        **storm_notice(args.poll, args.rtt_ms / 1000, poll_s=POLL_S, max_age_s=QUEUE_DOC_MAX_AGE_S),
    )
    model = simulate(costs, scenario)
    predicted = {
        "origin_cpu_mean_cores": model.origin_cpu_mean_cores,
        "nginx_cpu_mean_cores": None,
        "redis_ops_mean_per_s": model.redis_ops_mean_per_s,
        "redis_ops_by_kind": model.redis_ops_by_kind,
        "start_delay_s": model.start_delay_s,
        # where one run's start delay can fall (the first page's notice over
        # the run's phase: townhall.bench.plan_notice), and the phases
        "start_delay_spread_s": model.start_delay_spread_s,
        "start_delay_points_s": [round(v, 4) for v in model.start_delay_points_s],
        "ttfa_after_admission_p50_s": model.ttfa_after_admission_s["p50"],
        "ttfa_after_admission_p99_s": model.ttfa_after_admission_s["p99"],
        "wait_p50_s": model.wait_s["p50"],
        "wait_p99_s": model.wait_s["p99"],
        "admitted": model.admitted,
        "gave_up": model.gave_up,
        "origin_cpu_by_kind": model.origin_cpu_by_kind,
        "first_audio_by_admission": model.first_audio_by_admission,
        "timeline": [
            {k: round(p[k], 4) for k in ("t", "origin_cores", "redis_ops_per_s", "waiting")}
            for p in model.timeline
        ],
    }
    ratio: dict[str, float | None] = {}
    for key, value in measured.items():
        p = predicted.get(key)
        if isinstance(value, int | float) and isinstance(p, int | float) and value:
            ratio[key] = round(p / value, 3)
    spread = model.start_delay_spread_s
    delay = measured.get("start_delay_s")
    inside = None
    if (
        isinstance(delay, int | float)
        and spread.get("p10") is not None
        and spread.get("p90") is not None
    ):
        inside = bool(spread["p10"] <= delay <= spread["p90"])  # type: ignore[operator]
    return {
        "predicted": predicted,
        "predicted_over_measured": ratio,
        "start_delay_inside_p10_p90": inside,
    }


if __name__ == "__main__":
    raise SystemExit(main())
