"""The long-lived objects one server process holds, opened at start-up and
closed at shutdown, in that order. Route handlers reach them through
``request.app.state.services``.

Owners: the control plane adds its database, tokens and limits here; the live
plane adds its registry of running rooms.
"""

from __future__ import annotations

from dataclasses import dataclass

from townhall.config import Settings


@dataclass
class Services:
    settings: Settings

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        """Create the data directory, apply migrations, load keys, start rooms."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(settings=settings)

    async def close(self) -> None:
        """Stop rooms (finishing their recordings), then close connections."""
