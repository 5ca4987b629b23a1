"""FollowerState without Redis: bus entries in, the owner's window's answers
out, byte for byte; gaps, duplicates, a join mid-room, a new epoch."""

from __future__ import annotations

import pytest

from tests.scale.owner import PARTS, WINDOW_SEGMENTS, FakeOwner, entries, same_answers
from townhall.origin.bus import (
    BusFormatError,
    Closed,
    EpochStart,
    Snapshot,
    decode,
    decode_entry,
    encode,
)
from townhall.origin.follower import FollowerState, Gap
from townhall.store.recordings import SegmentRecord

# a bus that keeps a few more entries than the window's segments
KEEP = (WINDOW_SEGMENTS + 1) * (PARTS + 1) + 2


def follower() -> tuple[FollowerState, list[tuple[SegmentRecord, bytes]], list[bool]]:
    segments: list[tuple[SegmentRecord, bytes]] = []
    closes: list[bool] = []
    state = FollowerState(
        window_segments=WINDOW_SEGMENTS,
        on_segment=lambda r, d: segments.append((r, d)),
        on_close=closes.append,
    )
    return state, segments, closes


def test_round_trip_of_every_message() -> None:
    owner = FakeOwner(epoch=2, first_msn=5)
    owner.parts(PARTS + 1)
    owner.close(ended=True)
    for message in owner.messages:
        assert decode(*encode(message)) == message


def test_malformed_entries_say_what_is_wrong() -> None:
    with pytest.raises(BusFormatError, match="unknown kind b'x'"):
        decode(b"x", b"{}", b"")
    with pytest.raises(BusFormatError, match="of kind b'p' is malformed"):
        decode(b"p", b"[1, 2]", b"")
    with pytest.raises(BusFormatError, match="lacks a field"):
        decode_entry({b"k": b"c", b"h": b"{}"})


def test_follower_from_the_start_answers_like_the_owner() -> None:
    owner = FakeOwner()
    owner.parts(PARTS * 5 + 2)
    state, segments, _ = follower()
    for entry in entries(owner.messages):
        state.apply(entry)
    assert state.window is not None
    same_answers(owner.window, state.window)
    assert [r for r, _ in segments] == list(owner.window.history)
    assert segments[0][1] == b"".join(
        owner.messages[i].part.data  # type: ignore[union-attr]
        for i in range(1, PARTS + 1)
    )
    assert state.statistics().mismatches == 0


def test_a_gap_raises_and_a_snapshot_continues_without_loss() -> None:
    owner = FakeOwner()
    owner.parts(PARTS * 2)
    state, _, _ = follower()
    stream = entries(owner.messages)
    for entry in stream[:5]:
        state.apply(entry)
    with pytest.raises(Gap):
        state.apply(stream[7])
    # the bus still holds the entries after ours: continue, no resync
    snap = Snapshot(
        owner.messages[0], tuple(owner.window.history), tuple(stream[3:]), stream[-1].seq
    )  # type: ignore[arg-type]
    assert state.restore(snap)
    assert state.window is not None
    same_answers(owner.window, state.window)
    assert state.statistics().resyncs == 0


def test_behind_the_bounded_stream_resyncs_at_a_segment_boundary() -> None:
    owner = FakeOwner()
    owner.parts(PARTS * 2 + 1)
    state, segments, _ = follower()
    stream = entries(owner.messages)
    for entry in stream[:4]:
        state.apply(entry)
    owner.parts(PARTS * 8)
    stream = entries(owner.messages)
    retained = stream[-KEEP:]  # trimmed: the follower's next entry is gone
    snap = Snapshot(owner.messages[0], tuple(owner.window.history), tuple(retained), stream[-1].seq)  # type: ignore[arg-type]
    old = state.window
    assert state.restore(snap)
    assert state.window is not None and state.window is not old
    assert old is not None and old.closed and not old.ended
    assert state.statistics().resyncs == 1
    # the playlist is the owner's (same history, same discontinuity flags)
    same_answers(owner.window, state.window)
    # what it recorded has no segment twice and none out of order
    msns = [r.msn for r, _ in segments]
    assert msns == sorted(set(msns))
    # the next live entries apply
    owner.parts(3)
    for entry in entries(owner.messages)[len(stream) :]:
        state.apply(entry)
    same_answers(owner.window, state.window)


