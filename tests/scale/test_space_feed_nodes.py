"""A go-live reaches every node at once (store/space_feed.py): two real nodes
whose space-index refresh is 30 s apart, so only the feed can explain what
node B knows within a second of node A's writes: the new space, its go-live
(B draws the early tickets and shows the draw in queue.json) and its end."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx

from tests.conftest import Api
from tests.scale.conftest import Cluster

REFRESH_MS = 30_000  # the safety net, far out of the way
FEED_BOUND_S = 1.0  # a default index refresh period: the feed must beat it


async def until_doc(
    client: httpx.AsyncClient, space_id: str, check: str, started: float
) -> tuple[dict[str, object], float]:
    """Poll queue.json until ``check`` holds (a key that must be true, or
    ``state=value``); the document and the seconds since ``started``."""
    key, _, value = check.partition("=")
    while True:
        response = await client.get(f"/spaces/{space_id}/queue.json")
        took = time.monotonic() - started
        if response.status_code == 200:
            doc = response.json()
            if (doc.get(key) == value) if value else doc.get(key) is True:
                return doc, took
        assert took < REFRESH_MS / 1000 / 3, f"node B never saw {check}: {response.text}"
        await asyncio.sleep(0.01)


async def test_a_go_live_reaches_the_other_node_well_within_its_refresh(
    cluster: Cluster,
) -> None:
    env = {
        "TOWNHALL_MAX_LISTENERS": "2",
        "TOWNHALL_SPACE_INDEX_REFRESH_MS": str(REFRESH_MS),
        "TOWNHALL_QUEUE_INTERVAL_MS": "1000",
    }
    node_a, node_b = cluster.nodes_at_once(("a", "b"), **env)
    async with (
        httpx.AsyncClient(base_url=node_a.url, timeout=10) as a,
        httpx.AsyncClient(base_url=node_b.url, timeout=10) as b,
    ):
        api = Api(a)
        _, host = await api.account("host")
        soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        created = time.monotonic()
        sid = (await api.space(host, scheduled_for=soon))["id"]
        doc, known_s = await until_doc(b, sid, "state=scheduled", created)
        assert known_s < FEED_BOUND_S, f"node B learned of the new space after {known_s:.3f} s"
        early = [(await b.post(f"/api/spaces/{sid}/join")).json() for _ in range(4)]
        assert all(e["reason"] == "before_start" for e in early), early
        assert (await b.get(f"/spaces/{sid}/queue.json")).json()["drawn"] is False

        started = time.monotonic()
        response = await a.post(f"/api/spaces/{sid}/start", headers=host)
        assert response.status_code == 200, response.text
        start_call_s = time.monotonic() - started
        doc, drawn_s = await until_doc(b, sid, "drawn", started)
        assert doc["state"] == "live" and doc["drawn_count"] == 4, doc
        assert drawn_s < FEED_BOUND_S, (
            f"node B drew {drawn_s:.3f} s after the start (the start call took {start_call_s:.3f} s)"
        )
        # the early tickets are exchanged on node B at once: two admitted (the cap)
        answers = [
            await b.post(f"/api/spaces/{sid}/join", json={"ticket": e["ticket"]}) for e in early
        ]
        assert sorted(r.status_code for r in answers) == [200, 200, 202, 202]

        ended = time.monotonic()
        response = await a.post(f"/api/spaces/{sid}/end", headers=host)
        assert response.status_code == 200, response.text
        _, ended_s = await until_doc(b, sid, "state=ended", ended)
        assert ended_s < FEED_BOUND_S + 2.0, f"node B saw the end after {ended_s:.3f} s"
        metrics = (await b.get("/metrics")).text
        assert 'townhall_space_feed_received_total{outcome="applied"} 3.0' in metrics, [
            line for line in metrics.splitlines() if "space_feed" in line
        ]
