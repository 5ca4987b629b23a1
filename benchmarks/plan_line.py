"""The line's own costs for `townhall bench plan` (run by plan_calibrate.py):

- **post-draw ticket** (``ticket_drawn``): a numbered ticket posted after the
  draw while its turn has not come, close enough to the call that the node
  reads the line again from Redis before it says "wait"
  (``server/admission.py``: ``may_have_called``). The line is full here (the
  space's own cap reached), so it does not move during the run;
- **claim**: a called ticket exchanged for a listener token while the line
  moves (places freed at once, then called at ``admit_rate_per_s``), posted
  0.5-1.5 s after the call as a page that looks at queue.json does, to both
  nodes in turn as nginx's round robin does (a node whose view is older than
  the call reads the line again first).

Each cost is the nodes' CPU from /proc over the run, minus their background
measured just before with the same line, divided by the answers; Redis
commands likewise, from INFO stats and INFO commandstats.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from plan_lab import Lab, Node, commands_delta, log, wrk

WORKERS = 8


class Posts:
    """Join posts from a few threads, each with its own keep-alive client, to
    ``nodes`` in turn."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = list(nodes)
        self._local = threading.local()
        self._turn = 0
        self._lock = threading.Lock()

    def _client(self, node: Node) -> httpx.Client:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if node.name not in clients:
            clients[node.name] = httpx.Client(base_url=node.url, timeout=30)
        return clients[node.name]  # type: ignore[no-any-return]

    def next_node(self) -> Node:
        with self._lock:
            self._turn += 1
            return self.nodes[self._turn % len(self.nodes)]

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        answer = self._client(self.next_node()).post(path, json=body)
        try:
            data = answer.json() if answer.content else {}
        except ValueError:
            data = {}
        return answer.status_code, data

    def many(self, path: str, bodies: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(lambda b: self.post(path, b), bodies))


def background(nodes: Sequence[Node], lab: Lab, seconds: float) -> tuple[list[float], float]:
    """Each node's CPU (cores) and Redis commands per second, over ``seconds``."""
    before, ops0, t0 = [n.cpu_s() for n in nodes], lab.redis_ops(), time.monotonic()
    time.sleep(seconds)
    span = time.monotonic() - t0
    cores = [(n.cpu_s() - b) / span for n, b in zip(nodes, before, strict=True)]
    return cores, (lab.redis_ops() - ops0) / span


