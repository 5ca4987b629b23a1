"""Where the CPU of a storm goes, second by second: the load generator's own
CPU and its event loop's lag, and (given its PID) the server's CPU with its
child processes (the media process). Read from /proc through psutil, so the
figures are the kernel's; the pure summary is ``summarize_probe``.

Why: a storm whose generator saturates in bursts measures the generator, not
the server. A second of >= 95 % of a core or a loop lag over 100 ms is such a
burst, and the summary says how many there were and when. Given the origin's
URL (behind a cache: the node itself), the origin's queue.json answers per
second are counted from its /metrics (``townhall_queue_documents_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import psutil

from townhall.bench.report import percentile

TICK_S = 0.02  # the lag probe's sleep
SATURATED_PERCENT = 95.0
LAGGED_S = 0.1


@dataclass(frozen=True, slots=True)
class ProbeSecond:
    """One second of the run (``at`` is time.time() at its end)."""

    at: float
    generator_cpu_percent: float
    loop_lag_max_s: float
    server_cpu_percent: float | None
    origin_queue_docs: float | None = None  # queue.json answers the origin wrote this second
    # share of the second each main thread was runnable but waiting for a CPU
    # (/proc/PID/schedstat): a starved process, not a slow one
    generator_wait_percent: float | None = None
    server_wait_percent: float | None = None


def _run_delay_s(pid: int | None) -> float | None:
    """Seconds the process's main thread has waited on a run queue so far."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _delta_percent(now: float | None, before: float | None, span: float) -> float | None:
    return None if now is None or before is None else round(100 * (now - before) / span, 1)


