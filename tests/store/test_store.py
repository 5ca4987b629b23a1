"""Accounts and spaces repositories on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from townhall.errors import Conflict, Forbidden, NotFound, ValidationFailed
from townhall.store.accounts import Accounts, Passwords
from townhall.store.db import Database
from townhall.store.models import Base
from townhall.store.spaces import Spaces, next_state, validate_schedule

PASSWORD = "correct horse 1"


@pytest.fixture
def accounts(db: Database) -> Accounts:
    return Accounts(db, Passwords(time_cost=1, memory_kib=1024))


@pytest.fixture
def spaces(db: Database) -> Spaces:
    return Spaces(db, max_cohosts=2, max_speakers=3, max_schedule_ahead_days=30)


async def test_migrations_match_models_and_are_idempotent(db: Database) -> None:
    await db.migrate()  # second run: nothing to do
    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
        tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert diff == []
    assert {"accounts", "spaces", "space_roles", "speak_requests", "blocks"} <= tables


async def test_sqlite_runs_in_wal_mode(db: Database) -> None:
    if not db.is_sqlite:
        pytest.skip("SQLite only")
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"


async def test_account_sign_up_and_sign_in(accounts: Accounts) -> None:
    alice = await accounts.create("Alice_1", PASSWORD, "Alice")
    assert alice.username == "alice_1" and len(alice.id) == 12
    assert await accounts.authenticate("ALICE_1", PASSWORD) == alice
    assert await accounts.authenticate("alice_1", PASSWORD + "x") is None
    assert await accounts.authenticate("nobody", PASSWORD) is None
    assert await accounts.by_id(alice.id) == alice
    with pytest.raises(Conflict, match="taken"):
        await accounts.create("alice_1", PASSWORD, None)


@pytest.mark.parametrize(
    ("username", "password", "field"),
    [("a", PASSWORD, "username"), ("bad name", PASSWORD, "username"), ("bob", "short", "password")],
)
async def test_sign_up_validation_names_the_field(
    accounts: Accounts, username: str, password: str, field: str
) -> None:
    with pytest.raises(ValidationFailed, match=f"'{field}'"):
        await accounts.create(username, password, None)


async def test_space_state_machine(accounts: Accounts, spaces: Spaces) -> None:
    host = await accounts.create("host", PASSWORD, None)
    other = await accounts.create("other", PASSWORD, None)
    when = datetime.now(UTC) + timedelta(days=2)
    space = await spaces.create(host.id, "Town hall", "about", "public", when)
    assert space.state == "scheduled" and space.scheduled_for is not None
    assert abs((space.scheduled_for - when).total_seconds()) < 1
    with pytest.raises(Conflict, match="has not started"):
        await spaces.end(space.id, host.id)
    with pytest.raises(Forbidden, match="Only the host"):
        await spaces.start(space.id, other.id)
    live = await spaces.start(space.id, host.id)
    assert live.state == "live" and live.started_at is not None
    assert await spaces.live_ids() == [space.id]
    with pytest.raises(Conflict, match="already live"):
        await spaces.start(space.id, host.id)
    ended = await spaces.end(space.id, host.id)
    assert ended.state == "ended" and ended.ended_at is not None
    for action in (spaces.start, spaces.end):
        with pytest.raises(Conflict, match="ended"):
            await action(space.id, host.id)
    assert (await spaces.get(space.id)).state == "ended"
    assert spaces.index.get(space.id) is not None
    with pytest.raises(NotFound):
        await spaces.get("nosuchspace0")


async def test_list_public_newest_first_and_filtered(accounts: Accounts, spaces: Spaces) -> None:
    host = await accounts.create("host", PASSWORD, None)
    first = await spaces.create(host.id, "first")
    await spaces.create(host.id, "secret", visibility="unlisted")
    await asyncio.sleep(0.01)
    second = await spaces.create(
        host.id, "second", scheduled_for=datetime.now(UTC) + timedelta(hours=1)
    )
    assert [s.id for s in await spaces.list_public()] == [second.id, first.id]
    assert [s.id for s in await spaces.list_public("live")] == [first.id]
    assert [s.id for s in await spaces.list_public("scheduled")] == [second.id]
    assert await spaces.list_public("ended") == []


def test_schedule_window() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    validate_schedule(now + timedelta(days=30), now, 30)
    with pytest.raises(ValidationFailed, match=r"scheduled_for.*past"):
        validate_schedule(now - timedelta(seconds=1), now, 30)
    with pytest.raises(ValidationFailed, match=r"scheduled_for.*30 days"):
        validate_schedule(now + timedelta(days=30, seconds=1), now, 30)
    with pytest.raises(ValidationFailed, match="time zone"):
        validate_schedule(datetime(2026, 1, 2), now, 30)


def test_next_state_table() -> None:
    assert next_state("scheduled", "start") == "live"
    assert next_state("live", "end") == "ended"
    for state, action in [
        ("live", "start"),
        ("scheduled", "end"),
        ("ended", "start"),
        ("ended", "end"),
    ]:
        with pytest.raises(Conflict):
            next_state(state, action)  # type: ignore[arg-type]


async def test_roles_seats_requests_and_blocks(accounts: Accounts, spaces: Spaces) -> None:
    host = await accounts.create("host", PASSWORD, None)
    people = [await accounts.create(f"user{i}", PASSWORD, None) for i in range(6)]
    space = await spaces.create(host.id, "stage")
    assert await spaces.current_role(space.id, host.id) == "host"
    assert await spaces.current_role(space.id, people[0].id) == "listener"

    await spaces.add_request(space.id, people[0].id)
    await spaces.add_request(space.id, people[0].id)  # idempotent
    assert [r.account.id for r in await spaces.list_requests(space.id)] == [people[0].id]
    await spaces.grant(space.id, people[0].id, "speaker")  # approving clears the request
    assert await spaces.list_requests(space.id) == []
    for person in people[1:3]:
        await spaces.grant(space.id, person.id, "speaker")
    with pytest.raises(Conflict, match="3 speakers"):
        await spaces.grant(space.id, people[3].id, "speaker")
    await spaces.grant(space.id, people[3].id, "cohost")
    await spaces.grant(space.id, people[0].id, "cohost")  # a speaker moves up: frees a seat
    with pytest.raises(Conflict, match="2 co-hosts"):
        await spaces.grant(space.id, people[4].id, "cohost")
    await spaces.grant(space.id, people[4].id, "speaker")
    stage = await spaces.stage(space.id)
    assert [m.role for m in stage] == ["host", "cohost", "cohost", "speaker", "speaker", "speaker"]
    assert await spaces.current_role(space.id, people[0].id) == "cohost"

    assert await spaces.revoke(space.id, people[1].id) == "speaker"
    assert await spaces.revoke(space.id, people[1].id) is None
    await spaces.block(space.id, people[2].id, host.id)
    assert await spaces.current_role(space.id, people[2].id) is None
    assert spaces.index.is_blocked(space.id, people[2].id)
    with pytest.raises(Conflict, match="blocked"):
        await spaces.grant(space.id, people[2].id, "speaker")
    with pytest.raises(Conflict, match="host"):
        await spaces.block(space.id, host.id, people[0].id)


async def test_index_refresh_sees_other_nodes_writes(db: Database, accounts: Accounts) -> None:
    node_a = Spaces(db, max_cohosts=2, max_speakers=10, max_schedule_ahead_days=30)
    node_b = Spaces(db, max_cohosts=2, max_speakers=10, max_schedule_ahead_days=30)
    host = await accounts.create("host", PASSWORD, None)
    guest = await accounts.create("guest", PASSWORD, None)
    since = datetime.now(UTC) - timedelta(seconds=10)
    space = await node_a.create(host.id, "t")
    await node_a.block(space.id, guest.id, host.id)
    assert node_b.index.get(space.id) is None
    await node_b.refresh_index(since)
    entry = node_b.index.get(space.id)
    assert entry is not None and entry.state == "live"
    assert node_b.index.is_blocked(space.id, guest.id)
    await node_a.end(space.id, host.id)
    await node_b.refresh_index(since)
    entry = node_b.index.get(space.id)
    assert entry is not None and entry.state == "ended"
