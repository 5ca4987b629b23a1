"""The space feed's wire format (store/space_change.py): a round trip, the
exact sentence for each malformed message, and the feed's receive side
counting and ignoring bad messages (no Redis needed for that part)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from townhall.store.space_change import BadSpaceChange, encode_change, parse_change
from townhall.store.space_feed import SpaceFeed
from townhall.store.space_index import IndexEntry, SpaceIndex

MAX = 4096
GOOD: dict[str, Any] = {
    "v": 1,
    "node": "n1",
    "space": "abcd1234efgh",
    "state": "live",
    "visibility": "public",
    "scheduled_for_s": 1767225600.5,
    "max_listeners": 500,
}


def test_a_change_round_trips() -> None:
    entry = IndexEntry("live", "unlisted", 1767225600.5, 500)
    change = parse_change(encode_change("n1", "abcd1234efgh", entry), max_bytes=MAX)
    assert (change.node, change.space_id, change.entry) == ("n1", "abcd1234efgh", entry)
    bare = IndexEntry("scheduled", "public")
    assert parse_change(encode_change("n2", "s", bare), max_bytes=MAX).entry == bare


def with_(**fields: Any) -> bytes:
    return orjson.dumps({**GOOD, **fields})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"x" * 5000, "the message is 5000 bytes, more than 4096."),
        (b"{not json", "the message is not JSON."),
        (b"[1, 2]", "the message is not a JSON object."),
        (with_(v=2), "version 2 is not 1."),
        (with_(node=""), "'node' must be a string of 1 to 256 characters."),
        (with_(space=7), "'space' must be a string of 1 to 64 characters."),
        (with_(space="s" * 65), "'space' must be a string of 1 to 64 characters."),
        (with_(state="paused"), "'state' must be one of scheduled, live, ended."),
        (with_(visibility=None), "'visibility' must be one of public, unlisted."),
        (with_(scheduled_for_s="soon"), "'scheduled_for_s' must be a number of seconds or null."),
        (with_(scheduled_for_s=True), "'scheduled_for_s' must be a number of seconds or null."),
        (with_(max_listeners=-1), "'max_listeners' must be a whole number of at least 0, or null."),
        (
            with_(max_listeners=1.5),
            "'max_listeners' must be a whole number of at least 0, or null.",
        ),
    ],
)
def test_a_bad_message_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(BadSpaceChange) as caught:
        parse_change(data, max_bytes=MAX)
    assert str(caught.value) == message


def feed(index: SpaceIndex, applied: list[str]) -> SpaceFeed:
    # receive() needs neither client: no task is started
    return SpaceFeed(
        None, None, index, prefix="p:", node="me", on_applied=applied.append, on_gap=lambda: None
    )


def test_receive_applies_other_nodes_changes_and_ignores_the_rest() -> None:
    index = SpaceIndex()
    index.put("abcd1234efgh", "scheduled", "public")
    applied: list[str] = []
    f = feed(index, applied)
    for bad in (b"", b"\xff\xfe", b"null", with_(state="gone"), b"{" * 10_000):
        assert f.receive(bad) is False  # counted, never raised
    assert f.receive(with_(node="me")) is False  # its own change: applied when written
    assert f.receive(with_()) is True
    entry = index.get("abcd1234efgh")
    assert entry is not None and entry.state == "live" and entry.max_listeners == 500
    assert f.receive(with_()) is False  # the same again: nothing to do
    assert f.receive(with_(state="scheduled")) is False  # older than what it knows
    assert index.get("abcd1234efgh") == entry
    assert applied == ["abcd1234efgh"]
    stats = f.statistics()
    assert (stats.received, stats.applied, stats.bad) == (9, 1, 5)
