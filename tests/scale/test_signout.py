"""Sign-out across two real nodes sharing Redis: a session signed out on one
node is refused on the other within the sync interval, and "sign out
everywhere" stops every session of the account on both, while a new sign-in
works."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import Api
from tests.scale.conftest import Cluster

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

SYNC_MS = 200
WAIT_S = 5.0


async def me(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    return (await client.get("/api/me", headers=headers)).status_code


async def until(client: httpx.AsyncClient, headers: dict[str, str], status: int) -> float:
    started = time.monotonic()
    while (got := await me(client, headers)) != status:
        assert time.monotonic() - started < WAIT_S, f"/api/me stayed {got}, wanted {status}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def sign_in(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    response = await client.post(
        "/api/sessions", json={"username": username, "password": Api.PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def test_sign_out_reaches_the_other_node(cluster: Cluster) -> None:
    env = {"TOWNHALL_REVOCATION_SYNC_MS": str(SYNC_MS)}
    node_a, node_b = cluster.nodes_at_once(("a", "b"), **env)
    async with (
        httpx.AsyncClient(base_url=node_a.url) as a,
        httpx.AsyncClient(base_url=node_b.url) as b,
    ):
        _, first = await Api(a).account("ada")
        second = await sign_in(b, "ada")
        assert await me(a, first) == 200 and await me(b, first) == 200

        # one session: refused at once on A, within the sync interval on B
        assert (await a.delete("/api/sessions/current", headers=first)).status_code == 204
        assert await me(a, first) == 401
        waited_s = await until(b, first, 401)
        assert await me(b, second) == 200 and await me(a, second) == 200
        refused = await b.get("/api/me", headers=first)
        assert "signed out" in refused.json()["detail"]

        # everywhere, asked on B: both nodes refuse every older session
        third = await sign_in(a, "ada")
        assert (await b.post("/api/sessions/revoke-all", headers=second)).status_code == 204
        for client, headers in ((b, second), (b, third)):
            assert await me(client, headers) == 401
        await until(a, third, 401)
        assert await me(a, second) == 401
        # a sign-in afterwards (even in the same second) works on both
        fresh = await sign_in(a, "ada")
        assert await me(a, fresh) == 200
        await until(b, fresh, 200)
        # a node started later learns the sign-outs from Redis
        node_c = cluster.node("c", **env)
        async with httpx.AsyncClient(base_url=node_c.url) as c:
            assert await me(c, first) == 401 and await me(c, third) == 401
            assert await me(c, fresh) == 200
    print(f"sign-out reached the other node in {waited_s:.2f} s")
