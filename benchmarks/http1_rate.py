#!/usr/bin/env python3
"""Request rate of the listener plane's HTTP drivers, side by side in ONE run:
(a) a base tree (by default main's commit with the uvicorn-subclass fast path,
origin/fastproto.py), (b) this tree's own HTTP/1.1 driver (origin/http1.py),
(c) nginx serving the same part bytes as static files.

    .venv/bin/python benchmarks/http1_rate.py --base-commit 9fd1579 --rounds 5

Servers are pinned to core 0, wrk (-t1 -c64, cycling over the live window's
part URLs) to core 1. Rounds are interleaved (base, ours, nginx, rotating the
order) because other load on a shared machine drifts; the per-round figures
and their medians are printed and written to benchmarks/results/http1_rate.json.
Server CPU comes from psutil on each server process. With --perf, one more
wrk round on (b) runs under `perf record` and the share of samples per binary
(kernel, python, httptools, uvloop, ...) is reported. Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
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

from side_by_side import (  # noqa: E402
    CLIENT_CORE,
    SERVER_CORE,
    WRK_LUA,
    Child,
    core_busy_s,
    free_port,
    log,
    pinned,
    render,
    serve_pinned,
    sign_up_host,
    wait_http,
)


def current_parts(url: str, space_id: str) -> tuple[list[str], list[bytes]]:
    """The part URLs of the live playlist now (older ones leave the window) and their bytes."""
    with httpx.Client(base_url=url, timeout=10) as http:
        text = http.get(f"/spaces/{space_id}/live.m3u8").text
        paths, bodies = [], []
        for uri in re.findall(r'URI="(part/[^"]+)"', text)[-24:]:
            r = http.get(f"/spaces/{space_id}/{uri}")
            if r.status_code == 200:
                paths.append(f"/spaces/{space_id}/{uri}")
                bodies.append(r.content)
    return paths, bodies


def start_townhall(name: str, src: Path, tmp: Path) -> tuple[Child, str, str]:
    """``townhall serve`` from ``src`` on core 0 with one live space (the stage
    clock's silence is its program); returns the server, URL, part paths, bytes."""
    server, url = serve_pinned(name, src, tmp, {}, wait_s=60)
    with httpx.Client(base_url=url, timeout=10) as http:
        token = sign_up_host(http)
        space = http.post(
            "/api/spaces",
            json={"title": "rate", "visibility": "public"},
            headers={"Authorization": f"Bearer {token}"},
        )
        space.raise_for_status()
        space_id = space.json()["id"]
        time.sleep(6)  # a few segments into the window
    return server, url, space_id


def start_nginx(tmp: Path, bodies: list[bytes]) -> tuple[Child, str, list[str]]:
    port = free_port()
    prefix = tmp / "nginx"
    www = prefix / "www"
    (www / "parts").mkdir(parents=True)
    paths = []
    for i, body in enumerate(bodies):
        (www / "parts" / f"{i}.m4s").write_bytes(body)
        paths.append(f"/parts/{i}.m4s")
    conf = prefix / "nginx.conf"
    conf.write_text(
        render(ROOT / "benchmarks" / "nginx.conf.template", prefix=str(prefix), port=str(port),
               root=str(www))
    )  # fmt: skip
    server = Child(
        "nginx",
        pinned(SERVER_CORE, ["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]),
        tmp / "nginx.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(url + paths[0], lambda r: r.status_code == 200, 15, "nginx")
    return server, url, paths


def wrk_round(
    tmp: Path, server: Child, url: str, paths: list[str], seconds: float, name: str
) -> dict[str, Any]:
    script = tmp / f"{name}.lua"
    script.write_text(WRK_LUA % ", ".join(json.dumps(p) for p in paths))
    c0, t0, busy0 = server.cpu_s(), time.monotonic(), core_busy_s()
    out = subprocess.run(
        pinned(CLIENT_CORE, ["wrk", "-t1", "-c64", f"-d{seconds:g}s", "-s", str(script), url]),
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    cpu = server.cpu_s() - c0
    busy = core_busy_s() - busy0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    rps = float(m.group(1)) if m else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
    requests = rps * seconds
    return {
        "requests_per_s": rps,
        "server_cores": round(cpu / wall, 3),
        "core0_busy_percent": round(100 * busy / wall, 1),
        "requests_per_s_per_core": round(rps / (cpu / wall), 1) if cpu else None,
        "server_cpu_us_per_request": round(1e6 * cpu / requests, 2) if requests else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def perf_breakdown(
    server: Child, tmp: Path, url: str, paths: list[str], seconds: float
) -> dict[str, float]:
    """Share of CPU samples per binary while wrk runs against ``server``."""
    data = tmp / "perf.data"
    pids = ",".join(str(p.pid) for p in server.procs())
    rec = subprocess.Popen(
        ["perf", "record", "-F", "999", "-p", pids, "-o", str(data), "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wrk_round(tmp, server, url, paths, seconds, "perf")
    rec.wait(timeout=seconds + 30)
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "--percent-limit", "0.5"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    shares: dict[str, float] = {}
    for line in out.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m:
            shares[m.group(2)] = float(m.group(1))
    return shares


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--base-commit", default="9fd1579", help="commit of the base tree (git archive)"
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--wrk-s", type=float, default=5.0)
    ap.add_argument("--perf", action="store_true", help="also sample the new driver with perf")
    args = ap.parse_args()
    results: dict[str, Any] = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                               "base_commit": args.base_commit, "rounds": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="http1-rate-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx's worker drops privileges when run as root
        base_src = tmp / "base"
        base_src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base_commit, "src"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
        children: list[Child] = []
        try:
            log(f"starting base ({args.base_commit}) and ours")
            base, base_url, base_space = start_townhall("base", base_src / "src", tmp)
            children.append(base)
            ours, ours_url, ours_space = start_townhall("ours", ROOT / "src", tmp)
            children.append(ours)
            ours_paths, bodies = current_parts(ours_url, ours_space)
            nginx, nginx_url, nginx_paths = start_nginx(tmp, bodies)
            children.append(nginx)
            log(f"{len(ours_paths)} part URLs; {args.rounds} rounds of {args.wrk_s:g} s")
            systems = {
                "base": (base, base_url, current_parts(base_url, base_space)[0]),
                "ours": (ours, ours_url, ours_paths),
                "nginx": (nginx, nginx_url, nginx_paths),
            }
            order = list(systems)
            for i in range(args.rounds):
                for key, space in (("base", base_space), ("ours", ours_space)):
                    server, url, _ = systems[key]
                    systems[key] = (server, url, current_parts(url, space)[0])
                row: dict[str, Any] = {}
                for key in order[i % 3 :] + order[: i % 3]:
                    server, url, paths = systems[key]
                    row[key] = wrk_round(tmp, server, url, paths, args.wrk_s, key)
                results["rounds"].append(row)
                figures = "  ".join(
                    f"{k} {row[k]['requests_per_s']:.0f}/s {row[k]['server_cpu_us_per_request']} us/req "
                    f"{row[k]['requests_per_s_per_core']}/s/core"
                    for k in order
                )
                log(f"round {i + 1}: {figures}")
            summary: dict[str, Any] = {}
            for key in order:
                rows = [r[key] for r in results["rounds"]]
                summary[key] = {
                    field: statistics.median(r[field] for r in rows if r[field] is not None)
                    for field in ("requests_per_s", "server_cpu_us_per_request", "requests_per_s_per_core", "core0_busy_percent")
                }  # fmt: skip
                summary[key]["non_2xx"] = sum(r["non_2xx"] for r in rows)
            for key in ("base", "ours"):
                summary[key]["per_core_vs_nginx"] = [
                    round(
                        r[key]["requests_per_s_per_core"] / r["nginx"]["requests_per_s_per_core"], 3
                    )
                    for r in results["rounds"]
                ]
            summary["ours_cpu_per_request_vs_base"] = [
                round(
                    r["ours"]["server_cpu_us_per_request"] / r["base"]["server_cpu_us_per_request"],
                    3,
                )
                for r in results["rounds"]
            ]
            results["summary"] = summary
            if args.perf:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    for key, space in (("ours", ours_space), ("base", base_space)):
                        server, url, _ = systems[key]
                        paths = current_parts(url, space)[0]
                        results[f"perf_{key}"] = perf_breakdown(server, tmp, url, paths, args.wrk_s)
        finally:
            for child in reversed(children):
                child.stop()
    out = ROOT / "benchmarks" / "results" / "http1_rate.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    for key in ("perf_ours", "perf_base"):
        if key in results:
            print(key, json.dumps(results[key]))


if __name__ == "__main__":
    main()