def test_a_node_joining_mid_room_starts_at_the_next_boundary() -> None:
    owner = FakeOwner()
    owner.parts(PARTS * 30 + 2)  # the epoch start has long been trimmed
    stream = entries(owner.messages)
    retained = stream[-KEEP:]
    state, segments, _ = follower()
    snap = Snapshot(owner.messages[0], tuple(owner.window.history), tuple(retained), stream[-1].seq)  # type: ignore[arg-type]
    assert state.restore(snap)
    assert state.window is not None
    assert state.statistics().resyncs == 0  # not a resync: it had nothing before
    same_answers(owner.window, state.window)
    first = len(segments)
    owner.parts(PARTS)
    for entry in entries(owner.messages)[len(stream) :]:
        state.apply(entry)
    assert segments[first][0] == owner.window.history[-1]
    same_answers(owner.window, state.window)


def test_duplicates_are_skipped_and_a_new_epoch_gets_a_new_window() -> None:
    owner = FakeOwner()
    owner.parts(PARTS + 2)
    state, segments, closes = follower()
    stream = entries(owner.messages)
    for entry in stream:
        state.apply(entry)
    # a Redis that came back empty: same entries again under new numbers
    again = Snapshot(owner.messages[0], (), tuple(entries(owner.messages[2:])), 40)  # type: ignore[arg-type]
    assert state.restore(again)
    assert state.window is not None
    same_answers(owner.window, state.window)  # nothing twice
    # the owner dies; another node resumes in epoch 1 at the next msn
    successor = FakeOwner(
        epoch=1, first_msn=owner.window.open_msn, history=tuple(owner.window.history)
    )
    successor.parts(PARTS + 1)
    for entry in entries(successor.messages, first_seq=41):
        state.apply(entry)
    assert state.window is not None and state.window.epoch == 1
    same_answers(successor.window, state.window)
    assert "#EXT-X-DISCONTINUITY" in state.window.playlist("ll")
    state.apply(entries([Closed(True)], first_seq=41 + len(successor.messages))[0])
    assert state.window.closed and state.window.ended and closes == [True]
    assert [r.msn for r, _ in segments] == [0, 1]


def test_without_an_epoch_start_nothing_is_served() -> None:
    state, _, _ = follower()
    assert not state.restore(Snapshot(None, (), (), 0))
    assert state.window is None
    meta = EpochStart(0, 0, b"init", 48000, 24000, PARTS)
    assert not state.restore(Snapshot(meta, (), (), 0))


def test_a_takeover_seals_the_open_segment_and_the_others_end_it_the_same() -> None:
    """The owner dies mid-segment: the node taking over ends that segment with
    the parts the bus carried (the recording keeps them, every part URI keeps
    its bytes); another follower that applies the new owner's end and epoch
    answers exactly like the new owner."""
    owner = FakeOwner()
    owner.parts(PARTS + 2)  # one segment, then two parts of the next
    taker, taker_segments, _ = follower()
    other, _, _ = follower()
    for entry in entries(owner.messages):
        taker.apply(entry)
        other.apply(entry)
    sealed = taker.seal()
    assert sealed is not None
    assert (sealed.end.msn, sealed.end.part_count) == (1, 2)
    assert sealed.end.start_samples == PARTS * 24000
    assert sealed.end.duration_samples == 2 * 24000
    record, data = taker_segments[-1]
    assert record == sealed.record and record.msn == 1 and record.part_count == 2
    assert data == b"".join(
        m.part.data  # type: ignore[union-attr]
        for m in owner.messages
        if getattr(m, "part", None) is not None and m.part.msn == 1  # type: ignore[union-attr]
    )
    assert taker.window is not None and taker.window.closed
    assert taker.seal() is None  # once
    # the new owner resumes at msn 2 in epoch 1 (as Program.start does from the copy)
    history = tuple(r for r, _ in taker_segments)
    new_owner = FakeOwner(epoch=1, first_msn=2, history=history)
    new_owner.parts(PARTS + 1)
    seq = len(owner.messages) + 1
    for entry in entries([sealed, *new_owner.messages], first_seq=seq):
        other.apply(entry)
    assert other.window is not None
    same_answers(new_owner.window, other.window)
    assert other.statistics().mismatches == 0


def test_nothing_to_seal_at_a_segment_boundary() -> None:
    owner = FakeOwner()
    owner.parts(PARTS)
    state, segments, _ = follower()
    for entry in entries(owner.messages):
        state.apply(entry)
    assert state.seal() is None and len(segments) == 1
