"""The control-plane database: an async SQLAlchemy engine (SQLite through
aiosqlite by default, PostgreSQL through asyncpg), migrated with Alembic at
start-up.

SQLite runs in WAL mode (readers never wait for the writer) with foreign keys
on and a busy timeout, so one process can serve many requests at once.

Every session goes through :meth:`Database.session`, the one place where a
database that cannot be reached (refused, shut down, timed out, pool
exhausted) becomes :class:`townhall.errors.DatabaseUnavailable` (503 with
Retry-After); other errors (an IntegrityError, a bug) pass through unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from townhall.errors import DatabaseUnavailable

log = logging.getLogger("townhall.store")

WARN_INTERVAL_S = 10.0  # while the database is down, one warning this often (not per request)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


MIGRATION_LOCK_KEY = 0x746F776E68616C6C  # "townhall": the advisory lock migrations hold
"""PostgreSQL advisory lock taken for the migration transaction."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def alembic_config() -> Config:
    """Alembic configuration pointing at the migrations shipped in the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _driver_unreachable_types() -> tuple[type[BaseException], ...]:
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        return ()
    return (
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,  # shutting down, cannot connect now
        asyncpg.exceptions.TooManyConnectionsError,
        asyncpg.InterfaceError,  # the connection is closed
    )


_DRIVER_UNREACHABLE = _driver_unreachable_types()


# SQLite reports a missing table as an OperationalError too: only these are outages
_SQLITE_OUTAGES = ("locked", "disk i/o", "unable to open", "readonly", "full", "busy")


def _is_sqlite(error: BaseException | None) -> bool:
    return type(error).__module__.startswith("sqlite3")


def _sqlite_unavailable(error: BaseException | None) -> bool:
    message = str(error).lower()
    return any(word in message for word in _SQLITE_OUTAGES)


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) says the database cannot be reached
    right now, as opposed to a query it refused (constraint, syntax)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, exc.IntegrityError | exc.ProgrammingError | exc.DataError):
            return False
        if isinstance(current, exc.OperationalError) and _is_sqlite(current.orig):
            return _sqlite_unavailable(current.orig)
        if isinstance(
            current,
            exc.OperationalError | exc.InterfaceError | exc.TimeoutError | OSError | TimeoutError,
        ):
            return True
        if _DRIVER_UNREACHABLE and isinstance(current, _DRIVER_UNREACHABLE):
            return True
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


class Database:
    """One engine and its session factory. ``open`` migrates; ``close`` disposes.

    ``timeout_s`` bounds a PostgreSQL connect, one statement and the wait for
    a pooled connection, so an unreachable server fails a request in that
    time instead of hanging it; ``retry_after_s`` is what the 503 then says.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_args: dict[str, Any] | None = None,
        timeout_s: float = 5.0,
        retry_after_s: float = 5.0,
    ) -> None:
        self.url = url
        self.retry_after_s = retry_after_s
        self._warned_at = -WARN_INTERVAL_S
        kwargs: dict[str, Any] = {"pool_pre_ping": False}
        args = dict(connect_args or {})
        if url.startswith("postgresql+asyncpg"):
            args.setdefault("timeout", timeout_s)
            args.setdefault("command_timeout", timeout_s)
            kwargs["pool_timeout"] = timeout_s
        if args:
            kwargs["connect_args"] = args
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        if self.is_sqlite:
            path = self.engine.url.database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        async with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                # nodes starting together migrate one after another, not at once
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            await conn.run_sync(_upgrade)
        log.info("database migrated (%s)", self.engine.url.render_as_string(hide_password=True))

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error.

        Raises DatabaseUnavailable when the database cannot be reached."""
        try:
            async with self.sessions() as session, session.begin():
                yield session
        except Exception as error:
            if isinstance(error, DatabaseUnavailable) or not is_unreachable(error):
                raise
            now = time.monotonic()
            if now - self._warned_at >= WARN_INTERVAL_S:
                self._warned_at = now
                log.warning("database unreachable: %s: %s", type(error).__name__, error)
            raise DatabaseUnavailable(
                DatabaseUnavailable.DETAIL, retry_after_s=self.retry_after_s
            ) from error

    async def close(self) -> None:
        await self.engine.dispose()


def _upgrade(connection: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