def _cpu_s(proc: psutil.Process, children: bool) -> float:
    """User + system seconds of a process (and its children), 0 if it is gone."""
    total = 0.0
    procs = [proc]
    if children:
        with contextlib.suppress(psutil.Error):
            procs += proc.children(recursive=True)
    for p in procs:
        try:
            times = p.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class Probe:
    """Run ``run(deadline)`` as a task beside the storm; ``seconds`` fills in."""

    def __init__(self, server_pid: int | None, origin: str | None = None) -> None:
        self.origin = origin
        self.me = psutil.Process()
        self.server: psutil.Process | None = None
        if server_pid is not None:
            try:
                self.server = psutil.Process(server_pid)
            except psutil.Error:
                self.server = None
        self.seconds: list[ProbeSecond] = []
        self._lag_max_s = 0.0

    async def _lag(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            before = time.monotonic()
            await asyncio.sleep(TICK_S)
            self._lag_max_s = max(self._lag_max_s, time.monotonic() - before - TICK_S)

    async def _queue_docs(self, http: httpx.AsyncClient | None) -> float | None:
        if http is None:
            return None
        try:
            text = (await http.get("/metrics")).text
        except httpx.HTTPError:
            return None
        return queue_docs_of(text)

    async def run(self, deadline: float) -> None:
        lag = asyncio.create_task(self._lag(deadline))
        http = None
        if self.origin is not None:
            limits = httpx.Limits(max_keepalive_connections=0)
            http = httpx.AsyncClient(base_url=self.origin, timeout=5, limits=limits)
        try:
            last_docs = await self._queue_docs(http)
            server_pid = None if self.server is None else self.server.pid
            last_gw, last_sw = _run_delay_s(self.me.pid), _run_delay_s(server_pid)
            last_t = time.monotonic()
            last_me = _cpu_s(self.me, False)
            last_srv = _cpu_s(self.server, True) if self.server else 0.0
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                now = time.monotonic()
                me = _cpu_s(self.me, False)
                srv = _cpu_s(self.server, True) if self.server else 0.0
                docs = await self._queue_docs(http)
                gw, sw = _run_delay_s(self.me.pid), _run_delay_s(server_pid)
                span = max(1e-6, now - last_t)
                self.seconds.append(
                    ProbeSecond(
                        time.time(),
                        round(100 * (me - last_me) / span, 1),
                        round(self._lag_max_s, 3),
                        round(100 * (srv - last_srv) / span, 1) if self.server else None,
                        None if docs is None or last_docs is None else docs - last_docs,
                        _delta_percent(gw, last_gw, span),
                        _delta_percent(sw, last_sw, span),
                    )
                )
                self._lag_max_s = 0.0
                last_t, last_me, last_srv, last_docs = now, me, srv, docs
                last_gw, last_sw = gw, sw
        finally:
            lag.cancel()
            if http is not None:
                await http.aclose()


def queue_docs_of(metrics_text: str) -> float:
    """The origin's queue.json answers so far (all statuses), from /metrics."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("townhall_queue_documents_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def summarize_probe(seconds: Sequence[ProbeSecond], *, t0: float | None) -> dict[str, object]:
    """Per-second figures in, the summary's ``probe`` block out (times from
    ``t0``, e.g. the first arrival, when given)."""
    if not seconds:
        return {}
    gen = [s.generator_cpu_percent for s in seconds]
    lag = [s.loop_lag_max_s for s in seconds]
    srv = [s.server_cpu_percent for s in seconds if s.server_cpu_percent is not None]
    docs = [s.origin_queue_docs for s in seconds if s.origin_queue_docs is not None]
    gen_wait = [s.generator_wait_percent for s in seconds if s.generator_wait_percent is not None]
    srv_wait = [s.server_wait_percent for s in seconds if s.server_wait_percent is not None]
    base = t0 if t0 is not None else seconds[0].at - 1
    hot = [
        round(s.at - base, 1)
        for s in seconds
        if s.generator_cpu_percent >= SATURATED_PERCENT or s.loop_lag_max_s >= LAGGED_S
    ]
    return {
        "generator_cpu_p50_percent": percentile(gen, 50),
        "generator_cpu_p90_percent": percentile(gen, 90),
        "generator_cpu_max_percent": max(gen),
        "generator_seconds_saturated": sum(1 for g in gen if g >= SATURATED_PERCENT),
        "loop_lag_p99_s": percentile(lag, 99),
        "loop_lag_max_s": max(lag),
        "seconds_hot": hot[:40],  # saturated or lagging, from t0
        "server_cpu_p50_percent": percentile(srv, 50) if srv else None,
        "server_cpu_max_percent": max(srv) if srv else None,
        # runnable but not running (the machine's other work had the CPU)
        "generator_wait_p50_percent": percentile(gen_wait, 50) if gen_wait else None,
        "generator_wait_max_percent": max(gen_wait) if gen_wait else None,
        "server_wait_p50_percent": percentile(srv_wait, 50) if srv_wait else None,
        "server_wait_max_percent": max(srv_wait) if srv_wait else None,
        "origin_queue_docs_per_s_p50": percentile(docs, 50) if docs else None,
        "origin_queue_docs_per_s_max": max(docs) if docs else None,
        # [t, generator CPU %, loop lag max s, server CPU %, origin queue.json
        #  answers, generator waiting for a CPU %, server waiting for a CPU %]
        "timeline": [
            [
                round(s.at - base, 1),
                s.generator_cpu_percent,
                s.loop_lag_max_s,
                s.server_cpu_percent,
                s.origin_queue_docs,
                s.generator_wait_percent,
                s.server_wait_percent,
            ]
            for s in seconds
        ],
    }


def join_latency(posts: Sequence[tuple[float, float]], t0: float | None) -> dict[str, object]:
    """How long join posts took to be answered, as the generator saw them
    (send to answer, including time queued in either event loop): overall
    p50/p99/max and the p99 of each 5 s of the run from ``t0``."""
    if not posts:
        return {}
    took = [d for _, d in posts]
    base = t0 if t0 is not None else posts[0][0]
    windows: dict[int, list[float]] = {}
    for at, d in posts:
        windows.setdefault(int((at - base) // 5), []).append(d)
    return {
        "join_s_p50": percentile(took, 50),
        "join_s_p99": percentile(took, 99),
        "join_s_max": max(took),
        # [window start s, posts, p99 s]
        "join_s_p99_by_5s": [
            [5 * k, len(v), round(percentile(v, 99) or 0.0, 3)] for k, v in sorted(windows.items())
        ],
    }
