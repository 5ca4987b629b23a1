"""The host's own actions are not starved by the crowd's buckets (issue 10):
a network whose join bucket, and then its refusal record, a crowd has spent
still lets a space's host (and co-host) start, invite and end it; anyone else
from that network, signed in or not, still gets the network's 429."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FAST_ARGON2, Api, LiveServer
from townhall.config import Settings

LIMITS = {"refusals_per_network_per_10s": 3, "joins_per_network_per_10s": 2}


def later() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat()


async def spend(client: httpx.AsyncClient, crowd_space: str) -> None:
    """Joins from the network until its refusals shield every API request (bounded)."""
    for _ in range(40):
        r = await client.post(f"/api/spaces/{crowd_space}/join")
        if r.status_code == 429 and "were refused" in r.json()["detail"]:
            break
    else:
        raise AssertionError("the network's refusals were never spent")
    shielded = await client.get("/api/spaces")
    assert shielded.status_code == 429 and "were refused" in shielded.json()["detail"]


async def test_host_starts_while_its_network_is_refused(tmp_path: Path) -> None:
    from townhall.server.app import create_app

    settings = Settings(data_dir=tmp_path / "d", **LIMITS, **FAST_ARGON2)  # type: ignore[arg-type]
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.5.5.5", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            api = Api(client)
            _, host = await api.account("hostess")
            _, cohost = await api.account("cohostess")
            _, other = await api.account("someone")
            crowd_space = (await api.space(host))["id"]
            space = (await api.space(host, scheduled_for=later()))["id"]
            invited = await client.post(
                f"/api/spaces/{space}/invites",
                json={"username": "cohostess", "role": "cohost"},
                headers=host,
            )
            assert invited.status_code == 200, invited.text
            await spend(client, crowd_space)
            # a signed-in account that is not a host of it: the network's 429, not a 403
            refused = await client.post(f"/api/spaces/{space}/start", headers=other)
            assert refused.status_code == 429 and "were refused" in refused.json()["detail"]
            # the host and the co-host go on as if nothing happened
            started = await client.post(f"/api/spaces/{space}/start", headers=host)
            assert started.status_code == 200, started.text
            assert started.json()["state"] == "live"
            seated = await client.post(
                f"/api/spaces/{space}/invites",
                json={"username": "someone", "role": "speaker"},
                headers=cohost,
            )
            assert seated.status_code == 200, seated.text
            # a forged token naming a host gets nothing
            forged = {"Authorization": host["Authorization"][:-4] + "AAAA"}
            assert (await client.post(f"/api/spaces/{space}/end", headers=forged)).status_code in (
                401,
                429,
            )
            ended = await client.post(f"/api/spaces/{space}/end", headers=host)
            assert ended.status_code == 200, ended.text
            # the crowd's network is still refused
            assert (await client.post(f"/api/spaces/{crowd_space}/join")).status_code == 429


@pytest.mark.slow
def test_host_starts_through_the_http_driver(tmp_path: Path) -> None:
    """The same through `townhall serve`'s driver, whose early refusal answers
    before any ASGI work: the host's /start passes it."""
    env = {f"TOWNHALL_{k.upper()}": str(v) for k, v in LIMITS.items()}
    # the early refusal alone: the crowd here ignores Retry-After on one
    # connection, which the driver would pause until the refusals expire
    # (origin/retry_penalty.py, its own tests)
    env["TOWNHALL_HTTP_REFUSED_PAUSE_MAX_S"] = "0"
    server = LiveServer(tmp_path / "data", extra_env=env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            user = {"username": "host1", "password": "correct horse 1"}
            assert client.post("/api/accounts", json=user).status_code == 201
            token = client.post("/api/sessions", json=user).json()["token"]
            host = {"Authorization": f"Bearer {token}"}
            crowd: Any = client.post("/api/spaces", json={"title": "c"}, headers=host).json()
            space: Any = client.post(
                "/api/spaces", json={"title": "s", "scheduled_for": later()}, headers=host
            ).json()
            for _ in range(40):
                r = client.post(f"/api/spaces/{crowd['id']}/join")
                if r.status_code == 429 and "were refused" in r.json()["detail"]:
                    break
            else:
                raise AssertionError("the network's refusals were never spent")
            for _ in range(3):  # the driver's early refusal is now answering
                assert client.get("/api/spaces").status_code == 429
            started = client.post(f"/api/spaces/{space['id']}/start", headers=host)
            assert started.status_code == 200, started.text
            early = [
                line
                for line in client.get("/metrics").text.splitlines()
                if 'limit="refusals-early"' in line and line.startswith("townhall_rate_limited")
            ]
            assert early and float(early[0].split()[-1]) >= 1, early
    finally:
        server.stop()
