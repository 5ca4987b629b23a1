"""Fixtures for the scaled-out mode: real PostgreSQL and real Redis, shared by
several real `townhall serve` processes.

PostgreSQL comes from TOWNHALL_TEST_POSTGRES_URL, Redis from
TOWNHALL_TEST_REDIS_URL (defaults: trust auth on 127.0.0.1:5432 database
``test``; 127.0.0.1:6379 db 0). Each test gets a fresh database (dropped
afterwards) and its own Redis key prefix (its keys deleted afterwards).
Unreachable servers fail the test under CI=true and skip it, loudly,
otherwise.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import LiveServer
from townhall.bench.clock_nodes import admin_sql

POSTGRES_URL = os.environ.get(
    "TOWNHALL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TOWNHALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unreachable(what: str, url: str, exc: BaseException, variable: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} at {url} is unreachable under CI: {exc}")
    pytest.skip(
        f"{what.upper()} NOT TESTED: {url} unreachable ({type(exc).__name__}: {exc}); set {variable}"
    )


async def _pg_admin(sql: str) -> None:
    await admin_sql(POSTGRES_URL, sql)  # the bench's own helper: one way to run admin SQL


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL database (dropped afterwards)."""
    name = "townhall_scale_" + secrets.token_hex(6)
    try:
        await _pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # any connection failure
        unreachable("PostgreSQL", POSTGRES_URL, exc, "TOWNHALL_TEST_POSTGRES_URL")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own (its keys deleted afterwards)."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        unreachable("Redis", REDIS_URL, exc, "TOWNHALL_TEST_REDIS_URL")
    prefix = f"townhall-test:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


class Cluster:
    """Real `townhall serve` nodes on one database, one Redis (by default) and
    the same signing keys; every node started here is stopped at the end."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.nodes: list[LiveServer] = []

    def node(self, name: str, **overrides: str) -> LiveServer:
        """Start a node (its own data directory); ``overrides`` are env variables."""
        server = LiveServer(self.root / name / "data", extra_env={**self.env, **overrides})
        self.nodes.append(server)
        return server.start()

    def nodes_at_once(
        self, names: tuple[str, ...], timeout_s: float = 30.0, **overrides: str
    ) -> list[LiveServer]:
        """``node`` for each of ``names``, the processes started together
        (migrations take PostgreSQL's advisory lock: one after another). They
        share the budget the same starts one after another would have had:
        ``timeout_s`` per node, counted from the launch."""
        servers = [
            LiveServer(self.root / name / "data", extra_env={**self.env, **overrides})
            for name in names
        ]
        self.nodes.extend(servers)
        for server in servers:
            server.launch()
        deadline = time.monotonic() + timeout_s * len(servers)
        return [server.wait_ready(max(1.0, deadline - time.monotonic())) for server in servers]

    def stop(self) -> None:
        for server in self.nodes:
            server.stop()


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, redis_prefix: str) -> Iterator[Cluster]:
    env = {
        "TOWNHALL_DATABASE_URL": postgres_url,
        "TOWNHALL_REDIS_URL": REDIS_URL,
        "TOWNHALL_REDIS_PREFIX": redis_prefix,
        "TOWNHALL_SIGNING_KEYS": secrets.token_urlsafe(32),
        "TOWNHALL_STATE_INTERVAL_MS": "200",
        "TOWNHALL_SPACE_INDEX_REFRESH_MS": "200",
        "TOWNHALL_REDIS_BACKOFF_MS": "300",
        "TOWNHALL_LOG_LEVEL": "info",
        # one process per node (scaled out, `serve` runs one worker per core
        # by default): these tests kill, pause and read the data of a node's
        # one process; tests/scale/test_workers.py asks for workers itself
        "TOWNHALL_HTTP_WORKERS": "1",
    }
    group = Cluster(tmp_path, env)
    try:
        yield group
    finally:
        group.stop()
