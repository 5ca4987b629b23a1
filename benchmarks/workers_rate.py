#!/usr/bin/env python3
"""Requests/s on one port with 1 vs 2 HTTP workers (`townhall serve
--workers N`, issue 11), scaled out on the machine's PostgreSQL and Redis
(a fresh database and a key prefix of its own, removed at the end).

    .venv/bin/python benchmarks/workers_rate.py --rounds 3 --wrk-s 5
    .venv/bin/python benchmarks/workers_rate.py --rounds 3 --wrk-s 5 --embedded   # no Redis

Both servers run at once, each with one live space (its program makes
silence: the stage does not wait for a host), not pinned: the kernel places
the workers. wrk (-t1 -c64) is pinned to core 1 and cycles over (a) the live
window's part URLs (the fast path of origin/http1.py) and (b) /healthz (the
app path through FastAPI); ``--targets part,healthz,mix`` adds (c) both on
each connection (eight parts, then /healthz: a page's connection, which asks
the listener plane and then the API). Rounds alternate between the servers (a shared
machine drifts); medians are printed and written to
benchmarks/results/workers_rate.json. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from side_by_side import CLIENT_CORE, WRK_LUA, Child, free_port, log, pinned, wait_http  # noqa: E402

POSTGRES = os.environ.get(
    "TOWNHALL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS = os.environ.get("TOWNHALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _pg(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES)
    conn = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username,
                                 password=url.password, database=url.database, timeout=5)  # fmt: skip
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _drop_keys(prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def start(
    workers: int, tmp: Path, database_url: str, prefix: str, embedded: bool = False
) -> tuple[Child, str, str]:
    """``serve --workers N`` with one live space; (server, URL, space id).
    ``embedded``: SQLite and files, no Redis (a primary and listener workers)."""
    from sqlalchemy.engine import make_url

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "src"),
        TOWNHALL_ARGON2_TIME_COST="1",
        TOWNHALL_ARGON2_MEMORY_KIB="1024",
        TOWNHALL_DATABASE_URL=make_url(POSTGRES).set(database=database_url).render_as_string(False),
        TOWNHALL_REDIS_URL=REDIS,
        TOWNHALL_REDIS_PREFIX=prefix,
        TOWNHALL_BUS_ENABLED="true",
        TOWNHALL_SIGNING_KEYS=secrets.token_urlsafe(32),
        TOWNHALL_PROGRAM_WAITS_FOR_HOST="false",
        TOWNHALL_HTTP_WORKERS=str(workers),
    )
    if embedded:
        env.update(TOWNHALL_DATABASE_URL="", TOWNHALL_REDIS_URL="", TOWNHALL_BUS_ENABLED="false")
    cmd = [sys.executable, "-m", "townhall", "serve", "--port", str(port),
           "--data-dir", str(tmp / f"w{workers}-data"), "--log-level", "warning"]  # fmt: skip
    server = Child(f"workers={workers}", cmd, tmp / f"w{workers}.log", env=env)
    wait_http(url + "/healthz", lambda r: r.status_code == 200, 120, server.name)
    user, password = f"bench{workers}", secrets.token_urlsafe(12)
    with httpx.Client(base_url=url, timeout=10) as http:
        http.post("/api/accounts", json={"username": user, "password": password}).raise_for_status()
        session = http.post("/api/sessions", json={"username": user, "password": password})
        headers = {"Authorization": f"Bearer {session.json()['token']}"}
        space = http.post(
            "/api/spaces", json={"title": "rate", "visibility": "public"}, headers=headers
        )
        space.raise_for_status()
        space_id = space.json()["id"]
        time.sleep(8)  # a few segments into the window, on the owner and its follower
    return server, url, space_id


def current_parts(url: str, space_id: str) -> list[str]:
    """The newest part URLs now (older parts leave the window within seconds)."""
    text = httpx.get(f"{url}/spaces/{space_id}/live.m3u8", timeout=10).text
    paths = [f"/spaces/{space_id}/{u}" for u in re.findall(r'URI="(part/[^"]+)"', text)[-8:]]
    if not paths:
        raise RuntimeError(f"no parts in the playlist of {url}:\n{text}")
    return paths


def wrk_round(
    tmp: Path, server: Child, url: str, paths: list[str], seconds: float, name: str
) -> dict[str, Any]:
    script = tmp / f"{name}.lua"
    script.write_text(WRK_LUA % ", ".join(json.dumps(p) for p in paths))
    c0, t0 = server.cpu_s(), time.monotonic()
    out = subprocess.run(
        pinned(CLIENT_CORE, ["wrk", "-t1", "-c64", f"-d{seconds:g}s", "-s", str(script), url]),
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    cpu = server.cpu_s() - c0
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
    errors = re.search(r"Socket errors:.*", out.stdout)
    return {
        "requests_per_s": float(rps.group(1)) if rps else 0.0,
        "server_cores": round(cpu / wall, 3),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wrk-s", type=float, default=5.0)
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="SQLite and files, no Redis: a primary and listener workers (server/local_bus.py)",
    )
    parser.add_argument(
        "--targets",
        default="part,healthz",
        help="comma-separated: part, healthz, mix (parts then /healthz on each connection)",
    )
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    name = "townhall_bench_workers_" + secrets.token_hex(4)
    prefix = f"townhall-bench-workers:{secrets.token_hex(4)}:"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    servers: dict[int, tuple[Child, str, str]] = {}
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="townhall-workers-") as tmp_name:
            tmp = Path(tmp_name)
            for workers in (1, 2):
                servers[workers] = start(
                    workers, tmp, name, prefix + f"w{workers}:", embedded=args.embedded
                )
                log(f"workers={workers} ready on {servers[workers][1]}")
            for r in range(args.rounds):
                order = (1, 2) if r % 2 == 0 else (2, 1)
                for workers in order:
                    server, url, space_id = servers[workers]
                    for target in targets:
                        parts = [] if target == "healthz" else current_parts(url, space_id)
                        urls = parts + ([] if target == "part" else ["/healthz"])
                        key = f"workers={workers} {target}"
                        row = wrk_round(tmp, server, url, urls, args.wrk_s, f"{workers}-{target}")
                        results.setdefault(key, []).append(row)
                        log(f"round {r + 1} {key}: {row}")
            for server, _, _ in servers.values():
                server.stop()
    finally:
        for server, _, _ in servers.values():
            server.stop()
        asyncio.run(_drop_keys(prefix))
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    summary = {
        key: {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in rows),
            "server_cores": statistics.median(r["server_cores"] for r in rows),
            "non_2xx": sum(r["non_2xx"] for r in rows),
            "rounds": [r["requests_per_s"] for r in rows],
        }
        for key, rows in results.items()
    }
    load = os.getloadavg()
    out = {
        "embedded": args.embedded,
        "load_average": load,
        "cpu_count": os.cpu_count(),
        "summary": summary,
        "rounds": results,
    }
    name_out = "workers_rate_embedded.json" if args.embedded else "workers_rate.json"
    path = ROOT / "benchmarks" / "results" / name_out
    path.write_text(json.dumps(out, indent=2) + "\n")
    for key, row in summary.items():
        print(f"{key:22} {row['requests_per_s']:>9.0f} req/s  server {row['server_cores']:.2f} cores  "
              f"non-2xx {row['non_2xx']}  rounds {row['rounds']}")  # fmt: skip
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; written to {path}")


if __name__ == "__main__":
    main()
