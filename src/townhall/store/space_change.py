"""The wire format of one space change on the space feed (``store/space_feed.py``):
what a node publishes when it writes a space (created, started, ended, its
cap set), so that every other node puts it into its index at once.

One JSON object per message::

    {"v": 1, "node": "host:8000:123", "space": "abcd1234efgh", "state": "live",
     "visibility": "public", "scheduled_for_s": 1767225600.0, "max_listeners": 500}

``scheduled_for_s`` and ``max_listeners`` may be null. Pure:
:func:`encode_change` and :func:`parse_change` are a pair, and a message that
is not one of these raises :class:`BadSpaceChange` with a sentence saying
what is wrong (the feed counts it and ignores it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from townhall.store.space_index import STATES, IndexEntry

VERSION = 1
MAX_ID_CHARS = 64  # as the API's space ids (server/api_spaces.py SpaceId)
VISIBILITIES = ("public", "unlisted")


class BadSpaceChange(ValueError):
    """A feed message that is not a space change this version understands."""


@dataclass(frozen=True, slots=True)
class SpaceChange:
    node: str  # who wrote it (a node ignores its own)
    space_id: str
    entry: IndexEntry


def encode_change(node: str, space_id: str, entry: IndexEntry) -> bytes:
    return orjson.dumps(
        {
            "v": VERSION,
            "node": node,
            "space": space_id,
            "state": entry.state,
            "visibility": entry.visibility,
            "scheduled_for_s": entry.scheduled_for_s,
            "max_listeners": entry.max_listeners,
        }
    )


def _text(doc: dict[str, Any], key: str, max_chars: int) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= max_chars:
        raise BadSpaceChange(f"'{key}' must be a string of 1 to {max_chars} characters.")
    return value


def parse_change(data: bytes, *, max_bytes: int) -> SpaceChange:
    """The change in ``data``; :class:`BadSpaceChange` if it is not one."""
    if len(data) > max_bytes:
        raise BadSpaceChange(f"the message is {len(data)} bytes, more than {max_bytes}.")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadSpaceChange("the message is not JSON.") from None
    if not isinstance(doc, dict):
        raise BadSpaceChange("the message is not a JSON object.")
    if doc.get("v") != VERSION:
        raise BadSpaceChange(f"version {doc.get('v')!r} is not {VERSION}.")
    node = _text(doc, "node", 256)
    space_id = _text(doc, "space", MAX_ID_CHARS)
    state = doc.get("state")
    if state not in STATES:
        raise BadSpaceChange(f"'state' must be one of {', '.join(STATES)}.")
    visibility = doc.get("visibility")
    if visibility not in VISIBILITIES:
        raise BadSpaceChange(f"'visibility' must be one of {', '.join(VISIBILITIES)}.")
    when = doc.get("scheduled_for_s")
    if when is not None and (isinstance(when, bool) or not isinstance(when, int | float)):
        raise BadSpaceChange("'scheduled_for_s' must be a number of seconds or null.")
    cap = doc.get("max_listeners")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 0):
        raise BadSpaceChange("'max_listeners' must be a whole number of at least 0, or null.")
    return SpaceChange(
        node, space_id, IndexEntry(state, visibility, None if when is None else float(when), cap)
    )
