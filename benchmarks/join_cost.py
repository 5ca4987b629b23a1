#!/usr/bin/env python3
"""What a join costs the server, per outcome of a flood, side by side in ONE run:

(a) a base tree (by default main's commit 0de39a8: joins through FastAPI's
    middleware stack and the bare join route);
(b) this tree with ``TOWNHALL_LEAN_API_ANSWERS=false`` (the same, through the app);
(c) this tree as served (the HTTP/1.1 driver's lean answers, server/lean.py).

Outcomes (one wrk Lua script each, ``POST /api/spaces/{id}/join``):

- ``queued``: a capped space (max_listeners 1, taken): 202 with a ticket;
- ``challenge``: a space without a cap under pressure
  (``challenge_joins_per_s`` 1, no lane for clients that do not solve):
  429 with a proof-of-work challenge;
- ``malformed_ticket``: ``{"ticket": "t1.<random>"}`` (bench attack's ``ticket``): 400;
- ``forged_ticket``: a real ticket with its signature reversed: 401.

    .venv/bin/python benchmarks/join_cost.py --base-commit 0de39a8 --rounds 2

Servers (``townhall serve``) are pinned to core 0, wrk (-t1 -c32) to core 1;
rounds are interleaved, rotating the order of the servers, because other load
on a shared machine drifts. CPU per request is the server process's CPU
(psutil) over the wrk run divided by the answers (``net``: less the server's
idle CPU, its live programs, measured for 3 s before the rounds); the answers' statuses are
checked once per server before the rounds. The per-network limits that would
429 one loopback address are raised. Results go to
benchmarks/results/join_cost.json. Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
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

from presence_cost import wrk_round  # noqa: E402
from side_by_side import (  # noqa: E402
    Child,
    log,
    serve_pinned,
    sign_up_host,
)

LIMITS = {  # one loopback address stands for a whole crowd here
    "TOWNHALL_JOINS_PER_NETWORK_PER_10S": "100000000",
    "TOWNHALL_REFUSALS_PER_NETWORK_PER_10S": "100000000",
    "TOWNHALL_CHALLENGE_JOINS_PER_S": "1",
    "TOWNHALL_CHALLENGE_UNSOLVED_JOINS_PER_S": "0",
    "TOWNHALL_PROGRAM_WAITS_FOR_HOST": "false",
    # queued arrivals numbered at once (a 0.5 s window would set wrk's pace, not the CPU)
    "TOWNHALL_QUEUE_PRIORITY_WINDOW_S": "0",
}
JOIN_LUA = """request = function()
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, %s)
end
"""
MALFORMED_LUA = """math.randomseed(7)
request = function()
  local body = string.format('{"ticket": "t1.%%08x%%08x"}', math.random(0, 2^31), math.random(0, 2^31))
  return wrk.format("POST", "/api/spaces/%s/join", {["Content-Type"] = "application/json"}, body)
end
"""
EXPECTED = {"queued": 202, "challenge": 429, "malformed_ticket": 400, "forged_ticket": 401}


def start(
    name: str, src: Path, tmp: Path, lean: bool
) -> tuple[Child, str, dict[str, str], dict[str, tuple[str, str]]]:
    server, url = serve_pinned(
        name,
        src,
        tmp,
        {**LIMITS, **({} if lean else {"TOWNHALL_LEAN_API_ANSWERS": "false"})},
        wait_s=90,
    )
    with httpx.Client(base_url=url, timeout=30) as http:
        token = sign_up_host(http)
        auth = {"Authorization": f"Bearer {token}"}
        spaces = {}
        for kind, cap in (("open", None), ("capped", 1)):
            space = http.post(
                "/api/spaces",
                json={"title": kind, "visibility": "public", "max_listeners": cap},
                headers=auth,
            )
            space.raise_for_status()
            spaces[kind] = space.json()["id"]
        first = http.post(f"/api/spaces/{spaces['capped']}/join")
        assert first.status_code == 200, first.text  # the one place is taken
        queued = http.post(f"/api/spaces/{spaces['capped']}/join")
        assert queued.status_code == 202, queued.text
        signed, _, signature = queued.json()["ticket"].rpartition(".")
    forged = json.dumps({"ticket": f"{signed}.{signature[::-1]}"})
    asks = {  # (path, body) of each outcome
        "queued": (f"/api/spaces/{spaces['capped']}/join", "{}"),
        "challenge": (f"/api/spaces/{spaces['open']}/join", ""),
        "malformed_ticket": (f"/api/spaces/{spaces['open']}/join", '{"ticket": "t1.x"}'),
        "forged_ticket": (f"/api/spaces/{spaces['capped']}/join", forged),
    }
    scripts = {kind: JOIN_LUA % (path, json.dumps(body)) for kind, (path, body) in asks.items()}
    scripts["malformed_ticket"] = MALFORMED_LUA % spaces["open"]
    return server, url, scripts, asks


def check(
    tmp: Path, server: Child, url: str, scripts: dict[str, str], asks: dict[str, tuple[str, str]]
) -> dict[str, int]:
    """Put the node under pressure (the challenge's effort rises within a
    second), then each outcome's status, asked once by hand."""
    wrk_round(tmp, server, url, scripts["malformed_ticket"], 3.0, "warm")
    with httpx.Client(base_url=url, timeout=30) as http:
        return {
            kind: http.post(path, content=body).status_code for kind, (path, body) in asks.items()
        }


