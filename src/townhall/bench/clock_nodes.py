"""The nodes and processes of ``bench clock`` (``bench/clock.py``): the
scaled-out server it makes for ``--workers N`` (a database and a Redis key
prefix of its own, removed after), which worker owns a room (its lease in
Redis), and the CPU, scheduling policy and run-queue waits of every process
of the server's tree (psutil and /proc)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from townhall.server.forward import holder_node, node_key
from townhall.store.lease import lease_key

if TYPE_CHECKING:
    from townhall.bench.clock import ClockFigures

MEDIA_MODULE = "townhall.live.mediaproc"


@dataclass(frozen=True, slots=True)
class ScaledOut:
    """Where a scaled-out run keeps its state (made fresh, removed after)."""

    admin_url: str  # the database CREATE/DROP DATABASE run in
    database: str
    database_url: str  # the fresh database, for TOWNHALL_DATABASE_URL
    redis_url: str
    prefix: str


def scaled_out_plan(postgres_url: str, redis_url: str, tag: str) -> ScaledOut:
    """A fresh database and key prefix named after ``tag`` (pure)."""
    from sqlalchemy.engine import make_url

    name = f"townhall_bench_clock_{tag}"
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    return ScaledOut(postgres_url, name, url, redis_url, f"townhall-bench-clock:{tag}:")


def scaled_out_env(plan: ScaledOut) -> dict[str, str]:
    """The scaled-out mode's environment for ``townhall serve`` (pure)."""
    return {
        "TOWNHALL_DATABASE_URL": plan.database_url,
        "TOWNHALL_REDIS_URL": plan.redis_url,
        "TOWNHALL_REDIS_PREFIX": plan.prefix,
        "TOWNHALL_BUS_ENABLED": "true",
    }


def is_scaled_out(args: argparse.Namespace) -> bool:
    return bool(args.workers > 1 or args.scaled_out)


def server_core(args: argparse.Namespace) -> int | None:
    """``--server-core``: a core, ``none``, or ``auto`` (core 0 for one
    worker, not pinned for several: they are there to use more cores)."""
    value = str(args.server_core)
    if value == "auto":
        return 0 if args.workers == 1 else None
    return None if value == "none" else int(value)


