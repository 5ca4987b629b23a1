"""Database fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL comes from TOWNHALL_TEST_POSTGRES_URL (default: trust auth on
127.0.0.1:5432, database ``test``). Each test gets a fresh schema (search_path),
dropped afterwards. Unreachable PostgreSQL fails the test under CI=true and
skips it, loudly, otherwise.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from townhall.store.db import Database

POSTGRES_URL = os.environ.get(
    "TOWNHALL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


async def _admin(sql: str) -> None:
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database of each kind."""
    schema: str | None = None
    if request.param == "sqlite":
        database = Database(f"sqlite+aiosqlite:///{tmp_path / 'test.sqlite3'}")
    else:
        schema = "townhall_test_" + secrets.token_hex(6)
        try:
            await _admin(f'CREATE SCHEMA "{schema}"')
        except (OSError, Exception) as exc:  # any connection failure
            if os.environ.get("CI") == "true":
                pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable under CI: {exc}")
            pytest.skip(
                f"POSTGRESQL NOT TESTED: {POSTGRES_URL} unreachable ({type(exc).__name__}); "
                "set TOWNHALL_TEST_POSTGRES_URL"
            )
        database = Database(POSTGRES_URL, connect_args={"server_settings": {"search_path": schema}})
    try:
        await database.migrate()
        yield database
    finally:
        await database.close()
        if schema is not None:
            await _admin(f'DROP SCHEMA "{schema}" CASCADE')
