"""state.json (caching, one computation per interval) and reactions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

from tests.conftest import FAST_ARGON2, Api
from townhall.config import Settings
from townhall.errors import DatabaseUnavailable
from townhall.live.roomstate import ListenerCounter, StateCache, hll_estimate


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        state_interval_ms=200,
        reactions_per_token_per_10s=3,
        **FAST_ARGON2,  # type: ignore[arg-type]
    )


def computed() -> float:
    return REGISTRY.get_sample_value("townhall_state_json_computed_total") or 0.0


async def test_state_json_headers_etag_and_304(app_client: httpx.AsyncClient, api: Api) -> None:
    host_id, host = await api.account("host")
    sid = (await api.space(host, title="Evening"))["id"]
    response = await app_client.get(f"/spaces/{sid}/state.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    max_age = int(response.headers["cache-control"].split("max-age=")[1])
    assert 1 <= max_age <= 2
    etag = response.headers["etag"]
    doc = response.json()
    assert doc["title"] == "Evening" and doc["state"] == "live" and doc["id"] == sid
    assert doc["speakers"][0]["account_id"] == host_id and doc["speakers"][0]["role"] == "host"
    assert set(doc["speakers"][0]) >= {"muted", "speaking", "level", "connected", "username"}
    assert "HyperLogLog" in doc["listener_count_method"]
    cached = await app_client.get(f"/spaces/{sid}/state.json", headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == etag
    other = await app_client.get(f"/spaces/{sid}/state.json", headers={"If-None-Match": '"x"'})
    assert other.status_code == 200


async def test_state_json_is_computed_once_per_interval(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    _, host = await api.account("host")
    sid = (await api.space(host))["id"]
    await asyncio.sleep(0.25)  # let anything computed at creation go stale
    before = computed()
    responses = await asyncio.gather(
        *(app_client.get(f"/spaces/{sid}/state.json") for _ in range(30))
    )
    assert {r.status_code for r in responses} == {200}
    assert len({r.headers["etag"] for r in responses}) == 1
    assert computed() - before == 1


async def test_reactions_and_listener_count_reach_state(
    app_client: httpx.AsyncClient, api: Api
) -> None:
    _, host = await api.account("host")
    sid = (await api.space(host))["id"]
    tokens = [(await app_client.post(f"/api/spaces/{sid}/join")).json()["token"] for _ in range(3)]
    # a renewal is the same listener
    await app_client.post(f"/api/spaces/{sid}/join", json={"token": tokens[0]})
    for token, emoji in [(tokens[0], "👏"), (tokens[1], "👏"), (tokens[2], "🔥")]:
        response = await app_client.post(
            f"/api/spaces/{sid}/reactions",
            json={"emoji": emoji},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 202, response.text
    await asyncio.sleep(0.25)
    doc = (await app_client.get(f"/spaces/{sid}/state.json")).json()
    assert doc["reactions"] == {"👏": 2, "🔥": 1}
    assert doc["listener_count"] == 3


async def test_reaction_errors_and_rate_limit(app_client: httpx.AsyncClient, api: Api) -> None:
    _, host = await api.account("host")
    sid = (await api.space(host))["id"]
    token = (await app_client.post(f"/api/spaces/{sid}/join")).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    path = f"/api/spaces/{sid}/reactions"
    response = await app_client.post(path, json={"emoji": "💩"}, headers=auth)
    assert response.status_code == 422 and "'emoji'" in response.json()["detail"]
    response = await app_client.post(path, json={"emoji": 1}, headers=auth)
    assert response.status_code == 422 and "'emoji'" in response.json()["detail"]
    response = await app_client.post(path, json={"emoji": "👏"})
    assert response.status_code == 401
    response = await app_client.post(path, json={"emoji": "👏"}, headers=host)
    assert response.status_code == 401 and "wrong kind" in response.json()["detail"]
    statuses = [
        (await app_client.post(path, json={"emoji": "👏"}, headers=auth)).status_code
        for _ in range(4)
    ]
    assert statuses == [202, 202, 202, 429]
    refused = await app_client.post(path, json={"emoji": "👏"}, headers=auth)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert "3 reactions per 10 seconds" in refused.json()["detail"]
    # another listener is not affected
    other = (await app_client.post(f"/api/spaces/{sid}/join")).json()["token"]
    response = await app_client.post(
        path, json={"emoji": "👏"}, headers={"Authorization": f"Bearer {other}"}
    )
    assert response.status_code == 202


# -- pure parts -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("n", [0, 1, 10, 1000, 20000])
def test_listener_counter_is_close(n: int) -> None:
    counter = ListenerCounter(ttl_s=300, clock=Clock())
    for i in range(n):
        counter.add("s", f"token-{i}")
        counter.add("s", f"token-{i}")  # renewals do not count twice
    assert abs(counter.count("s") - n) <= max(1, 0.05 * n)


def test_listener_counter_forgets_after_two_lifetimes() -> None:
    clock = Clock()
    counter = ListenerCounter(ttl_s=300, clock=clock)
    for i in range(100):
        counter.add("s", f"t{i}")
    clock.now = 301
    assert abs(counter.count("s") - 100) <= 5  # previous generation still counts
    counter.add("s", "t0")
    clock.now = 602
    assert counter.count("s") <= 2
    clock.now = 1300
    assert counter.count("s") == 0
    assert hll_estimate(bytes(4096)) == 0


async def test_state_cache_single_flight_and_failure() -> None:
    clock = Clock()
    cache = StateCache(interval_s=1.0, clock=clock)
    calls = 0
    gate = asyncio.Event()

    async def compute() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        return b'{"n": %d}' % calls

    waiters = [asyncio.create_task(cache.get("s", compute)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    entries = await asyncio.gather(*waiters)
    assert calls == 1 and {e.body for e in entries} == {b'{"n": 1}'}
    clock.now = 0.5
    assert (await cache.get("s", compute)).body == b'{"n": 1}'
    clock.now = 1.0
    assert (await cache.get("s", compute)).body == b'{"n": 2}'

    async def broken() -> bytes:
        raise RuntimeError("database down")

    clock.now = 5.0
    with pytest.raises(RuntimeError):
        await cache.get("s", broken)
    assert (await cache.get("s", compute)).body == b'{"n": 3}'


async def test_state_cache_serves_the_last_document_stale_while_the_database_is_down() -> None:
    clock = Clock()
    cache = StateCache(interval_s=1.0, clock=clock)
    attempts = 0

    async def down() -> bytes:
        nonlocal attempts
        attempts += 1
        raise DatabaseUnavailable("down", retry_after_s=5)

    with pytest.raises(DatabaseUnavailable):  # nothing to fall back on yet
        await cache.get("s", down, stale_on=(DatabaseUnavailable,))

    async def fresh() -> bytes:
        return b'{"n": 1}'

    await cache.get("s", fresh)
    clock.now = 3.0
    entry = await cache.get("s", down, stale_on=(DatabaseUnavailable,))
    assert entry.stale and orjson.loads(entry.body) == {"n": 1, "stale": True, "stale_age_s": 3.0}
    clock.now = 3.5  # kept for one interval: no new attempt
    assert (await cache.get("s", down, stale_on=(DatabaseUnavailable,))) is entry
    clock.now = 10.0
    later = await cache.get("s", down, stale_on=(DatabaseUnavailable,))
    assert orjson.loads(later.body)["stale_age_s"] == 10.0 and attempts == 3
    with pytest.raises(RuntimeError):  # other errors are not hidden

        async def bug() -> bytes:
            raise RuntimeError("bug")

        clock.now = 20.0
        await cache.get("s", bug, stale_on=(DatabaseUnavailable,))
    clock.now = 30.0
    back = await cache.get("s", fresh, stale_on=(DatabaseUnavailable,))
    assert not back.stale and back.body == b'{"n": 1}'
