#!/usr/bin/env python3
"""Origin CPU as LL-HLS listeners through nginx grow (issue 11's bar: flat
within 10 % from 500 to 4,000).

    flock /work/wt/bench.lock python benchmarks/origin_flat.py            # three nodes
    flock /work/wt/bench.lock python benchmarks/origin_flat.py --nodes 1  # one node

One live room (silence: the program runs without a host) on three `townhall
serve` nodes with the segment bus (the machine's PostgreSQL, a database of
their own; a redis-server of their own) behind Debian's nginx with
deploy/nginx-nodes.conf, or on one node behind deploy/nginx-cache.conf; the
nodes and nginx pinned to core 0. For each step a fresh `townhall bench
listeners --mode llhls` crowd on core 1 plays through nginx; over the steady
part of the step (after the ramp) the nodes', nginx's and the load
generator's CPU come from /proc, and the requests that reached the origin
from nginx's access log (a log of our own, written only for requests nginx
passed upstream, subrequests included). Writes
benchmarks/results/origin_flat.json and docs/plots/origin_flat.png.

A control (``--control``, on with three nodes): a fourth node of the same
deployment on the same core, following the same room, that nginx never sends
to. It does a follower's work and no listener's, so its CPU over a step is
what the machine charges for the same work at that minute (other tenants, the
crowd on the sibling core sharing caches). The origin's CPU per control CPU
is reported beside the raw figure, with its own spread.
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_calibrate import account, space
from plan_lab import BUS, CLIENT_CORE, OPEN_LIMITS, ROOT, Lab, Node, loadavg, log, proc_cpu_s

LOG_FORMAT = (
    "log_format th_upstream '$msec $upstream_cache_status $upstream_addr $status $uri "
    "$request_time';"
)
BAR = 0.10


def access_log(path: Path, every: Path | None) -> str:
    """Our log of the requests passed upstream; ``every``: also a log of all
    requests (a diagnosis: what a listener waits for at the cache)."""
    out = (
        f"{LOG_FORMAT}\n    log_subrequest on;\n"
        f"    access_log {path} th_upstream buffer=64k flush=1s if=$upstream_addr;"
    )
    if every is not None:
        out += f"\n    access_log {every} th_upstream buffer=256k flush=1s;"
    return out


def wait_profile(path: Path) -> dict[str, Any]:
    """From the log of every request: answer time quantiles by cache status
    and request kind (blocking reload, part, other)."""
    groups: dict[str, list[float]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        f = line.split(" ")
        if len(f) < 6:
            continue
        kind = "reload" if f[-2].endswith("live.m3u8") else "part" if "/part/" in f[-2] else "other"
        groups.setdefault(f"{kind} {f[1]}", []).append(float(f[-1]))
    out: dict[str, Any] = {}
    for key, times in sorted(groups.items()):
        times.sort()
        n = len(times)
        out[key] = {
            "n": n,
            "p50_s": times[n // 2],
            "p90_s": times[min(n - 1, n * 9 // 10)],
            "share_over_0.3_s": round(sum(t > 0.3 for t in times) / n, 4),
        }
    return out


def origin_requests(path: Path, t0: float, t1: float) -> dict[str, Any]:
    """Requests nginx passed upstream between wall times t0 and t1, by kind."""
    by_kind: dict[str, int] = {}
    by_status: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(" ")  # ($upstream_addr may be "a, b": read from the end)
        if len(parts) < 6 or not t0 <= float(parts[0]) < t1:
            continue
        total += 1
        uri = parts[-2]
        kind = (
            "reload"
            if uri.endswith("live.m3u8")
            else "part"
            if "/part/" in uri
            else uri.rsplit("/", 1)[-1]
        )
        by_kind[kind] = by_kind.get(kind, 0) + 1
        by_status[parts[-3]] = by_status.get(parts[-3], 0) + 1
    span = max(1e-9, t1 - t0)
    return {
        "per_s": round(total / span, 2),
        "by_kind_per_s": {k: round(v / span, 2) for k, v in sorted(by_kind.items())},
        "by_status": by_status,
    }


def step(
    lab: Lab,
    nodes: list[Node],
    nginx: Any,
    url: str,
    live: str,
    n: int,
    args: Any,
    log_path: Path,
    control: Node | None = None,
) -> dict[str, Any]:
    """One step: ``n`` listeners in crowds of at most ``--per-process``, each
    crowd a process in a session of its own (the kernel's autogroup then
    gives it a share of its own, as every other session on the machine has)."""
    ramp = max(2.0, n / 800)
    crowds = [min(args.per_process, n - i) for i in range(0, n, args.per_process)]
    cmds = [
        [
            "taskset", "-c", args.client_cores, sys.executable, "-m", "townhall", "bench",
            "listeners", "--target", url, "--space", live, "--mode", "llhls",
            "--listeners", str(k), "--ramp-s", f"{ramp:g}", "--duration-s", f"{args.step_s:g}",
            "--json",
        ]
        for k in crowds
    ]  # fmt: skip
    log(f"{n} listeners in {len(crowds)} processes: " + " ".join(cmds[0][3:]))
    procs = [
        subprocess.Popen(
            c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        for c in cmds
    ]
    outs: list[dict[str, Any]] = [{} for _ in procs]

    def reader(proc: Any, out: dict[str, Any]) -> None:
        out["stdout"], out["stderr"] = proc.communicate(timeout=args.step_s + 90)

    threads = [
        threading.Thread(target=reader, args=(p, o), daemon=True)
        for p, o in zip(procs, outs, strict=True)
    ]
    for t in threads:
        t.start()
    settle = ramp + args.settle_s
    window = args.step_s - settle - 2.0
    time.sleep(settle)

    def client_cpu() -> float:
        return sum(proc_cpu_s(p.pid) for p in procs)

    c0 = [nd.cpu_s() for nd in nodes]
    q0 = control.cpu_s() if control is not None else 0.0
    g0, k0, w0, wall0 = proc_cpu_s(nginx.pid), client_cpu(), time.monotonic(), time.time()
    l0 = loadavg()
    time.sleep(window)
    c1 = [nd.cpu_s() for nd in nodes]
    q1 = control.cpu_s() if control is not None else 0.0
    g1, k1, w1, wall1 = proc_cpu_s(nginx.pid), client_cpu(), time.monotonic(), time.time()
    for t in threads:
        t.join(timeout=args.step_s + 100)
    summaries = []
    for p, o in zip(procs, outs, strict=True):
        if p.returncode != 0 or not o.get("stdout"):
            raise RuntimeError(f"bench listeners failed: {o.get('stderr', '')[-2000:]}")
        summaries.append(json.loads(o["stdout"].strip().splitlines()[-1]))
    span = w1 - w0
    time.sleep(1.5)  # nginx flushes its log buffer every second
    by_node = [(b - a) / span for a, b in zip(c0, c1, strict=True)]
    played = sum(float(x.get("played_s") or 0) for x in summaries)
    stalled = sum(float(x.get("stalled_s") or 0) for x in summaries)
    errors: dict[str, int] = {}
    for x in summaries:
        for k, v in (x.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + int(v)
    row = {
        "listeners": n,
        "processes": len(procs),
        "held": sum(int(x.get("listeners_held") or 0) for x in summaries),
        "stall_ratio": round(stalled / played, 6) if played > 0 else None,
        "ttfa_p50_s": max(float(x.get("ttfa_p50_s") or 0) for x in summaries),
        "ttfa_p99_s": max(float(x.get("ttfa_p99_s") or 0) for x in summaries),
        "errors": errors,
        "client_requests_per_s": round(sum(float(x["requests_per_s"]) for x in summaries), 1),
        "window_s": round(span, 2),
        "origin_cores": round(sum(by_node), 4),
        "origin_by_node_cores": [round(c, 4) for c in by_node],
        "control_cores": round((q1 - q0) / span, 4) if control is not None else None,
        "origin_per_control": round(sum(by_node) / ((q1 - q0) / span), 3)
        if control is not None and q1 > q0
        else None,
        "nginx_cores": round((g1 - g0) / span, 4),
        "client_cores": round((k1 - k0) / span, 4),
        "origin_requests": origin_requests(log_path, wall0, wall1),
        "load": [l0, loadavg()],
        "command": " ".join(cmds[0][3:]).replace(url, "http://<nginx>"),
    }
    log(
        f"{n}: origin {row['origin_cores']} cores, nginx {row['nginx_cores']}, client "
        f"{row['client_cores']}, control {row['control_cores']}, origin requests {row['origin_requests']['per_s']}/s, "
        f"held {row['held']}, stalls {row['stall_ratio']}"
    )
    return row


def plot(rows: list[dict[str, Any]], idle: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [r["listeners"] for r in rows]
    for key, label in (
        ("origin_cores", "origin (all nodes)"),
        ("nginx_cores", "nginx"),
        ("client_cores", "load generator"),
    ):
        ax.plot(xs, [r[key] for r in rows], "o", label=label)
    if all(r.get("control_cores") is not None for r in rows):
        ax.plot(xs, [r["control_cores"] for r in rows], "x", label="control node (no listeners)")
    ax.axhline(idle, color="grey", ls=":", label="origin, room live, no listeners")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(xs)), [str(x) for x in sorted(set(xs))])
    ax.set_xlabel("LL-HLS listeners through nginx")
    ax.set_ylabel("CPU cores")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, choices=(1, 3), default=3)
    ap.add_argument("--steps", default="500,1000,2000,4000,500")
    ap.add_argument("--step-s", type=float, default=30.0)
    ap.add_argument("--settle-s", type=float, default=5.0)
    ap.add_argument("--idle-s", type=float, default=15.0)
    ap.add_argument("--client-cores", default=CLIENT_CORE, help="taskset -c for the crowd")
    ap.add_argument("--per-process", type=int, default=1000, help="listeners per crowd process")
    ap.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a fourth node, same deployment and room, no listeners (default: on with 3 nodes)",
    )
    ap.add_argument("--log-all", action="store_true", help="diagnosis: log every request too")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/origin_flat.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs/plots/origin_flat.png"))
    args = ap.parse_args(argv)
    steps = [int(x) for x in args.steps.split(",")]
    root = Path(tempfile.mkdtemp(prefix="origin-flat-"))
    lab = Lab(root)
    log_path = root / "upstream.log"
    load_before = loadavg()
    try:
        env = {
            **OPEN_LIMITS,
            "TOWNHALL_SIGNING_KEYS": secrets.token_urlsafe(32),
            "TOWNHALL_MAX_LISTENERS": "0",
            "TOWNHALL_NODE_MAX_LISTENERS": "0",
            "TOWNHALL_LLHLS_BUDGET_LISTENERS": "0",
        }
        if args.nodes == 3:
            env |= {
                **BUS,
                "TOWNHALL_DATABASE_URL": lab.postgres(),
                "TOWNHALL_REDIS_URL": lab.redis(),
                "TOWNHALL_REDIS_PREFIX": "flat:",
                "TOWNHALL_SPACE_INDEX_REFRESH_MS": "200",
            }
        nodes = [lab.node(f"node-{c}", env) for c in "abc"[: args.nodes]]
        use_control = args.control if args.control is not None else args.nodes == 3
        if use_control and args.nodes != 3:
            raise SystemExit("--control needs the three-node deployment (it follows the bus)")
        control = lab.node("node-control", env) if use_control else None
        if args.nodes == 3:
            template = "nginx-nodes.conf"
            fields = {f"@NODE{i}@": f"127.0.0.1:{n.port}" for i, n in enumerate(nodes, 1)}
        else:
            template = "nginx-cache.conf"
            fields = {"@ORIGIN@": f"127.0.0.1:{nodes[0].port}"}
        every = root / "every.log" if args.log_all else None
        nginx, url = lab.nginx(template, fields, access_log(log_path, every))
        http = httpx.Client(base_url=nodes[0].url, timeout=15)
        live = space(http, account(http), scheduled=False)
        deadline = time.monotonic() + 60
        while "#EXT-X-PART:" not in httpx.get(f"{url}/spaces/{live}/live.m3u8").text:
            if time.monotonic() > deadline:
                raise RuntimeError("the room did not go live within 60 s")
            time.sleep(0.2)
        for nd in [*nodes, *([control] if control else [])]:  # all follow before we measure
            httpx.get(f"{nd.url}/spaces/{live}/live.m3u8")
        time.sleep(5)
        c0, t0 = [nd.cpu_s() for nd in nodes], time.monotonic()
        q0 = control.cpu_s() if control else 0.0
        time.sleep(args.idle_s)
        span0 = time.monotonic() - t0
        idle_by_node = [(nd.cpu_s() - c) / span0 for nd, c in zip(nodes, c0, strict=True)]
        idle = sum(idle_by_node)
        idle_control = (control.cpu_s() - q0) / span0 if control else None
        log(
            f"room live, no listeners: origin {idle:.4f} cores {idle_by_node}, control {idle_control}"
        )
        rows = [step(lab, nodes, nginx, url, live, n, args, log_path, control) for n in steps]
        time.sleep(1.5)
        waits = wait_profile(every) if every is not None else None
    finally:
        lab.close()
    cores = [r["origin_cores"] for r in rows]
    lo, hi = min(cores), max(cores)
    # the same listener count measured more than once (interleaved steps,
    # e.g. --steps 500,4000,1000,2000,500,4000,1000,2000): its mean, so the
    # nodes' background drifting over minutes is told apart from listeners
    by_count: dict[int, list[float]] = {}
    for r in rows:
        by_count.setdefault(r["listeners"], []).append(r["origin_cores"])
    means = {n: sum(v) / len(v) for n, v in sorted(by_count.items())}
    mlo, mhi = min(means.values()), max(means.values())
    rel: dict[int, list[float]] = {}
    for r in rows:
        if r.get("origin_per_control"):
            rel.setdefault(r["listeners"], []).append(r["origin_per_control"])
    rel_means = {n: sum(v) / len(v) for n, v in sorted(rel.items())}
    rlo, rhi = (min(rel_means.values()), max(rel_means.values())) if rel_means else (0.0, 0.0)
    result = {
        "command": "python benchmarks/origin_flat.py " + " ".join(argv or sys.argv[1:]),
        "nodes": args.nodes,
        "nginx_template": f"deploy/{template}",
        "load_before": load_before,
        "load_after": loadavg(),
        "idle_origin_cores": round(idle, 4),
        "idle_by_node_cores": [round(c, 4) for c in idle_by_node],
        "steps": rows,
        "answer_times_at_the_cache": waits,
        "spread": round((hi - lo) / lo, 4) if lo > 0 else None,
        "mean_cores_by_listeners": {str(n): round(m, 4) for n, m in means.items()},
        "spread_of_means": round((mhi - mlo) / mlo, 4) if mlo > 0 else None,
        "idle_control_cores": round(idle_control, 4) if idle_control is not None else None,
        "mean_origin_per_control_by_listeners": {str(n): round(m, 3) for n, m in rel_means.items()},
        "spread_of_means_per_control": round((rhi - rlo) / rlo, 4) if rlo > 0 else None,
        "bar": f"origin CPU max/min - 1 <= {BAR:.0%} (each step; and over each count's mean)",
        "met": lo > 0 and (hi - lo) / lo <= BAR,
        "met_on_means": mlo > 0 and (mhi - mlo) / mlo <= BAR,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    title = f"Origin CPU vs listeners through nginx ({args.nodes} node{'s' * (args.nodes > 1)})"
    plot(rows, idle, Path(args.plot), title)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2))
    for r in rows:
        print(
            f"{r['listeners']:>5} held {r['held']} stall {r['stall_ratio']} origin "
            f"{r['origin_cores']:.4f} control {r['control_cores']} nginx {r['nginx_cores']:.4f} client {r['client_cores']:.4f} "
            f"upstream {r['origin_requests']['per_s']}/s {r['origin_requests']['by_kind_per_s']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
