"""server/forward.py against the machine's Redis (a prefix of its own): an
owner-only request for a room another node holds goes to that node's
published address; a request that was passed on once is never passed on
again; a room run here, and any other request, stay with the app; an owner
that cannot be reached gets 503 with a sentence. The app behind is a small
ASGI stand-in (it only says who answered): the part under test is the
middleware, with real Redis, real httpx and a real closed port."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.scale.conftest import REDIS_URL
from townhall.config import Settings
from townhall.server.forward import NodeDirectory, OwnerForward, node_key
from townhall.store.lease import lease_key

pytestmark = [pytest.mark.redis]


class StandIn:
    """The app: answers 200 'app' and handles its lifespan."""

    def __init__(self, redis: Any, local: set[str]) -> None:
        scaleout = SimpleNamespace(redis=redis, node_id="me")
        rooms = SimpleNamespace(
            scaleout=scaleout,
            get=lambda space_id: space_id in local or None,
            listener_source=lambda space_id: space_id in local or None,  # a copy where it runs
        )
        self.state = SimpleNamespace(services=SimpleNamespace(rooms=rooms))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


async def test_owner_only_requests_go_to_the_owner_once(redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    redis = aioredis.from_url(REDIS_URL)
    events: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    settings = Settings(bus_enabled=True, redis_prefix=redis_prefix, host="0.0.0.0", port=8123)
    forward = OwnerForward(StandIn(redis, {"mine"}), settings)
    lifespan = asyncio.create_task(forward({"type": "lifespan"}, events.get, send))
    try:
        await events.put({"type": "lifespan.startup"})
        for _ in range(100):
            if await redis.get(node_key(redis_prefix, "me")):
                break
            await asyncio.sleep(0.02)
        published = json.loads(await redis.get(node_key(redis_prefix, "me")))
        assert published["url"] == "http://127.0.0.1:8123"
        # another node holds "theirs" and says where it listens: nobody does
        await redis.set(lease_key(redis_prefix, "theirs"), "4:other")
        await NodeDirectory(redis, redis_prefix).register(
            "other", f"http://127.0.0.1:{free_port()}"
        )
        transport = httpx.ASGITransport(app=forward)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            offer = {"sdp": "v=0", "type": "offer"}
            refused = await http.post("/api/spaces/theirs/webrtc/offer", json=offer)
            assert refused.status_code == 503, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert "cannot be reached right now" in refused.json()["detail"]
            assert refused.headers["retry-after"] == "2"
            # passed on once already: the app answers (no loop)
            again = await http.post(
                "/api/spaces/theirs/webrtc/offer",
                json=offer,
                headers={"X-Townhall-Forwarded": "other"},
            )
            assert again.text == "app"
            # a room run here, nobody's room, and what any node answers: the app
            assert (await http.post("/api/spaces/mine/webrtc/offer", json=offer)).text == "app"
            assert (await http.post("/api/spaces/nobody/webrtc/offer", json=offer)).text == "app"
            assert (await http.get("/spaces/theirs/live.m3u8")).text == "app"
            # too big a body is refused before anything is sent on
            big = await http.post("/api/spaces/theirs/webrtc/offer", content=b"x" * 70_000)
            assert big.status_code == 413 and "smaller" in big.json()["detail"]
    finally:
        await events.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 5)
        assert await redis.get(node_key(redis_prefix, "me")) is None  # unregistered
        await redis.aclose()
