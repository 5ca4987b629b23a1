"""The seats of a live room as its owner knows them (connected, muted,
speaking, level) and the room's health fields of state.json, carried from the
owner to every other node (issue 11), and what those nodes show from them.

The owner publishes one small document per room (``store/seat_board.py``:
beside the room's bus keys, fenced by its lease, stamped with Redis's own
clock) every ``seat_status_interval_ms`` and at once after a mute, unmute,
demote or block. A follower's state.json reads it once per state interval
and renders the seats with the same code and the same fields as the owner.

When the owner's document cannot be trusted, a follower says so rather than
guess (:func:`follower_view`): every seat ``connected: false``, not speaking,
level 0; ``muted`` as the owner last said (the next owner keeps those mutes,
``live/scaleout.py``), else false; and a ``room`` field whose status says why:

- ``ok``: the owner's seats, at most ``seat_status_stale_ms`` old;
- ``starting``: the room has no published seats yet (it just started);
- ``moving``: the owner stopped publishing (it died, is cut off or stalled)
  or its lease lapsed or changed hands: another node takes the room over or
  just did;
- ``unknown``: this node cannot reach Redis, so it cannot tell.

Pure: no sockets, no event loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from townhall.errors import TownhallError
from townhall.live.program import program_fields
from townhall.live.tracks import SpeakerStatus
from townhall.store.seat_board import SeatRead

OK = "ok"
STARTING = "starting"
MOVING = "moving"
UNKNOWN = "unknown"

ROOM_OK: dict[str, str] = {"status": OK, "message": ""}
STARTING_SENTENCE = (
    "The room's audio is starting on one of the servers; the speakers' status shows in a moment."
)
MOVING_SENTENCE = (
    "The server that runs this room's audio stopped answering {why}; another server takes the "
    "room over within a few seconds. Until then every speaker shows as not connected."
)
UNKNOWN_SENTENCE = (
    "This server cannot reach the shared store, so it cannot tell the speakers' status; "
    "every speaker shows as not connected until it can."
)


AWAY_MUTED = SpeakerStatus(connected=False, muted=True, speaking=False, level=0.0)


def with_mute(seat: SpeakerStatus | None, muted: bool) -> SpeakerStatus | None:
    """A seat's status once (un)muted, as the stage shows it
    (``Stage.speaker_status``): a muted speaker neither speaks nor has a
    level; one muted before joining shows muted, not connected; None: no
    status to show (unmuted, not on the stage)."""
    if seat is None:
        return AWAY_MUTED if muted else None
    speaking = seat.speaking and not muted
    return SpeakerStatus(seat.connected, muted, speaking, 0.0 if muted else seat.level)


class SeatFormatError(TownhallError):
    """A published seats document that this version cannot read."""


@dataclass(frozen=True, slots=True)
class SeatDoc:
    """What the owner published: the status of each seat it runs, and the
    state.json fields of its room (``captions``, ``program``, ``recording``)."""

    speakers: dict[str, SpeakerStatus]
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SeatView:
    """What a follower renders: the seats' statuses, and the fields (``room``
    always; ``captions``, ``program``, ``recording`` when the owner's are fresh)."""

    status: str
    speakers: dict[str, SpeakerStatus]
    fields: dict[str, Any]


def room_fields(room: Any) -> dict[str, Any]:
    """The state.json fields of a room running here (``Room`` or the media
    process's ``RemoteRoom``): captions, program, recording; the one rule of
    the owner's state.json and of what it publishes."""
    status, message = room.captions.status()
    return {"captions": {"status": status, "message": message}, **program_fields(room.program)}


def encode_seats(speakers: Mapping[str, SpeakerStatus], fields: Mapping[str, Any]) -> bytes:
    seats = {
        account_id: [st.connected, st.muted, st.speaking, st.level]
        for account_id, st in speakers.items()
    }
    return orjson.dumps({"speakers": seats, "fields": dict(fields)})


def decode_seats(raw: bytes) -> SeatDoc:
    """The document of ``encode_seats``, or SeatFormatError saying what is wrong."""
    try:
        doc = orjson.loads(raw)
        speakers = {
            str(account_id): SpeakerStatus(
                connected=bool(connected),
                muted=bool(muted),
                speaking=bool(speaking),
                level=float(level),
            )
            for account_id, (connected, muted, speaking, level) in dict(doc["speakers"]).items()
        }
        fields = dict(doc["fields"])
    except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
        raise SeatFormatError(f"published seats are malformed: {exc}") from None
    return SeatDoc(speakers, fields)


def follower_view(read: SeatRead | None, stale_ms: int) -> SeatView:
    """What a node that does not run a live room shows of its seats, from one
    read (None: Redis could not be read); see the module docstring."""
    if read is None:
        return _unsure(UNKNOWN, UNKNOWN_SENTENCE, None)
    doc: SeatDoc | None = None
    if read.raw is not None:
        try:
            doc = decode_seats(read.raw)
        except SeatFormatError:
            doc = None
    if doc is None:
        if read.holder_token is None:
            return _unsure(MOVING, MOVING_SENTENCE.format(why="(nobody holds the room)"), None)
        return _unsure(STARTING, STARTING_SENTENCE, None)
    if read.holder_token is None:
        why = "(it let the room go or its lease lapsed)"
    elif read.holder_token != read.writer_token:
        why = "(another server has just taken the room)"
    elif read.age_ms is None or read.age_ms > stale_ms:
        why = f"(its last word is {(read.age_ms or 0) / 1000:.1f} s old)"
    else:
        return SeatView(OK, doc.speakers, {**doc.fields, "room": dict(ROOM_OK)})
    return _unsure(MOVING, MOVING_SENTENCE.format(why=why), doc)


def _unsure(status: str, message: str, last: SeatDoc | None) -> SeatView:
    """Every seat not connected; mutes as the owner last said."""
    speakers = {}
    if last is not None:
        speakers = {
            account_id: SpeakerStatus(connected=False, muted=st.muted, speaking=False, level=0.0)
            for account_id, st in last.speakers.items()
        }
    return SeatView(status, speakers, {"room": {"status": status, "message": message}})


def muted_ids(raw: bytes | None) -> list[str]:
    """The accounts a published document says are muted (none if unreadable):
    what a node that takes a room over mutes again."""
    if raw is None:
        return []
    try:
        doc = decode_seats(raw)
    except SeatFormatError:
        return []
    return sorted(account_id for account_id, st in doc.speakers.items() if st.muted)
