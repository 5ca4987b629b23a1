"""Admission across two real nodes on one Redis: the cap is counted across
both (concurrent joins on both never pass it), a ticket from one node is
exchanged on the other, once, and a leave on one frees the place for both."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import Api
from tests.scale.conftest import Cluster
from tests.scale.test_two_nodes import until_known

CAP = 5


async def test_cap_and_tickets_across_nodes(cluster: Cluster) -> None:
    env = {"TOWNHALL_MAX_LISTENERS": str(CAP), "TOWNHALL_QUEUE_INTERVAL_MS": "200"}
    node_a, node_b = cluster.nodes_at_once(("a", "b"), **env)
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=10) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=10) as b,
    ):
        _, host = await Api(a).account("host")
        sid = (await Api(a).space(host, title="Capped"))["id"]
        await until_known(b, sid)
        path = f"/api/spaces/{sid}/join"
        answers = await asyncio.gather(*(c.post(path) for c in (a, b) * 10))
        admitted = [r for r in answers if r.status_code == 200]
        queued = [r for r in answers if r.status_code == 202]
        assert len(admitted) == CAP and len(queued) == 20 - CAP
        numbers = sorted(r.json()["number"] for r in queued)
        assert numbers == list(range(1, 20 - CAP + 1))  # one sequence across nodes

        first = next(r.json() for r in queued if r.json()["number"] == 1)
        left = await a.post(f"/api/spaces/{sid}/leave", json={"token": admitted[0].json()["token"]})
        assert left.status_code == 204
        # the line moves (on whichever node ticks); ticket 1 is exchanged on node B
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            doc = (await b.get(f"/spaces/{sid}/queue.json")).json()
            if doc["admitting_through"] >= 1:
                break
            await asyncio.sleep(0.2)
        assert doc["admitting_through"] == 1, doc
        exchanged = await b.post(path, json={"ticket": first["ticket"]})
        assert exchanged.status_code == 200, exchanged.text
        reused = await a.post(path, json={"ticket": first["ticket"]})
        assert reused.status_code == 409, reused.text
        doc = (await a.get(f"/spaces/{sid}/queue.json")).json()
        assert doc["admitted"] <= CAP
