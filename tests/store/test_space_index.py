"""The in-memory space index never moves a space backwards: a refresh that
read the database before the host's start (and lands after it) must not
turn a live space back into a scheduled one (found under load with HTTP
workers: the speaker token of a space just started was refused "not live")."""

from __future__ import annotations

from townhall.store.space_index import SpaceIndex


def test_a_stale_read_does_not_undo_a_start_or_an_end() -> None:
    index = SpaceIndex()
    index.put("s1", "scheduled", "public")
    index.put("s1", "live", "public")  # the host's start, applied here
    index.put("s1", "scheduled", "public")  # a refresh that read before the start
    entry = index.get("s1")
    assert entry is not None and entry.state == "live"
    index.put("s1", "ended", "public")
    index.put("s1", "live", "public")
    index.put("s1", "scheduled", "public")
    entry = index.get("s1")
    assert entry is not None and entry.state == "ended"


def test_other_changes_of_the_same_state_are_taken() -> None:
    index = SpaceIndex()
    index.put("s1", "live", "public", max_listeners=None)
    index.put("s1", "live", "unlisted", max_listeners=500)  # a cap set on another node
    entry = index.get("s1")
    assert entry is not None and (entry.visibility, entry.max_listeners) == ("unlisted", 500)
