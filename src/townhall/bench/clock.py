"""The mixer clock across a go-live: lateness p50/p99/max and skipped frames
while a second room starts on a server that already has N listeners.

    python -m townhall.bench.clock --listeners 2000 [--mode llhls] [--json]

What runs (all on loopback, bounded in time): a ``townhall serve`` of its own
(pinned to ``--server-core``; or ``--target URL`` for one you started), room A
live with a speaker bot sending a tone, ``townhall bench listeners`` playing
room A (pinned to ``--load-core``), then, after ``--settle-s``, the host of a
scheduled room B goes live and a speaker bot connects to it. The figures come
from two scrapes of the server's /metrics (``townhall_mixer_clock_late_seconds``
and ``townhall_mixer_skipped_frames_total``) around the go-live: percentiles
are interpolated within the histogram's buckets and the max is the upper bound
of the highest bucket used, so read them with the bucket bounds in mind.

``--workers N`` (N > 1, or ``--scaled-out``) runs ``serve --workers N``
scaled out: a fresh PostgreSQL database and Redis key prefix of its own
(``--postgres-url`` / ``--redis-url``, from TOWNHALL_TEST_POSTGRES_URL /
TOWNHALL_TEST_REDIS_URL, the machine's defaults otherwise), removed at the
end, and the bus on. Each worker is a node with its own media process; the
figures then come from the /metrics of each room's owner: the room's lease
in Redis (``<prefix>lease:<space>``) names the node, and the node's entry
(``<prefix>node:<node>``, server/forward.py) its loopback address, where the
bench scrapes every worker (a scrape through the shared port would land on
whichever worker the kernel picks). The server is then not pinned unless
``--server-core`` says so (the workers are there to use more cores).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from townhall.bench.clock_nodes import (
    Nodes,
    ScaledOut,
    _cpu_s,
    _drop_keys,
    admin_sql,
    is_scaled_out,
    owners_figures,
    sample_tree,
    scaled_out_env,
    scaled_out_plan,
    server_core,
    tree_usage,
)
from townhall.bench.latency import _check, _post
from townhall.client.peer import PcmTrack, SpeakerClient
from townhall.client.speak import http_offer

LATE = "townhall_mixer_clock_late_seconds"
SKIPPED = "townhall_mixer_skipped_frames_total"
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class ClockFigures:
    """Mixer clock lateness between two /metrics scrapes (every room's ticks)."""

    ticks: int
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float  # upper bound of the highest bucket with a tick in it
    share_within_20ms: float
    skipped_frames: int


def _samples(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, value = line.rsplit(" ", 1)
            out[key] = out.get(key, 0.0) + float(value)
    return out


def _buckets(text: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for key, value in _samples(text, LATE + "_bucket{").items():
        le = key.split('le="', 1)[1].split('"', 1)[0]
        out[float("inf") if le == "+Inf" else float(le)] = value
    return out


def clock_figures(before: str, after: str) -> ClockFigures:
    """The clock's figures between two scrapes of /metrics (pure)."""
    b0, b1 = _buckets(before), _buckets(after)
    cumulative = sorted((le, b1[le] - b0.get(le, 0.0)) for le in b1)
    total = cumulative[-1][1] if cumulative else 0.0
    skipped = sum(_samples(after, SKIPPED).values()) - sum(_samples(before, SKIPPED).values())

    def quantile(q: float) -> float:
        if total <= 0:
            return 0.0
        want = q * total
        low_le, low_n = 0.0, 0.0
        for le, n in cumulative:
            if n >= want:
                if le == float("inf"):
                    return low_le
                share = (want - low_n) / (n - low_n) if n > low_n else 1.0
                return low_le + (le - low_le) * share
            low_le, low_n = le, n
        return low_le

    top = 0.0
    prev = 0.0
    for le, n in cumulative:
        if n > prev:
            top = le
        prev = n
    within = dict(cumulative).get(0.02, 0.0)
    return ClockFigures(
        ticks=int(total),
        late_p50_ms=round(quantile(0.50) * 1000, 2),
        late_p99_ms=round(quantile(0.99) * 1000, 2),
        late_max_ms=top * 1000,
        share_within_20ms=round(within / total, 5) if total else 1.0,
        skipped_frames=int(skipped),
    )


# -- scaled out: a database and key prefix of our own; each room's owner ----------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned(core: int | None, argv: list[str]) -> list[str]:
    if core is None or not hasattr(os, "sched_setaffinity"):
        return argv
    return ["taskset", "-c", str(core), *argv]


async def _wait_healthy(http: httpx.AsyncClient, deadline_s: float) -> None:
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get("/healthz")).status_code in (200, 503):
                return
        if time.monotonic() > deadline_s:
            raise RuntimeError("the server did not answer /healthz in time")
        await asyncio.sleep(0.25)


async def _host(http: httpx.AsyncClient, scheduled: bool) -> tuple[str, dict[str, str]]:
    name, password = "clock_" + secrets.token_hex(4), secrets.token_urlsafe(16)
    creds = {"username": name, "password": password}
    _check(await _post(http, "/api/accounts", json=creds), "creating an account")
    token = _check(await _post(http, "/api/sessions", json=creds), "signing in")["token"]
    headers = {"Authorization": f"Bearer {token}"}
    body: dict[str, str] = {"title": "bench clock", "visibility": "unlisted"}
    if scheduled:
        body["scheduled_for"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    space = _check(await _post(http, "/api/spaces", json=body, headers=headers), "a space")
    return str(space["id"]), headers


async def _speaker(
    http: httpx.AsyncClient, space_id: str, headers: dict[str, str]
) -> SpeakerClient:
    token = _check(
        await _post(http, f"/api/spaces/{space_id}/speaker-token", headers=headers),
        "a speaker token",
    )["token"]
    rate = 48_000
    tone = (np.sin(2 * np.pi * 440 * np.arange(rate) / rate) * 8000).astype(np.int16)
    client = SpeakerClient(PcmTrack(tone, loop=True), record=False)
    await client.connect(http_offer(http, space_id, str(token)))
    await asyncio.wait_for(client.connected.wait(), 20)
    return client


def _spawn_server(
    args: argparse.Namespace, tmp: Path, scaled: ScaledOut | None
) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    argv = [sys.executable, "-m", "townhall", "serve", "--port", str(port)]
    argv += ["--data-dir", str(tmp / "data"), "--log-level", "warning", *args.serve_arg]
    env = None
    if scaled is not None:
        argv += ["--workers", str(args.workers)]
        env = dict(os.environ, **scaled_out_env(scaled))
    with open(args.server_log or tmp / "server.log", "wb") as log:
        server = subprocess.Popen(_pinned(server_core(args), argv), stdout=log, stderr=log, env=env)
    return f"http://127.0.0.1:{port}", server


def _popen(argv: list[str], stdout: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.DEVNULL)


def _crowd(args: argparse.Namespace, target: str, space_id: str, seconds: float) -> list[str]:
    return _pinned(
        args.load_core,
        [
            *(sys.executable, "-m", "townhall", "bench", "listeners", "--target", target),
            *("--space", space_id, "--mode", args.mode, "--listeners", str(args.listeners)),
            *("--ramp-s", str(args.ramp_s), "--duration-s", str(seconds)),
        ],
    )


WRK_SCRIPT = """
local paths = {"/spaces/%s/live.m3u8", "/spaces/%s/state.json"}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[i %% 2 + 1])
end
"""


def _wrk(args: argparse.Namespace, target: str, space_id: str, tmp: Path) -> list[str]:
    """wrk hammering room A's playlist (no delivery directives) and state.json."""
    script = tmp / "hammer.lua"
    script.write_text(WRK_SCRIPT % (space_id, space_id))
    seconds = int(args.after_s * 2 + args.lead_s + 5)
    return _pinned(
        args.load_core,
        [
            *("wrk", "-t", "1", "-c", str(args.wrk_connections), "-d", f"{seconds}s"),
            *("-s", str(script), target),
        ],
    )


@contextlib.asynccontextmanager
async def _state(args: argparse.Namespace) -> AsyncIterator[ScaledOut | None]:
    """Scaled out: a fresh database and key prefix, removed at the end."""
    if not is_scaled_out(args):
        yield None
        return
    import redis.asyncio as aioredis

    plan = scaled_out_plan(args.postgres_url, args.redis_url, secrets.token_hex(4))
    await admin_sql(plan.admin_url, f'CREATE DATABASE "{plan.database}"')
    try:
        yield plan
    finally:
        client = aioredis.from_url(plan.redis_url)
        try:
            await _drop_keys(client, plan.prefix)
        finally:
            await client.aclose()
        await admin_sql(plan.admin_url, f'DROP DATABASE IF EXISTS "{plan.database}" WITH (FORCE)')


async def run(args: argparse.Namespace) -> dict[str, object]:
    async with _state(args) as scaled:
        return await _run(args, scaled)


async def _run(args: argparse.Namespace, scaled: ScaledOut | None) -> dict[str, object]:
    server: subprocess.Popen[bytes] | None = None
    tmp = tempfile.TemporaryDirectory(prefix="townhall-bench-clock-")
    target = args.target
    if target is None:
        target, server = _spawn_server(args, Path(tmp.name), scaled)
    crowd: subprocess.Popen[bytes] | None = None
    hammer: subprocess.Popen[bytes] | None = None
    speakers: list[SpeakerClient] = []
    redis: Any = None
    if scaled is not None:
        import redis.asyncio as aioredis

        redis = aioredis.from_url(scaled.redis_url)
    nodes = Nodes(target, redis, scaled.prefix if scaled else "")
    root = psutil.Process(server.pid) if server is not None else None
    owners: dict[str, str] = {}
    try:
        async with httpx.AsyncClient(base_url=target, timeout=30) as http:
            deadline = time.monotonic() + 120
            await _wait_healthy(http, deadline)
            while await nodes.refresh() < (args.workers if scaled else 1):
                if time.monotonic() > deadline:
                    raise RuntimeError("not every worker said where it listens in time")
                await asyncio.sleep(0.25)
            room_a, host_a = await _host(http, scheduled=False)
            speakers.append(await _speaker(http, room_a, host_a))
            owners["A"] = await nodes.owner(room_a, time.monotonic() + 20)
            room_b, host_b = await _host(http, scheduled=True)
            waiting = args.crowd == "waiting"
            crowd_s = (args.lead_s if waiting else args.settle_s + args.after_s) + args.after_s + 10

            def start_crowd() -> subprocess.Popen[bytes]:
                argv = _crowd(args, target, room_b if waiting else room_a, crowd_s)
                return _popen(argv, subprocess.DEVNULL)

            if args.listeners and not waiting:
                crowd = start_crowd()  # plays room A before and across the go-live
                await asyncio.sleep(args.settle_s)
            if args.wrk_connections:
                argv = _wrk(args, target, room_a, Path(tmp.name))
                hammer = _popen(argv, subprocess.PIPE)
                await asyncio.sleep(1.0)
            steady0 = await nodes.scrape(http)
            tree0, wall0, wrk0 = sample_tree(root), time.monotonic(), _cpu_s(hammer)
            self0 = time.process_time()
            await asyncio.sleep(args.after_s - (args.lead_s if waiting else 0))
            if args.listeners and waiting:
                crowd = start_crowd()  # waits for room B (404s, retried each second)
                await asyncio.sleep(args.lead_s)
            before = await nodes.scrape(http)
            tree1, wall1 = sample_tree(root), time.monotonic()
            load = os.getloadavg()
            _check(await http.post(f"/api/spaces/{room_b}/start", headers=host_b), "going live")
            speakers.append(await _speaker(http, room_b, host_b))
            owners["B"] = await nodes.owner(room_b, time.monotonic() + 20)
            await asyncio.sleep(args.after_s)
            after = await nodes.scrape(http)
            tree2, wall2, wrk2 = sample_tree(root), time.monotonic(), _cpu_s(hammer)
            self2 = time.process_time()
            load_end = os.getloadavg()
            for space_id, headers in ((room_a, host_a), (room_b, host_b)):
                await http.post(f"/api/spaces/{space_id}/end", headers=headers)
    finally:
        for speaker in speakers:
            await speaker.close()
        wrk_out = b""
        if hammer is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                wrk_out = hammer.communicate(timeout=30)[0]
        for proc in (hammer, crowd, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(40 if scaled else 20)
                if proc.poll() is None:
                    proc.kill()
        if redis is not None:
            await redis.aclose()
        tmp.cleanup()
    wrk = wrk_summary(wrk_out)
    result: dict[str, object] = {
        "target": target,
        "listeners": args.listeners,
        "mode": args.mode,
        "crowd": args.crowd,
        "serve_args": args.serve_arg,
        "load_average_1m_at_go_live": round(load[0], 2),
        "wrk_connections": args.wrk_connections,
        "wrk_requests_per_s": wrk["requests_per_s"],
        "steady_before": asdict(owners_figures(steady0, before, [owners["A"]])),
        "across_go_live": asdict(owners_figures(before, after, list(owners.values()))),
    }
    wall = wall2 - wall0
    result |= {
        "workers": args.workers,
        "scaled_out": scaled is not None,
        "server_core": server_core(args),
        "owners": owners,
        "wrk": wrk,
        "load_average_at_go_live": [round(x, 2) for x in load],
        "load_average_at_end": [round(x, 2) for x in load_end],
        "sched_autogroup_enabled": _autogroup(),
        "window_s": round(wall, 2),
        "wrk_cores": round((wrk2 - wrk0) / wall, 3) if wrk0 is not None and wrk2 else None,
        "bench_process_cores": round((self2 - self0) / wall, 3),
        "server_steady": tree_usage(tree0, tree1, wall1 - wall0),
        "server_across_go_live": tree_usage(tree1, tree2, wall2 - wall1),
        "per_node": {
            node: {
                "pid": nodes.pids.get(node),
                "rooms": sorted(room for room, owner in owners.items() if owner == node),
                "steady_before": asdict(owners_figures(steady0, before, [node])),
                "across_go_live": asdict(owners_figures(before, after, [node])),
            }
            for node in sorted(after)
        },
    }
    return result


def _autogroup() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    return None


def wrk_summary(out: bytes) -> dict[str, Any]:
    """Requests/s, non-2xx/3xx answers and socket errors from wrk's output (pure)."""
    rate: float | None = None
    non_2xx = 0
    errors = ""
    for line in out.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("Requests/sec:"):
            rate = float(line.split(":", 1)[1])
        elif line.startswith("Non-2xx or 3xx responses:"):
            non_2xx = int(line.split(":", 1)[1])
        elif line.startswith("Socket errors:"):
            errors = line.split(":", 1)[1].strip()
    return {"requests_per_s": rate, "non_2xx": non_2xx, "socket_errors": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, default=1000, help="LL-HLS listeners of room A")
    parser.add_argument("--mode", default="llhls", choices=("llhls", "hls", "progressive"))
    parser.add_argument(
        "--crowd",
        default="waiting",
        choices=("waiting", "live"),
        help="waiting: the crowd waits for room B and comes in at its go-live; live: it plays room A",
    )
    parser.add_argument("--ramp-s", type=float, default=2.0, help="crowd start spread")
    parser.add_argument("--lead-s", type=float, default=3.0, help="waiting crowd: before go-live")
    parser.add_argument("--settle-s", type=float, default=10.0, help="live crowd: ramp + settle")
    parser.add_argument("--after-s", type=float, default=10.0, help="window on each side")
    parser.add_argument("--target", default=None, help="a running server instead of our own")
    parser.add_argument(
        "--server-core",
        default="auto",
        help="core to pin the server to, or none; auto: 0 with one worker, none with several",
    )
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--serve-arg", action="append", default=[], help="extra serve flag")
    parser.add_argument(
        "--wrk-connections",
        type=int,
        default=0,
        help="also hammer room A's playlist and state.json with wrk (this many connections)",
    )
    parser.add_argument("--server-log", default=None, help="keep our server's log here")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serve --workers N; more than 1 runs scaled out (a fresh database and key prefix)",
    )
    parser.add_argument("--scaled-out", action="store_true", help="scaled out even with one worker")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TOWNHALL_TEST_POSTGRES_URL", POSTGRES),
        help="scaled out: the PostgreSQL to make a fresh database in",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TOWNHALL_TEST_REDIS_URL", REDIS),
        help="scaled out: the Redis to use (a fresh key prefix)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 0 <= args.listeners <= 10_000 or not 1 <= args.after_s <= 120:
        parser.error("--listeners 0..10000 and --after-s 1..120")
    if not 0 <= args.lead_s < args.after_s:
        parser.error("--lead-s must be at least 0 and shorter than --after-s")
    if not 1 <= args.workers <= 16:
        parser.error("--workers 1..16")
    if args.target is not None and is_scaled_out(args):
        parser.error("--workers/--scaled-out start a server of their own (no --target)")
    try:
        server_core(args)
    except ValueError:
        parser.error("--server-core: a core number, none or auto")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"listeners {args.listeners} ({args.mode}, {args.crowd}), "
        f"wrk {args.wrk_connections} connections at {result['wrk_requests_per_s']} req/s, "
        f"serve {' '.join(args.serve_arg) or '(defaults)'}, "
        f"load 1m {result['load_average_1m_at_go_live']}"
    )
    for key in ("steady_before", "across_go_live"):
        figures = result[key]
        assert isinstance(figures, dict)
        print(
            f"{key:15} ticks {figures['ticks']:5}  p50 {figures['late_p50_ms']:7.2f} ms  "
            f"p99 {figures['late_p99_ms']:7.2f} ms  max <= {figures['late_max_ms']:6.0f} ms  "
            f"within 20 ms {figures['share_within_20ms']:.2%}  skipped {figures['skipped_frames']}"
        )
    if is_scaled_out(args):
        print(_workers_line(result))


def _workers_line(result: dict[str, object]) -> str:
    wrk, cpu = result["wrk"], result["server_across_go_live"]
    assert isinstance(wrk, dict) and isinstance(cpu, dict)
    media = [
        f"{p['pid']} {p['policy']} cores {p['affinity']} on {p['last_core']}"
        for p in cpu["processes"]
        if p["role"] == "media"
    ]
    return (
        f"workers {result['workers']} owners {result['owners']}  wrk non-2xx {wrk['non_2xx']}  "
        f"server {cpu['cores']} cores {cpu['cores_by_role']}  wrk {result['wrk_cores']} cores  "
        f"media processes: {'; '.join(media)}"
    )


if __name__ == "__main__":
    main()
