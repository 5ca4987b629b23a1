"""Proof-of-work challenges: format, bad answers, replay, effort control."""

from __future__ import annotations

import pytest

from townhall.policy import challenge as pow_

KEY = b"k" * 32
NOW = 1_800_000_000.0


def _solved(bits: int = 6, space: str = "abc") -> tuple[str, str]:
    c = pow_.issue(KEY, space, bits, NOW, 60)
    return c.text, pow_.solve(c.text, bits)


def test_a_solved_challenge_passes_with_one_hash() -> None:
    text, nonce = _solved()
    assert pow_.check(KEY, text, nonce, "abc", NOW + 1).bits == 6


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t, n: ("v1.abc.x", n), "malformed"),
        (lambda t, n: (t[:-2] + ("AA" if not t.endswith("AA") else "BB"), n), "forged"),
        (lambda t, n: (t.replace(".12.", ".2."), n), "forged"),
        (lambda t, n: (t, ""), "malformed"),
        (lambda t, n: (t, "x" * 65), "malformed"),
        (lambda t, n: (t, "zzzz-not-it"), "under-effort"),
    ],
)
def test_bad_answers_name_their_reason(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    text, nonce = _solved(bits=12)
    bad_text, bad_nonce = mutate(text, nonce)
    with pytest.raises(pow_.ChallengeError) as info:
        pow_.check(KEY, bad_text, bad_nonce, "abc", NOW)
    assert info.value.reason == reason


def test_expired_wrong_space_and_under_current_effort() -> None:
    text, nonce = _solved()
    for kwargs, reason in (
        ({"space_id": "abc", "now_s": NOW + 61}, "expired"),
        ({"space_id": "other", "now_s": NOW}, "wrong-space"),
        ({"space_id": "abc", "now_s": NOW, "min_bits": 10}, "under-effort"),
    ):
        with pytest.raises(pow_.ChallengeError) as info:
            pow_.check(KEY, text, nonce, **kwargs)  # type: ignore[arg-type]
        assert info.value.reason == reason


def test_replay_is_refused_and_the_set_is_bounded() -> None:
    seen = pow_.SeenSet(max_items=3)
    challenges = [pow_.issue(KEY, "abc", 1, NOW, 60) for _ in range(5)]
    assert seen.add(challenges[0], NOW) and not seen.add(challenges[0], NOW)
    for c in challenges[1:]:
        assert seen.add(c, NOW)
    assert len(seen) == 3 and seen.evicted == 2
    # expired entries leave first
    assert seen.add(pow_.issue(KEY, "abc", 1, NOW + 100, 60), NOW + 100) and len(seen) == 1


def test_seen_mark() -> None:
    mark = pow_.mark(KEY, NOW, 60)
    assert pow_.mark_valid(KEY, mark, NOW + 59)
    assert not pow_.mark_valid(KEY, mark, NOW + 61)
    assert not pow_.mark_valid(b"o" * 32, mark, NOW)
    assert not pow_.mark_valid(KEY, mark.replace("seen.", "seen.9"), NOW)
    assert not pow_.mark_valid(KEY, None, NOW)


def _step(bits: int, joins: float, dropped: int = 0, queue: int = 0) -> int:
    return pow_.adjust(
        pow_.Effort(bits, calm=4),
        joins_per_s=joins,
        dropped=dropped,
        queue_len=queue,
        threshold_per_s=100,
        min_bits=12,
        start_bits=16,
        max_bits=20,
    ).bits


@pytest.mark.parametrize(
    ("bits", "joins", "dropped", "queue", "expected"),
    [
        (0, 50, 0, 0, 0),  # no pressure
        (0, 150, 0, 0, 16),  # pressure starts
        (0, 10, 3, 0, 16),  # drops start it too
        (16, 250, 0, 0, 17),  # far over: raise
        (16, 150, 2, 0, 17),  # drops: raise
        (20, 999, 9, 0, 20),  # capped
        (16, 150, 0, 0, 16),  # over, not dropping: hold
        (16, 40, 0, 5, 16),  # the line has not drained: hold
        (16, 40, 0, 0, 15),  # drained: lower
        (12, 40, 0, 0, 0),  # under the minimum: off
    ],
)
def test_effort_control(bits: int, joins: float, dropped: int, queue: int, expected: int) -> None:
    assert _step(bits, joins, dropped, queue) == expected


def test_effort_lowers_only_after_settling() -> None:
    effort = pow_.Effort(16)
    kwargs = {"joins_per_s": 1.0, "dropped": 0, "queue_len": 0, "threshold_per_s": 100}
    bounds = {"min_bits": 12, "start_bits": 16, "max_bits": 20, "settle_steps": 3}
    seen = []
    for _ in range(6):
        effort = pow_.adjust(effort, **kwargs, **bounds)  # type: ignore[arg-type]
        seen.append(effort.bits)
    assert seen == [16, 16, 15, 15, 15, 14]
