#!/usr/bin/env python3
"""Measure what `townhall bench plan` needs, on the machine it runs on.

    python benchmarks/plan_calibrate.py   # writes src/townhall/bench/plan_costs.json

Two real `townhall serve` nodes with the segment bus (the deployment of
docs/DEPLOYMENT.md: the machine's PostgreSQL, a database of their own; a
redis-server of their own on a free port), pinned to core 0; wrk and
`townhall bench listeners` on core 1. For each request kind, wrk runs for a
few seconds against the room's owner and the cost is the server's CPU time
from /proc over the run, minus its background (measured first), divided by
the answers. Redis: commands processed and redis-server's CPU from /proc.
nginx (deploy/nginx-cache.conf) in front of the owner, pinned to core 0:
its CPU per cached answer. Writes the JSON the model reads (every figure with
the command that produced it and the load at the time).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_line
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
    wrk,
)

sys.path.insert(0, str(ROOT / "src"))
from townhall.bench.hlsplaylist import parse_playlist

BITRATE_BPS = 64_000  # program_bitrate_bps's default


def account(http: httpx.Client) -> dict[str, str]:
    creds = {"username": "plan" + secrets.token_hex(4), "password": secrets.token_urlsafe(12)}
    assert http.post("/api/accounts", json=creds).status_code == 201
    token = http.post("/api/sessions", json=creds).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def space(http: httpx.Client, headers: dict[str, str], scheduled: bool) -> str:
    body: dict[str, Any] = {"title": "Plan calibration", "visibility": "unlisted"}
    if scheduled:
        start = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        body["scheduled_for"] = start.isoformat()
    answer = http.post("/api/spaces", json=body, headers=headers)
    answer.raise_for_status()
    return str(answer.json()["id"])


def background(nodes: list[Node], seconds: float) -> list[float]:
    before = [n.cpu_s() for n in nodes]
    time.sleep(seconds)
    return [(n.cpu_s() - b) / seconds for n, b in zip(nodes, before, strict=True)]


def size_of(answer: httpx.Response) -> int:
    head = sum(len(k) + len(v) + 4 for k, v in answer.headers.items()) + 17
    return head + len(answer.content)


def request_latency(url: str, path: str, cookie: str, count: int = 200) -> float:
    """Median round trip of one keep-alive GET (no load), raw socket."""
    host, port = url.split("//")[1].split(":")
    out = []
    with socket.create_connection((host, int(port))) as sock:
        req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode()
        for _ in range(count):
            t0 = time.perf_counter()
            sock.sendall(req)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += sock.recv(65536)
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "src/townhall/bench/plan_costs.json"))
    ap.add_argument("--wrk-s", type=float, default=5.0)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--listeners", type=int, default=300)
    ap.add_argument("--line-cap", type=int, default=1600, help="The claim run's space cap.")
    ap.add_argument(
        "--line-tickets", type=int, default=2000, help="Tickets in the claim run's line."
    )
    ap.add_argument("--claim-s", type=float, default=7.0, help="How long the claim run lasts.")
    args = ap.parse_args(argv)
    started = time.time()
    load_before = loadavg()
    root = Path(tempfile.mkdtemp(prefix="plan-cal-"))
    lab = Lab(root)
    result: dict[str, Any] = {"origin_us": {}, "redis_ops": {}, "bytes": {}, "commands": {}}
    notes: dict[str, Any] = {}
    try:
        env = {
            **OPEN_LIMITS,
            **BUS,
            "TOWNHALL_DATABASE_URL": lab.postgres(),
            "TOWNHALL_REDIS_URL": lab.redis(),
            "TOWNHALL_REDIS_PREFIX": "plan:",
            "TOWNHALL_SIGNING_KEYS": secrets.token_urlsafe(32),
            "TOWNHALL_MAX_LISTENERS": "100000000",
            "TOWNHALL_NODE_MAX_LISTENERS": "0",
            "TOWNHALL_LLHLS_BUDGET_LISTENERS": "0",
            # as plan_validate.py's nodes (the same background): a node learns
            # a new space within 0.2 s
            "TOWNHALL_SPACE_INDEX_REFRESH_MS": "200",
        }
        a = lab.node("node-a", env)
        b = lab.node("node-b", env)
        nodes = [a, b]
        log("idle nodes")
        ops0, t0, cmd0 = lab.redis_ops(), time.monotonic(), lab.redis_commands()
        idle = background(nodes, args.idle_s)
        idle_ops_s = (lab.redis_ops() - ops0) / (time.monotonic() - t0)
        notes["idle_redis_commands"] = commands_delta(lab.redis_commands(), cmd0)
        result["node_idle_cores"] = statistics.mean(idle)
        http = httpx.Client(base_url=a.url, timeout=15)
        host = account(http)
        live = space(http, host, scheduled=False)
        went_live = time.monotonic()
        later = space(http, host, scheduled=True)
        joined = http.post(f"/api/spaces/{live}/join", json={}).json()
        token = joined["token"]
        cookie = f"th_listener={token}"
        # the room's start: until the first part is in the playlist of every
        # node (asking a node for the room also makes it follow the room)
        seen: dict[str, float] = {}
        while len(seen) < len(nodes) and time.monotonic() < went_live + 60:
            for n in nodes:
                if n.name not in seen:
                    text = httpx.get(
                        f"{n.url}/spaces/{live}/live.m3u8",
                        headers={"Cookie": cookie, "User-Agent": "townhall-bench-plan"},
                    ).text
                    if "#EXT-X-PART:" in text:
                        seen[n.name] = time.monotonic() - went_live
            time.sleep(0.05)
        result["room_start_s"] = round(max(seen.values()), 3)
        notes["room_start_s"] = seen
        time.sleep(4)  # the room runs, the other node follows it
        log("a live room, nobody listening")
        ops0, t0, cmd0 = lab.redis_ops(), time.monotonic(), lab.redis_commands()
        room = background(nodes, args.idle_s)
        room_ops_s = (lab.redis_ops() - ops0) / (time.monotonic() - t0)
        notes["room_redis_commands"] = commands_delta(lab.redis_commands(), cmd0)
        owner_i = 0 if room[0] - idle[0] >= room[1] - idle[1] else 1
        owner = nodes[owner_i]
        rest = room[owner_i]  # the owner's background while the room is live
        result["room_owner_cores"] = max(0.0, room[owner_i] - idle[owner_i])
        result["room_follower_cores"] = max(0.0, room[1 - owner_i] - idle[1 - owner_i])
        parts_per_s = 1 / 0.512
        result["redis_ops"]["node_s"] = idle_ops_s / 2
        # per part: the owner's write (one script: XADD and the window's keys)
        # and each follower's read (XREAD); INFO commandstats tells them apart
        room_span = time.monotonic() - t0
        reads_s = notes["room_redis_commands"].get("xread", 0) / room_span
        result["redis_ops"]["part_follower"] = round(reads_s / parts_per_s, 3)
        result["redis_ops"]["part"] = round(
            max(0.0, room_ops_s - idle_ops_s - reads_s) / parts_per_s, 3
        )
        http.close()
        http = httpx.Client(base_url=owner.url, timeout=15, headers={"Cookie": cookie})
        ticket = http.post(f"/api/spaces/{later}/join", json={}).json()["ticket"]
        plain_path = httpx.URL(joined["urls"]["plain_m3u8"]).path

        def live_parts() -> list[str]:
            """The newest parts of the live window (asked again before each use:
            on a loaded machine the runs before can outlast the window)."""
            deadline = time.monotonic() + 30
            while True:
                answer = http.get(f"/spaces/{live}/live.m3u8")
                if answer.status_code == 200:
                    ll = parse_playlist(answer.text)
                    found = [f"/spaces/{live}/{p.uri}" for p in ll.all_parts()][-8:]
                    if len(found) >= 4:
                        return found
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no parts in the live playlist: {answer.status_code} {answer.text[:300]}"
                    )
                time.sleep(0.5)

        def live_segments() -> list[str]:
            plain = parse_playlist(http.get(plain_path).text)
            found = [
                str(httpx.URL(owner.url + plain_path).join(s.uri).path) for s in plain.segments
            ]
            return found[-3:]

        parts = live_parts()
        segments = live_segments()
        kinds: list[tuple[str, list[str], str, str | None, int]] = [
            ("join", [f"/api/spaces/{live}/join"], "POST", "{}", 200),
            ("join_queued", [f"/api/spaces/{later}/join"], "POST", "{}", 202),
            ("ticket", [f"/api/spaces/{later}/join"], "POST", json.dumps({"ticket": ticket}), 202),
            ("leave", [f"/api/spaces/{live}/leave"], "POST", json.dumps({"token": token}), 204),
            ("queue_doc", [f"/spaces/{live}/queue.json"], "GET", None, 200),
            ("state", [f"/spaces/{live}/state.json"], "GET", None, 200),
            ("part", parts, "GET", None, 200),
            ("playlist", [f"/spaces/{live}/live.m3u8"], "GET", None, 200),
            ("segment", segments, "GET", None, 200),
        ]
        redis_cpu = redis_ops = 0.0
        for kind, paths, method, body, status in kinds:
            if kind == "part":
                paths = parts = live_parts()
            elif kind == "segment":
                paths = live_segments()
            answer = http.request(method, paths[0], content=body)
            if answer.status_code != status:
                raise RuntimeError(f"{kind}: {method} {paths[0]} answered {answer.status_code}")
            result["bytes"][kind] = size_of(answer)
            ops0, rc0, c0, w0 = lab.redis_ops(), lab.redis_cpu_s(), owner.cpu_s(), time.monotonic()
            cmd0 = lab.redis_commands()
            run = wrk(lab, owner.url, paths, args.wrk_s, method=method, body=body, cookie=cookie)
            wall = time.monotonic() - w0
            cpu = owner.cpu_s() - c0 - rest * wall
            n = max(1, run["requests"])
            result["origin_us"][kind] = round(cpu / n * 1e6, 1)
            ops = lab.redis_ops() - ops0 - room_ops_s * wall
            if method == "POST":  # (GETs: the commands are in notes[kind])
                result["redis_ops"][kind] = round(max(0.0, ops) / n, 3)
            redis_cpu += lab.redis_cpu_s() - rc0
            redis_ops += lab.redis_ops() - ops0
            result["commands"][kind] = run["command"]
            notes[kind] = {
                "requests": run["requests"],
                "non_2xx": run["non_2xx"],
                "wall_s": wall,
                "redis_commands": commands_delta(lab.redis_commands(), cmd0),
            }
            log(f"{kind}: {result['origin_us'][kind]} us, {run['requests']} requests")
            if method == "GET" and run["non_2xx"] > 0.01 * n:
                raise RuntimeError(f"{kind}: {run['non_2xx']} of {n} answers were not 2xx")
        result["redis_us"] = round(redis_cpu / max(1.0, redis_ops) * 1e6, 2)
        # the same requests one at a time (wrk -c1): what one costs when it
        # finds the node's loop idle, as a storm's spread-out posts do (the
        # wake-ups of the request and of each Redis reply are its own)
        result["origin_sparse_us"] = {}
        for kind, paths, method, body, _ in kinds:
            if method != "POST" and kind != "queue_doc":
                continue
            c0, w0 = owner.cpu_s(), time.monotonic()
            run = wrk(lab, owner.url, paths, max(1, round(args.wrk_s / 2)), method=method,
                      body=body, cookie=cookie, connections=1)  # fmt: skip
            if run["requests"] < 100:
                raise RuntimeError(f"{kind} one at a time: {run['requests']} answers ({run})")
            cpu = owner.cpu_s() - c0 - rest * (time.monotonic() - w0)
            result["origin_sparse_us"][kind] = round(cpu / max(1, run["requests"]) * 1e6, 1)
            notes[kind]["sparse_requests"] = run["requests"]
            log(f"{kind}, one at a time: {result['origin_sparse_us'][kind]} us")
        # a moving line: the scheduled space's tickets (the join_queued and
        # ticket runs above) are called at admit_rate_per_s once it goes live;
        # nobody claims, so every node ticks a line for the whole window
        before = http.get(f"/spaces/{later}/queue.json").json()
        http.post(f"/api/spaces/{later}/start", headers=host).raise_for_status()
        time.sleep(3)
        ops0, t0, cmd0 = lab.redis_ops(), time.monotonic(), lab.redis_commands()
        moving = background(nodes, args.idle_s)
        moving_ops_s = (lab.redis_ops() - ops0) / (time.monotonic() - t0)
        notes["line_redis_commands"] = commands_delta(lab.redis_commands(), cmd0)
        after = http.get(f"/spaces/{later}/queue.json").json()
        # minus the background with one room and the second room's owner
        extra = sum(moving) - sum(room) - result["room_owner_cores"]
        result["line_tick_cores"] = round(max(0.0, extra / len(nodes)), 4)
        line_ops = moving_ops_s - room_ops_s - (room_ops_s - idle_ops_s)
        result["redis_ops"]["line_s"] = round(max(0.0, line_ops) / len(nodes), 2)
        notes["line"] = {
            "waiting_before": before.get("waiting"),
            "through_after": after.get("admitting_through"),
            "waiting_after": after.get("waiting"),
            "by_node_cores": moving,
        }
        log(f"moving line: {result['line_tick_cores']} cores per node, {notes['line']}")
        # the line's own requests: a ticket posted after the draw (its turn not
        # come) and a called ticket claimed while the line moves (plan_line.py)
        line_us, line_sparse, line_ops, notes["line_runs"] = plan_line.line_runs(
            lab, nodes, owner, host, cap=args.line_cap, tickets=args.line_tickets,
            wrk_s=args.wrk_s, claim_s=args.claim_s, idle_s=args.idle_s,
        )  # fmt: skip
        result["origin_us"].update(line_us)
        result["origin_sparse_us"].update(line_sparse)
        # claims come at the line's pace (one at a time): 32 at once is not
        # measured; estimated by the join's ratio of the two
        join_ratio = result["origin_us"]["join"] / max(1.0, result["origin_sparse_us"]["join"])
        result["origin_us"]["claim"] = round(line_sparse["claim"] * join_ratio, 1)
        notes["line_runs"]["claim_saturated_estimate"] = (
            f"claim one at a time x join 32 at once / join one at a time ({join_ratio:.3f})"
        )
        result["redis_ops"].update(line_ops)
        result["redis_sparse_ops"] = notes["line_runs"]["redis_sparse_ops"]
        result["bytes"]["ticket_drawn"] = result["bytes"]["ticket"]
        # the room's start as the storm (and a host) has it: a scheduled space
        # started by its host (a space created live starts slower)
        started_in = notes["line_runs"]["room_start_from_start_s"]
        if len(started_in) == len(nodes):
            notes["room_start_created_live_s"] = result["room_start_s"]
            result["room_start_s"] = max(started_in.values())
        result["bytes"]["claim"] = result["bytes"]["join"]
        # blocking reloads: real LL-HLS listeners (part + reload per part)
        # (on a third node without a cap, following the room: `bench listeners`
        # carries no listener token; a follower answers from the same window)
        log(f"{args.listeners} LL-HLS listeners on a follower without a cap")
        free = lab.node("node-c", {**env, "TOWNHALL_MAX_LISTENERS": "0"})
        httpx.get(f"{free.url}/spaces/{live}/live.m3u8")
        time.sleep(3)
        rest = background([free], args.idle_s / 2)[0]
        c0, w0 = free.cpu_s(), time.monotonic()
        cmd = [
            "taskset", "-c", CLIENT_CORE, sys.executable, "-m", "townhall", "bench", "listeners",
            "--target", free.url, "--space", live, "--mode", "llhls",
            "--listeners", str(args.listeners), "--duration-s", "15", "--json",
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        wall = time.monotonic() - w0
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        held = summary.get("listeners_held") or args.listeners
        # a request as a player sees it with that many players on the machine:
        # the first audio is five requests one after another (START_REQUESTS)
        result["client_request_loaded_s"] = round(float(summary["ttfa_p50_s"]) / 5, 6)
        cpu = free.cpu_s() - c0 - rest * wall
        per_part = cpu / (held * 15 * parts_per_s) * 1e6
        result["origin_us"]["blocking_reload"] = round(
            max(0.0, per_part - result["origin_us"]["part"]), 1
        )
        result["bytes"]["blocking_reload"] = result["bytes"]["playlist"]
        # the room plays silence here, which AAC shrinks to almost nothing: a part
        # or segment of someone talking carries the program's bitrate (64 kbit/s)
        notes["silence_bytes"] = {k: result["bytes"][k] for k in ("part", "segment")}
        head = 300
        result["bytes"]["part"] = head + BITRATE_BPS * 0.512 / 8
        result["bytes"]["segment"] = head + BITRATE_BPS * 4.096 / 8
        result["commands"]["blocking_reload"] = " ".join(cmd[3:])
        notes["blocking_reload"] = {"held": held, "per_part_interval_us": round(per_part, 1)}
        # nginx in front (of the follower without a cap: no link needed): its
        # CPU per cached answer
        proc, nginx_url = lab.nginx("nginx-cache.conf", {"@ORIGIN@": f"127.0.0.1:{free.port}"})
        parts = live_parts()
        for p in parts:
            httpx.get(nginx_url + p, headers={"Cookie": cookie})
        n0, w0 = proc_cpu_s(proc.pid), time.monotonic()
        run = wrk(lab, nginx_url, parts, args.wrk_s, cookie=cookie)
        result["nginx_us"] = round((proc_cpu_s(proc.pid) - n0) / max(1, run["requests"]) * 1e6, 1)
        result["commands"]["nginx"] = run["command"]
        idle_rtt = round(request_latency(nginx_url, parts[-1], cookie), 6)
        notes["client_request_idle_s"] = idle_rtt
        notes["client_request_direct_s"] = result.pop("client_request_loaded_s")
        # a request as a player sees it through the cache tier, players starting
        # one after another as a line lets them in (the storm's pages play
        # through nginx): 0 to N evenly over 10 s
        cmd = [
            "taskset", "-c", CLIENT_CORE, sys.executable, "-m", "townhall", "bench", "listeners",
            "--target", nginx_url, "--space", live, "--mode", "llhls", "--shape", "storm",
            "--listeners", str(args.listeners), "--ramp-s", "10", "--duration-s", "15", "--json",
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        through = json.loads(out.stdout.strip().splitlines()[-1])
        loaded = round(float(through["ttfa_p50_s"]) / 5, 6)
        notes["client_request_through_nginx"] = {
            "ttfa_p50_s": through["ttfa_p50_s"],
            "ttfa_p99_s": through["ttfa_p99_s"],
            "held": through.get("listeners_held"),
            "command": " ".join(cmd[3:]).replace(nginx_url, "http://<nginx>"),
        }
        result["client_request_s"] = max(idle_rtt, loaded)
        result["first_audio_p99_s"] = float(through["ttfa_p99_s"])
        result["meta"] = {
            "measured_at": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
            "command": "python benchmarks/plan_calibrate.py " + " ".join(argv or sys.argv[1:]),
            "machine": {
                "nproc": os.cpu_count(),
                "python": platform.python_version(),
                "kernel": platform.release(),
            },
            "load_before": load_before,
            "load_after": loadavg(),
            "notes": notes,
            "how": "server CPU (utime+stime from /proc, taskset -c 0) over each wrk run "
            "(taskset -c 1 wrk -t1 -c32), minus the node's background with the live room, "
            "per answer; two nodes with the bus on PostgreSQL and a redis-server of our own",
        }
        out_path = Path(args.out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {out_path}")
        print(json.dumps(result, indent=2))
        return 0
    finally:
        lab.close()


if __name__ == "__main__":
    raise SystemExit(main())
