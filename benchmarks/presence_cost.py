#!/usr/bin/env python3
"""What a presence beat costs, side by side in ONE run, and what a million
listeners would send:

(a) ``POST /api/spaces/{id}/presence`` on a base tree (by default main's
    commit 2b88acc: h6's FastAPI route, every page beats);
(b) the same POST on this tree (bare ASGI middleware before the framework);
(c) ``GET /spaces/{id}/state.json`` on this tree (the peer the issue names).

    .venv/bin/python benchmarks/presence_cost.py --base-commit 2b88acc --rounds 3

Servers (``townhall serve``) are pinned to core 0, wrk (-t1 -c32, cycling over
200 real listener tokens as Bearer) to core 1; rounds are interleaved,
rotating the order, because other load on a shared machine drifts. CPU per
request is the server process's CPU (psutil) over the wrk run divided by the
answers. The per-network limits that would 429 one loopback address are raised
for the run. Then the beat rate of a million listeners is computed with the
real sampler (``live.presence``) over simulated rounds. Results go to
benchmarks/results/presence_cost.json. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(ROOT / "src"))

from side_by_side import (  # noqa: E402
    CLIENT_CORE,
    Child,
    log,
    pinned,
    serve_pinned,
    sign_up_host,
)

TOKENS = 200
LIMITS = {  # one loopback address stands for a whole audience here
    "TOWNHALL_JOINS_PER_NETWORK_PER_10S": "100000",
    "TOWNHALL_PRESENCE_PER_NETWORK_PER_10S": "100000000",
    "TOWNHALL_STATE_PER_NETWORK_PER_10S": "100000000",
    "TOWNHALL_REFUSALS_PER_NETWORK_PER_10S": "100000000",
}

PRESENCE_LUA = """-- presence beats of many listeners, one token after the other
local tokens = {%s}
local i = 0
request = function()
  i = i %% #tokens + 1
  return wrk.format("POST", "/api/spaces/%s/presence",
    {["Authorization"] = "Bearer " .. tokens[i], ["Content-Length"] = "0"}, "")
end
"""
STATE_LUA = """request = function() return wrk.format("GET", "/spaces/%s/state.json") end
"""


def start(name: str, src: Path, tmp: Path) -> tuple[Child, str, str, list[str]]:
    server, url = serve_pinned(name, src, tmp, LIMITS, wait_s=60)
    with httpx.Client(base_url=url, timeout=10) as http:
        token = sign_up_host(http)
        space = http.post(
            "/api/spaces",
            json={"title": "beats", "visibility": "public"},
            headers={"Authorization": f"Bearer {token}"},
        )
        space.raise_for_status()
        space_id = space.json()["id"]
        tokens = []
        for _ in range(TOKENS):
            answer = http.post(f"/api/spaces/{space_id}/join")
            answer.raise_for_status()
            tokens.append(answer.json()["token"])
        beat = http.post(
            f"/api/spaces/{space_id}/presence", headers={"Authorization": f"Bearer {tokens[0]}"}
        )
        assert beat.status_code == 204, beat.text
    return server, url, space_id, tokens


def wrk_round(
    tmp: Path, server: Child, url: str, lua: str, seconds: float, name: str
) -> dict[str, Any]:
    script = tmp / f"{name}.lua"
    script.write_text(lua)
    c0, t0 = server.cpu_s(), time.monotonic()
    out = subprocess.run(
        pinned(CLIENT_CORE, ["wrk", "-t1", "-c32", f"-d{seconds:g}s", "--latency", "-s", str(script), url]),
        capture_output=True, text=True, timeout=seconds + 30, check=False,
    )  # fmt: skip
    wall = time.monotonic() - t0
    cpu = server.cpu_s() - c0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    rps = float(m.group(1)) if m else 0.0
    p99 = re.search(r"99%\s+(\S+)", out.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
    requests = rps * seconds
    return {
        "requests_per_s": rps,
        "server_cores": round(cpu / wall, 3),
        "server_cpu_us_per_request": round(1e6 * cpu / requests, 1) if requests else None,
        "p99": p99.group(1) if p99 else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def million(target: int, presence_s: float = 8.0) -> dict[str, Any]:
    """Beats per second of 10**6 listeners with the real sampler, settled
    (rooms of one size; the sampler is per room, so rooms of equal size scale
    linearly)."""
    from townhall.live.presence import PresenceSampler, rank_of

    beat_s = presence_s / 3
    out: dict[str, Any] = {"target": target, "unsampled_beats_per_s": round(1e6 / beat_s)}
    for rooms, size in ((1, 1_000_000), (100, 10_000), (1000, 1_000)):
        sampler = PresenceSampler(target, settle_s=presence_s * 2 / 3)
        ranks = [rank_of(f"tok{i}") for i in range(size)]
        beats = size
        raw = 0
        for i in range(12):  # bounded: a dozen beat rounds (32 s) settle any level
            below = sampler.beat_below("s")
            beats = sum(r < below for r in ranks)  # the pages that beat this round
            now = i * beat_s
            sampler.count_key("s", now)
            raw = sum(r < 2.0 ** -sampler.level("s") for r in ranks)  # the active key's count
            sampler.observe("s", raw, now)
        level = sampler.level("s")
        estimate = raw << level
        out[f"{rooms}x{size}"] = {
            "level": level,
            "beats_per_s": round(rooms * beats / beat_s),
            "sampling_error": round(sampler.relative_error("s", estimate), 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--base-commit", default="2b88acc", help="commit of the base tree (git archive)"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--wrk-s", type=float, default=5.0)
    args = ap.parse_args()
    results: dict[str, Any] = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                               "base_commit": args.base_commit, "load_start": os.getloadavg(),
                               "rounds": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="presence-cost-") as tmp_name:
        tmp = Path(tmp_name)
        base_src = tmp / "base"
        base_src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base_commit, "src"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
        children: list[Child] = []
        try:
            base, base_url, base_space, base_tokens = start("base", base_src / "src", tmp)
            children.append(base)
            ours, ours_url, ours_space, ours_tokens = start("ours", ROOT / "src", tmp)
            children.append(ours)
            kinds = {
                "presence_base": (base, base_url, PRESENCE_LUA % (", ".join(json.dumps(t) for t in base_tokens), base_space)),
                "presence_ours": (ours, ours_url, PRESENCE_LUA % (", ".join(json.dumps(t) for t in ours_tokens), ours_space)),
                "state_json_ours": (ours, ours_url, STATE_LUA % ours_space),
            }  # fmt: skip
            order = list(kinds)
            for i in range(args.rounds):
                row = {}
                for key in order[i % 3 :] + order[: i % 3]:
                    server, url, lua = kinds[key]
                    row[key] = wrk_round(tmp, server, url, lua, args.wrk_s, key)
                results["rounds"].append(row)
                log(f"round {i + 1}: " + "  ".join(
                    f"{k} {row[k]['requests_per_s']:.0f}/s {row[k]['server_cpu_us_per_request']} us/req p99 {row[k]['p99']} non2xx {row[k]['non_2xx']}"
                    for k in order))  # fmt: skip
        finally:
            for child in reversed(children):
                child.stop()
    summary: dict[str, Any] = {}
    for key in kinds:
        rows = [r[key] for r in results["rounds"]]
        summary[key] = {
            f: statistics.median(r[f] for r in rows if r[f] is not None)
            for f in ("requests_per_s", "server_cpu_us_per_request", "server_cores")
        }
        summary[key]["non_2xx"] = sum(r["non_2xx"] for r in rows)
    summary["million_listeners"] = million(1024)
    results["summary"] = summary
    results["load_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / "presence_cost.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