def idle_cores(server: Child, seconds: float = 3.0) -> float:
    """The server's own CPU with no requests (its live programs), subtracted per request."""
    c0, t0 = server.cpu_s(), time.monotonic()
    time.sleep(seconds)
    return (server.cpu_s() - c0) / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base-commit", default="0de39a8", help="commit of the base tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--wrk-s", type=float, default=5.0)
    args = ap.parse_args()
    results: dict[str, Any] = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                               "base_commit": args.base_commit, "load_start": os.getloadavg(),
                               "statuses": {}, "rounds": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="join-cost-") as tmp_name:
        tmp = Path(tmp_name)
        base_src = tmp / "base"
        base_src.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base_commit, "src"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
        children: list[Child] = []
        try:
            servers = {}
            for name, src, lean in (("base", base_src / "src", False),
                                    ("app", ROOT / "src", False),
                                    ("lean", ROOT / "src", True)):  # fmt: skip
                child, url, scripts, asks = start(name, src, tmp, lean)
                children.append(child)
                servers[name] = (child, url, scripts)
                results["statuses"][name] = check(tmp, child, url, scripts, asks)
            results["idle_cores"] = {
                name: round(idle_cores(s[0]), 4) for name, s in servers.items()
            }
            log(f"statuses: {results['statuses']}")
            names = list(servers)
            for i in range(args.rounds):
                for kind in EXPECTED:
                    row = {}
                    for name in names[i % 3 :] + names[: i % 3]:
                        child, url, scripts = servers[name]
                        row[name] = got = wrk_round(
                            tmp, child, url, scripts[kind], args.wrk_s, kind
                        )
                        busy = got["server_cores"] - results["idle_cores"][name]
                        rps = got["requests_per_s"]
                        got["net_cpu_us_per_request"] = round(1e6 * busy / rps, 1) if rps else None
                    results["rounds"].append({"kind": kind, **row})
                    log(f"round {i + 1} {kind}: " + "  ".join(
                        f"{n} {row[n]['requests_per_s']:.0f}/s {row[n]['net_cpu_us_per_request']} us/req non2xx {row[n]['non_2xx']}"
                        for n in names))  # fmt: skip
        finally:
            for child in reversed(children):
                child.stop()
    summary: dict[str, Any] = {}
    for kind in EXPECTED:
        rows = [r for r in results["rounds"] if r["kind"] == kind]
        summary[kind] = {
            name: {
                f: statistics.median(r[name][f] for r in rows if r[name][f] is not None)
                for f in (
                    "requests_per_s",
                    "server_cpu_us_per_request",
                    "net_cpu_us_per_request",
                    "server_cores",
                )
            }
            | {
                "non_2xx_share": round(
                    sum(r[name]["non_2xx"] for r in rows)
                    / max(1.0, sum(r[name]["requests_per_s"] * args.wrk_s for r in rows)),
                    3,
                )
            }
            for name in ("base", "app", "lean")
        }
    results["summary"] = summary
    results["load_end"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / "join_cost.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
