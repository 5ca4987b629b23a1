"""Which driver errors mean "the database cannot be reached" (503) and which
are a query the database refused (passed through)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import exc, text

from townhall.errors import DatabaseUnavailable
from townhall.store.db import Database, is_unreachable


def _wrapped(error: BaseException, *, invalidated: bool = False) -> exc.DBAPIError:
    return exc.DBAPIError("SELECT 1", None, error, connection_invalidated=invalidated)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
        exc.OperationalError("SELECT 1", None, Exception("server closed the connection")),
        exc.TimeoutError("QueuePool limit reached"),
        _wrapped(asyncpg.exceptions.AdminShutdownError("terminating connection")),
        _wrapped(asyncpg.exceptions.CannotConnectNowError("the database system is starting up")),
        _wrapped(asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")),
        _wrapped(Exception("anything"), invalidated=True),
    ],
)
def test_unreachable(error: BaseException) -> None:
    assert is_unreachable(error)


@pytest.mark.parametrize(
    "error",
    [
        exc.IntegrityError("INSERT", None, Exception("UNIQUE constraint failed")),
        exc.ProgrammingError("SELEC", None, Exception("syntax error")),
        _wrapped(asyncpg.exceptions.UniqueViolationError("duplicate key")),
        ValueError("a bug"),
    ],
)
def test_not_unreachable(error: BaseException) -> None:
    assert not is_unreachable(error)


async def test_session_turns_a_lost_database_into_503(tmp_path: Path) -> None:
    # nothing listens on port 1 of loopback: the connect is refused at once
    db = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none", timeout_s=1.0, retry_after_s=7)
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            async with db.session() as session:
                await session.execute(text("SELECT 1"))
        assert caught.value.status == 503 and caught.value.retry_after_s == 7
        assert "database" in caught.value.detail
    finally:
        await db.close()
    sqlite = Database(f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite3'}")
    try:
        with pytest.raises(exc.OperationalError):  # a bad query is not an outage
            async with sqlite.session() as session:
                await session.execute(text("SELECT * FROM no_such_table"))
    finally:
        await sqlite.close()
