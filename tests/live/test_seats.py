"""live/seats.py, pure: the seats document round trip, its refusals, and
what a node that does not run a room shows for each kind of read."""

from __future__ import annotations

import orjson
import pytest

from townhall.live.seats import (
    MOVING,
    OK,
    STARTING,
    UNKNOWN,
    SeatFormatError,
    decode_seats,
    encode_seats,
    follower_view,
    muted_ids,
    with_mute,
)
from townhall.live.tracks import SpeakerStatus
from townhall.store.seat_board import SeatRead

TALKING = SpeakerStatus(connected=True, muted=False, speaking=True, level=0.3125)
MUTED = SpeakerStatus(connected=True, muted=True, speaking=False, level=0.0)
AWAY_MUTED = SpeakerStatus(connected=False, muted=True, speaking=False, level=0.0)
FIELDS = {
    "captions": {"status": "off", "message": "Captions are not enabled on this server."},
    "program": {"status": "ok", "message": ""},
}
DOC = encode_seats({"ada": TALKING, "bob": MUTED, "cy": AWAY_MUTED}, FIELDS)
STALE_MS = 2000


def read(raw: bytes | None = DOC, age_ms: int | None = 100, writer: str = "7:a", holder: str | None = "7:a") -> SeatRead:  # fmt: skip
    return SeatRead(raw=raw, age_ms=age_ms, writer_token=writer, holder_token=holder)


def test_the_document_round_trips() -> None:
    doc = decode_seats(DOC)
    assert doc.speakers == {"ada": TALKING, "bob": MUTED, "cy": AWAY_MUTED}
    assert doc.fields == FIELDS


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"speakers": {}}',
        b'{"speakers": {"ada": [true, false]}, "fields": {}}',
        b'{"speakers": {"ada": [true, false, true, "loud"]}, "fields": {}}',
        b'{"speakers": [1], "fields": {}}',
    ],
)
def test_a_malformed_document_is_refused_with_what_is_wrong(raw: bytes) -> None:
    with pytest.raises(SeatFormatError, match="published seats are malformed"):
        decode_seats(raw)


def test_fresh_seats_of_the_lease_holder_are_shown_as_the_owner_knows_them() -> None:
    view = follower_view(read(), STALE_MS)
    assert view.status == OK
    assert view.speakers == {"ada": TALKING, "bob": MUTED, "cy": AWAY_MUTED}
    assert view.fields == {**FIELDS, "room": {"status": "ok", "message": ""}}


@pytest.mark.parametrize(
    ("seats", "why"),
    [
        (read(age_ms=STALE_MS + 1), "its last word is 2.0 s old"),
        (read(holder=None), "it let the room go or its lease lapsed"),
        (read(holder="8:b"), "another server has just taken the room"),
    ],
)
def test_seats_that_cannot_be_trusted_show_nobody_connected_and_the_last_mutes(
    seats: SeatRead, why: str
) -> None:
    view = follower_view(seats, STALE_MS)
    assert view.status == MOVING
    assert view.speakers == {
        "ada": SpeakerStatus(connected=False, muted=False, speaking=False, level=0.0),
        "bob": AWAY_MUTED,
        "cy": AWAY_MUTED,
    }
    assert view.fields.keys() == {"room"}  # no program or captions from a stale owner
    assert view.fields["room"]["status"] == MOVING
    assert why in view.fields["room"]["message"]
    assert "takes the room over" in view.fields["room"]["message"]


def test_at_the_stale_bound_the_seats_are_still_fresh() -> None:
    assert follower_view(read(age_ms=STALE_MS), STALE_MS).status == OK


@pytest.mark.parametrize(
    ("seats", "status"),
    [
        (None, UNKNOWN),  # Redis could not be read
        (read(raw=None, age_ms=None, writer=""), STARTING),  # held, nothing published yet
        (read(raw=b"garbage"), STARTING),  # unreadable: as if none
        (read(raw=None, age_ms=None, writer="", holder=None), MOVING),  # nobody holds it
    ],
)
def test_without_a_document_nobody_is_connected_or_muted(
    seats: SeatRead | None, status: str
) -> None:
    view = follower_view(seats, STALE_MS)
    assert view.status == status
    assert view.speakers == {}  # state.json: connected false, muted false for every seat
    assert view.fields.keys() == {"room"}
    assert view.fields["room"]["status"] == status and view.fields["room"]["message"]


def test_a_takeover_mutes_again_whom_the_last_document_says() -> None:
    assert muted_ids(DOC) == ["bob", "cy"]
    assert muted_ids(None) == []
    assert muted_ids(b"garbage") == []
    assert muted_ids(orjson.dumps({"speakers": {}, "fields": {}})) == []


def test_a_mute_shows_as_the_stage_shows_it() -> None:
    assert with_mute(TALKING, True) == MUTED
    assert with_mute(MUTED, False) == SpeakerStatus(
        connected=True, muted=False, speaking=False, level=0.0
    )
    assert with_mute(None, True) == AWAY_MUTED  # muted before joining
    assert with_mute(None, False) is None