def line_runs(
    lab: Lab,
    nodes: Sequence[Node],
    owner: Node,
    host: dict[str, str],
    *,
    cap: int,
    tickets: int,
    wrk_s: float,
    claim_s: float,
    idle_s: float,
) -> tuple[dict[str, float], dict[str, float], dict[str, float], dict[str, Any]]:
    """(origin_us, origin_sparse_us, redis_ops, notes) for ``claim`` and
    ``ticket_drawn``: ``origin_us`` with 32 posts at once (the claims'
    where only the paced figure exists), ``origin_sparse_us`` one at a time."""
    origin_us: dict[str, float] = {}
    sparse_us: dict[str, float] = {}
    redis_ops: dict[str, float] = {}
    notes: dict[str, Any] = {"cap": cap, "tickets": tickets}
    posts = Posts(nodes)
    with httpx.Client(base_url=owner.url, timeout=15) as http:
        start = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        made = http.post(
            "/api/spaces",
            json={
                "title": "Plan calibration: the line",
                "visibility": "unlisted",
                "scheduled_for": start.isoformat(),
                "max_listeners": cap,
            },
            headers=host,
        )
        made.raise_for_status()
        sid = str(made.json()["id"])
        # the room's start as the host starts an advertised space: from the
        # start's post until the first part is in every node's playlist
        t_start = time.monotonic()
        http.post(f"/api/spaces/{sid}/start", headers=host).raise_for_status()
        first = http.post(f"/api/spaces/{sid}/join", json={})
        first.raise_for_status()
        # (as an LL-HLS player: a client not known to play LL-HLS is held
        # until the first whole segment, origin/client_kind.py)
        cookie = {
            "Cookie": f"th_listener={first.json()['token']}",
            "User-Agent": "townhall-bench-plan",
        }
        seen: dict[str, float] = {}
        while len(seen) < len(nodes) and time.monotonic() < t_start + 60:
            for node in nodes:
                if node.name not in seen:
                    text = httpx.get(f"{node.url}/spaces/{sid}/live.m3u8", headers=cookie).text
                    if "#EXT-X-PART:" in text:
                        seen[node.name] = round(time.monotonic() - t_start, 3)
            time.sleep(0.05)
        notes["room_start_from_start_s"] = seen
    # every node must know the space is live before the first join
    for node in nodes:
        deadline = time.monotonic() + 15
        while httpx.get(f"{node.url}/spaces/{sid}/queue.json").json().get("state") != "live":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not learn that space {sid} went live")
            time.sleep(0.1)
    join = f"/api/spaces/{sid}/join"
    log(f"the line: {cap} listeners in, then {tickets} tickets")
    filled = posts.many(join, [{}] * (cap - 1))
    tokens = [first.json()["token"]] + [a["token"] for s, a in filled if s == 200]
    issued = posts.many(join, [{}] * tickets)
    line = sorted((a["number"], a["ticket"]) for s, a in issued if s == 202 and a.get("number"))
    notes["filled"] = len(tokens)
    notes["issued_numbered"] = len(line)
    if len(tokens) < cap * 0.98 or len(line) < tickets * 0.98:
        raise RuntimeError(
            f"the line: {len(tokens)} of {cap} admitted, {len(line)} of {tickets} numbered tickets"
        )
    time.sleep(2)
    bg, bg_ops_s = background(nodes, lab, idle_s / 2)
    notes["full_line_background_cores"] = bg
    notes["full_line_background_redis_ops_s"] = round(bg_ops_s, 2)
    owner_i = list(nodes).index(owner)

    # -- a ticket posted after the draw, its turn not come (the line is full) ---------
    body = json.dumps({"ticket": line[0][1]})
    for conns in (1, 32):
        c0, ops0, cmd0, w0 = owner.cpu_s(), lab.redis_ops(), lab.redis_commands(), time.monotonic()
        run = wrk(lab, owner.url, [join], wrk_s, method="POST", body=body, connections=conns)
        wall = time.monotonic() - w0
        n = max(1, run["requests"])
        cpu_us = (owner.cpu_s() - c0 - bg[owner_i] * wall) / n * 1e6
        ops = max(0.0, lab.redis_ops() - ops0 - bg_ops_s * wall) / n
        commands = commands_delta(lab.redis_commands(), cmd0)
        notes[f"ticket_drawn_c{conns}"] = {
            "origin_us": round(cpu_us, 1),
            "redis_ops": round(ops, 3),
            "requests": run["requests"],
            "non_2xx": run["non_2xx"],
            "line_reads_per_post": round(commands.get("hgetall", 0) / 2 / n, 3),
            "redis_commands": commands,
            "command": run["command"].replace("-c32", f"-c{conns}"),
        }
        log(f"ticket after the draw, -c{conns}: {cpu_us:.0f} us, {ops:.2f} Redis ops")
    # Redis: posts one at a time (a storm's pages) each read the line; 32 at
    # once share one read (``Admission._fresh``)
    origin_us["ticket_drawn"] = notes["ticket_drawn_c32"]["origin_us"]
    sparse_us["ticket_drawn"] = notes["ticket_drawn_c1"]["origin_us"]
    redis_ops["ticket_drawn"] = notes["ticket_drawn_c32"]["redis_ops"]
    notes["redis_sparse_ops"] = {"ticket_drawn": notes["ticket_drawn_c1"]["redis_ops"]}

    # -- claims while the line moves --------------------------------------------------
    log(f"{len(tokens)} leave; claims for {claim_s:g} s as the line moves")
    posts.many(f"/api/spaces/{sid}/leave", [{"token": t} for t in tokens])
    statuses: Counter[int] = Counter()
    c0 = [n.cpu_s() for n in nodes]
    ops0, cmd0, w0 = lab.redis_ops(), lab.redis_commands(), time.monotonic()
    due: list[tuple[float, int, str]] = []  # (post at, number, ticket)
    rest = list(line)
    rng = random.Random(7)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = []
        turn = 0
        while time.monotonic() < w0 + claim_s:
            turn += 1
            doc = httpx.get(f"{nodes[turn % len(nodes)].url}/spaces/{sid}/queue.json").json()
            through = int(doc.get("admitting_through") or 0)
            now = time.monotonic()
            while rest and rest[0][0] <= through:
                number, ticket = rest.pop(0)
                heapq.heappush(due, (now + 0.5 + rng.random(), number, ticket))
            while due and due[0][0] <= now:
                _, _, ticket = heapq.heappop(due)
                futures.append(pool.submit(posts.post, join, {"ticket": ticket}))
            time.sleep(0.1)
        for f in futures:
            statuses[f.result()[0]] += 1
    wall = time.monotonic() - w0
    claimed = max(1, statuses[200])
    cpu = sum(n.cpu_s() - c for n, c in zip(nodes, c0, strict=True)) - sum(bg) * wall
    ops = max(0.0, lab.redis_ops() - ops0 - bg_ops_s * wall)
    # paced at the line's rate, most claims find their node idle
    sparse_us["claim"] = origin_us["claim"] = round(cpu / claimed * 1e6, 1)
    redis_ops["claim"] = round(ops / claimed, 3)
    commands = commands_delta(lab.redis_commands(), cmd0)
    notes["claim"] = {
        "statuses": dict(statuses),
        "wall_s": round(wall, 2),
        "line_reads_per_claim": round(commands.get("hgetall", 0) / 2 / claimed, 3),
        "redis_commands": commands,
        "how": "tickets posted 0.5-1.5 s after queue.json (each node in turn) called them, "
        f"{WORKERS} threads, to each node in turn; the line's {len(tokens)} listeners left first",
    }
    with httpx.Client(base_url=owner.url, timeout=15) as http:
        http.post(f"/api/spaces/{sid}/end", headers=host)  # its room stops
    log(f"claims: {origin_us['claim']} us, {redis_ops['claim']} Redis ops, {dict(statuses)}")
    return origin_us, sparse_us, redis_ops, notes
