"""Nodes that start at the same moment on an empty PostgreSQL database migrate
one after another (an advisory lock), so neither fails."""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest
from sqlalchemy import text

from tests.store.conftest import POSTGRES_URL, _admin
from townhall.store.db import Database

pytestmark = pytest.mark.postgres


async def test_two_nodes_migrating_at_once_both_succeed() -> None:
    schema = "townhall_test_" + secrets.token_hex(6)
    try:
        await _admin(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # any connection failure
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable under CI: {exc}")
        pytest.skip(f"POSTGRESQL NOT TESTED: {POSTGRES_URL} unreachable ({type(exc).__name__})")
    nodes = [
        Database(POSTGRES_URL, connect_args={"server_settings": {"search_path": schema}})
        for _ in range(3)
    ]
    try:
        await asyncio.gather(*(node.migrate() for node in nodes))
        async with nodes[0].session() as session:
            version = (await session.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert len(version) == 1
    finally:
        for node in nodes:
            await node.close()
        await _admin(f'DROP SCHEMA "{schema}" CASCADE')
