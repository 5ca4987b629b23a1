"""The in-memory view of spaces that the join hot path reads instead of the
database: which space ids exist, their state, visibility, schedule and cap,
and who is blocked where. Pure (no I/O): filled by ``store/spaces.py`` (at
start-up, on every write this process makes, at each refresh) and by the
space feed (``store/space_feed.py``: other nodes' writes, as they happen).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

STATES: tuple[str, ...] = ("scheduled", "live", "ended")


@dataclass(frozen=True, slots=True)
class IndexEntry:
    state: str
    visibility: str
    scheduled_for_s: float | None = None  # epoch seconds (admission's waiting room)
    max_listeners: int | None = None  # the space's own cap (None: the deployment's)


def aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class SpaceIndex:
    """Known spaces (id -> state, visibility) and blocks, in memory: filled at
    start-up, updated on every write this process makes, refreshed by the caller
    (other nodes' writes); about 200 bytes per space. A space never moves back:
    a read older than a write applied here (a refresh racing a start) is ignored."""

    def __init__(self) -> None:
        self._spaces: dict[str, IndexEntry] = {}
        self._blocked: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self._spaces)

    def get(self, space_id: str) -> IndexEntry | None:
        return self._spaces.get(space_id)

    def put(
        self,
        space_id: str,
        state: str,
        visibility: str,
        scheduled_for: datetime | None = None,
        max_listeners: int | None = None,
    ) -> bool:
        """Record what a space is now; False (and nothing changed) when that
        would move it back to an earlier state."""
        when = None if scheduled_for is None else aware(scheduled_for).timestamp()
        entry = IndexEntry(state, visibility, when, max_listeners)
        return self.put_entry(space_id, entry) or self._spaces.get(space_id) == entry

    def put_entry(self, space_id: str, entry: IndexEntry) -> bool:
        """:meth:`put` of an entry as it stands (the space feed's): False, and
        nothing changed, when it would move the space back or changes nothing."""
        known = self._spaces.get(space_id)
        if known == entry or (
            known is not None and STATES.index(known.state) > STATES.index(entry.state)
        ):
            return False
        self._spaces[space_id] = entry
        return True

    def is_blocked(self, space_id: str, account_id: str) -> bool:
        return (space_id, account_id) in self._blocked

    def add_block(self, space_id: str, account_id: str) -> None:
        self._blocked.add((space_id, account_id))
