"""Server CPU per attack connection in the HTTP/1.1 driver alone (issue 10):
uvicorn + origin/http1.py on a trivial app, on this process's loop (uvloop),
while `townhall bench attack`'s connection shapes (attack_conn's child
process) run against it. Prints the server's CPU seconds, connections cut and
the CPU per cut connection, the collector's passes (count and seconds per
generation: thousands of open connections make them long) and the loop's
lateness (a 10 ms ticker: the longest and the p99 delay, what a mixer clock on
this loop would see); with --profile, the top of a cProfile.

    python benchmarks/conn_cost.py --shape headers --connections 200 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop

from townhall import metrics
from townhall.bench import attack_conn
from townhall.bench.attack import AttackTally, source_address
from townhall.config import Settings
from townhall.origin.http1 import protocol_for


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def cuts() -> float:
    total = 0.0
    for metric in metrics.HTTP_CONNECTIONS_CLOSED.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                total += sample.value
    for metric in metrics.HTTP_CONNECTIONS_REFUSED.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                total += sample.value
    return total


class GcPasses:
    """Seconds the cyclic collector took, per generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.passes = {0: [0, 0.0, 0.0], 1: [0, 0.0, 0.0], 2: [0, 0.0, 0.0]}
        self._since = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._since = time.perf_counter()
            return
        took = time.perf_counter() - self._since
        entry = self.passes[info["generation"]]
        entry[0] += 1
        entry[1] += took
        entry[2] = max(entry[2], took)

    def summary(self) -> str:
        return " ".join(
            f"gen{g}={int(n)}x/{total:.3f}s(max {longest * 1e3:.0f} ms)"
            for g, (n, total, longest) in self.passes.items()
        )


async def ticker(deadline_s: float, late: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while (now := loop.time()) < deadline_s:
        await asyncio.sleep(0.01)
        late.append(loop.time() - now - 0.01)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(args: argparse.Namespace) -> None:
    port = args.port
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp()),
        http_header_timeout_s=args.header_timeout_s,
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=protocol_for(None, settings), loop="none",
        lifespan="off", log_config=None, access_log=False, backlog=4096,
    )  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(200):  # up to 10 s
        if server.started:
            break
        await asyncio.sleep(0.05)
    if args.gc_threshold:
        gc.set_threshold(*(int(x) for x in args.gc_threshold.split(",")))
    gc.collect()
    gc.freeze()  # as the server does after start-up (server/app.py)
    passes = GcPasses()
    sources = [source_address(i, args.networks) for i in range(args.sources)]
    tally = AttackTally()
    deadline = time.monotonic() + args.seconds
    cuts0, cpu0 = cuts(), cpu_s()
    os.sched_setaffinity(0, {args.server_cpu})
    profile = cProfile.Profile() if args.profile else None
    if profile:
        profile.enable()
    late: list[float] = []
    ticking = asyncio.create_task(ticker(asyncio.get_running_loop().time() + args.seconds, late))
    os.sched_setaffinity(0, {args.attack_cpu})  # the child inherits it
    if args.shape == "slowloris":
        attack = attack_conn.slowloris(port, sources, args.connections, deadline, tally)
    else:
        attack = attack_conn.endless_headers(
            port, sources, args.connections, deadline, tally, args.rate
        )
    attacking = asyncio.ensure_future(attack)
    await asyncio.sleep(0.3)
    os.sched_setaffinity(0, {args.server_cpu})
    await attacking
    await ticking
    if profile:
        profile.disable()
    cpu, cut = cpu_s() - cpu0, cuts() - cuts0
    server.should_exit = True
    await serving
    print(
        f"shape={args.shape} connections={args.connections} seconds={args.seconds} "
        f"attempts={tally.attempts} cut={cut:.0f} statuses={dict(tally.statuses)} "
        f"server_cpu_s={cpu:.2f} ({100 * cpu / args.seconds:.0f} %) "
        f"per_cut_us={1e6 * cpu / max(1.0, cut):.0f}"
    )
    late.sort()
    p99 = late[int(len(late) * 0.99)] if late else 0.0
    print(
        f"gc_threshold={gc.get_threshold()} {passes.summary()} "
        f"loop_late_max_ms={1e3 * max(late, default=0):.0f} loop_late_p99_ms={1e3 * p99:.0f}"
    )
    if profile:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.profile)
        print(out.getvalue())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=["slowloris", "headers"], default="headers")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--sources", type=int, default=1000)
    parser.add_argument("--networks", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=4e6)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--header-timeout-s", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=18950)
    parser.add_argument("--gc-threshold", default="", help="e.g. 700,10,10 (gc.set_threshold)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--attack-cpu", type=int, default=1)
    parser.add_argument("--profile", type=int, default=0, help="print the top N of a profile")
    uvloop.run(main(parser.parse_args()))
    sys.exit(0)