async def admin_sql(admin_url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
        timeout=5,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _drop_keys(redis: Any, prefix: str) -> int:
    keys = [k async for k in redis.scan_iter(match=prefix + "*", count=1000)]
    if keys:
        await redis.delete(*keys)
    return len(keys)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def node_entry(raw: Any) -> tuple[str, int | None] | None:
    """(url, pid) of a node's entry in Redis (server/forward.py), or None (pure)."""
    try:
        entry = json.loads(_text(raw))
    except ValueError:
        return None
    url, pid = entry.get("url"), entry.get("pid")
    if not isinstance(url, str) or not url:
        return None
    return url, pid if isinstance(pid, int) else None


class Nodes:
    """The server's nodes and who owns which room: one node (the server) when
    not scaled out; else the workers' entries and the rooms' leases in Redis."""

    def __init__(self, target: str, redis: Any = None, prefix: str = "") -> None:
        self.redis = redis
        self.prefix = prefix
        self.urls: dict[str, str] = {"server": target}
        self.pids: dict[str, int | None] = {"server": None}

    async def refresh(self) -> int:
        if self.redis is None:
            return 1
        urls: dict[str, str] = {}
        pids: dict[str, int | None] = {}
        async for key in self.redis.scan_iter(match=node_key(self.prefix, "*"), count=1000):
            raw = await self.redis.get(key)
            entry = node_entry(raw) if raw is not None else None
            if entry is not None:
                node = _text(key)[len(node_key(self.prefix, "")) :]
                urls[node], pids[node] = entry
        self.urls, self.pids = urls, pids
        return len(urls)

    async def owner(self, space_id: str, deadline_s: float) -> str:
        """The node running ``space_id`` (waits for its lease and entry)."""
        if self.redis is None:
            return "server"
        while True:
            token = await self.redis.get(lease_key(self.prefix, space_id))
            if token is not None:
                node = holder_node(_text(token))
                if node not in self.urls:
                    await self.refresh()
                if node in self.urls:
                    return node
            if time.monotonic() > deadline_s:
                raise RuntimeError(f"no owner of room {space_id} in Redis in time")
            await asyncio.sleep(0.1)

    async def scrape(self, http: httpx.AsyncClient) -> dict[str, str]:
        """Every node's /metrics (each from its own address)."""
        out: dict[str, str] = {}
        for node, url in self.urls.items():
            out[node] = (await http.get(url.rstrip("/") + "/metrics")).text
        return out


def owners_figures(
    before: dict[str, str], after: dict[str, str], owners: list[str]
) -> ClockFigures:
    """The clock figures of the owners' media processes together (pure): the
    scrapes of several nodes added up, bucket by bucket."""
    from townhall.bench.clock import clock_figures

    nodes = sorted(set(owners))
    return clock_figures(
        "".join(before.get(n, "") for n in nodes), "".join(after.get(n, "") for n in nodes)
    )


# -- CPU and scheduling of the server's processes ----------------------------------------


def _role(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        line = " ".join(proc.cmdline())
        if MEDIA_MODULE in line:
            return "media"
        if "townhall.server.workers" in line:
            return "worker"
        return "server"
    return "gone"


def _schedstat(pid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns waiting in a run queue) of the process's main thread."""
    try:
        run_ns, wait_ns, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(run_ns), int(wait_ns)


def _policy(pid: int) -> str:
    names = {os.SCHED_OTHER: "other", os.SCHED_RR: "rr", os.SCHED_FIFO: "fifo"}
    try:
        policy = os.sched_getscheduler(pid) & ~getattr(os, "SCHED_RESET_ON_FORK", 0)
        prio = os.sched_getparam(pid).sched_priority
    except OSError:
        return "gone"
    return f"{names.get(policy, str(policy))}:{prio}" if prio else names.get(policy, str(policy))


def sample_tree(root: psutil.Process | None) -> dict[int, dict[str, Any]]:
    """Each process of the server's tree now: role, parent, CPU seconds,
    scheduling policy, cores allowed, the core it last ran on, schedstat."""
    if root is None:
        return {}
    out: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(psutil.Error):
        procs = [root, *root.children(recursive=True)]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out[proc.pid] = {
                    "role": _role(proc),
                    "ppid": proc.ppid(),
                    "cpu_s": times.user + times.system,
                    "policy": _policy(proc.pid),
                    "affinity": sorted(os.sched_getaffinity(proc.pid)),
                    "last_core": proc.cpu_num(),
                    "schedstat": _schedstat(proc.pid),
                }
    return out


def tree_usage(
    first: dict[int, dict[str, Any]], last: dict[int, dict[str, Any]], wall_s: float
) -> dict[str, Any]:
    """Cores used between two samples, in all and per role; per process (pure)."""
    per: list[dict[str, Any]] = []
    roles: dict[str, float] = {}
    for pid, now in sorted(last.items()):
        then = first.get(pid, {"cpu_s": 0.0, "schedstat": None})
        cores = (now["cpu_s"] - then["cpu_s"]) / wall_s if wall_s > 0 else 0.0
        roles[now["role"]] = roles.get(now["role"], 0.0) + cores
        row = {k: now[k] for k in ("role", "ppid", "policy", "affinity", "last_core")}
        row |= {"pid": pid, "cores": round(cores, 3)}
        if now["schedstat"] and then["schedstat"]:
            row["run_s"] = round((now["schedstat"][0] - then["schedstat"][0]) / 1e9, 3)
            row["runqueue_wait_s"] = round((now["schedstat"][1] - then["schedstat"][1]) / 1e9, 3)
        per.append(row)
    return {
        "cores": round(sum(roles.values()), 3),
        "cores_by_role": {k: round(v, 3) for k, v in sorted(roles.items())},
        "processes": per,
    }


def _cpu_s(proc: subprocess.Popen[bytes] | None) -> float | None:
    if proc is None:
        return None
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(proc.pid).cpu_times()
        return float(times.user + times.system)
    return None


# -- the run ----------------------------------------------------------------------------
