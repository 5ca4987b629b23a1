"""Alembic environment for townhall's control-plane database.

townhall applies migrations itself at start-up (``store.db.Database.migrate``),
handing a live connection in ``config.attributes["connection"]``. Run by hand
(``alembic -c <ini>`` with ``sqlalchemy.url`` set, or ``TOWNHALL_DATABASE_URL``),
it opens an async engine and runs the migrations through ``run_sync``.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from townhall.store.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def _main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("TOWNHALL_DATABASE_URL", "")
    if not url:
        from townhall.config import Settings

        url = Settings().resolved_database_url()
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_async(url))


_main()
