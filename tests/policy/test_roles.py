"""Permission rules, table-driven: (actor, action, target, self?) -> allowed."""

from __future__ import annotations

import pytest

from townhall.errors import Conflict, Forbidden
from townhall.policy import roles

H, C, S, L, BLOCKED = "host", "cohost", "speaker", "listener", None

ALLOWED = [
    # actor, action, target, is_self
    (H, "start", None, False),
    (H, "end", None, False),
    (L, "join", None, False),
    (H, "speaker_token", None, False),
    (C, "speaker_token", None, False),
    (S, "speaker_token", None, False),
    (L, "request_to_speak", None, False),
    (H, "list_requests", None, False),
    (C, "list_requests", None, False),
    (C, "approve_request", L, False),
    (H, "deny_request", L, False),
    (H, "invite", L, False),
    (C, "invite", S, False),  # promote a speaker to co-host
    (C, "mute", S, False),
    (C, "mute", C, False),
    (H, "unmute", S, False),
    (S, "mute", S, True),
    (S, "unmute", S, True),
    (S, "demote", S, True),
    (C, "demote", C, True),
    (H, "mute", H, True),
    (C, "demote", S, False),
    (H, "demote", C, False),
    (C, "block", L, False),
    (C, "block", S, False),
    (H, "block", C, False),
    (C, "block", None, False),  # already blocked: idempotent
]

REFUSED = [
    (BLOCKED, "join", None, False, "blocked"),
    (BLOCKED, "request_to_speak", None, False, "blocked"),
    (BLOCKED, "speaker_token", None, False, "blocked"),
    (C, "end", None, False, "Only the host"),
    (C, "start", None, False, "Only the host"),
    (S, "end", None, False, "Only the host"),
    (L, "speaker_token", None, False, "not on stage"),
    (S, "request_to_speak", None, False, "already on stage"),
    (L, "list_requests", None, False, "host and co-hosts"),
    (S, "list_requests", None, False, "host and co-hosts"),
    (S, "approve_request", L, False, "host and co-hosts"),
    (L, "invite", L, False, "host and co-hosts"),
    (S, "mute", S, False, "host and co-hosts"),
    (L, "mute", H, False, "host and co-hosts"),
    (C, "mute", H, False, "to the host"),
    (C, "demote", H, False, "to the host"),
    (C, "block", H, False, "to the host"),
    (H, "demote", H, True, "cannot leave the stage"),
    (L, "mute", L, True, "not on stage"),
    (C, "mute", L, False, "not on stage"),
    (H, "block", H, True, "yourself"),
    (C, "invite", C, True, "yourself"),
]


@pytest.mark.parametrize(("actor", "action", "target", "is_self"), ALLOWED)
def test_allowed(
    actor: str | None, action: roles.Action, target: str | None, is_self: bool
) -> None:
    assert roles.can(actor, action, target, is_self=is_self)
    roles.check(actor, action, target, is_self=is_self)


@pytest.mark.parametrize(("actor", "action", "target", "is_self", "reason"), REFUSED)
def test_refused(
    actor: str | None, action: roles.Action, target: str | None, is_self: bool, reason: str
) -> None:
    assert not roles.can(actor, action, target, is_self=is_self)
    with pytest.raises(Forbidden, match=reason):
        roles.check(actor, action, target, is_self=is_self)


def test_every_action_has_a_rule_for_every_role() -> None:
    for action in roles.ACTIONS:
        for actor in (*roles.ROLES, None):
            roles.can(actor, action, "listener")  # never raises, always decides


@pytest.mark.parametrize(
    ("role", "occupied", "ok"),
    [
        ("speaker", {"speaker": 9}, True),
        ("speaker", {"speaker": 10}, False),
        ("speaker", {"speaker": 10, "cohost": 0}, False),
        ("cohost", {"cohost": 1, "speaker": 10}, True),
        ("cohost", {"cohost": 2}, False),
        ("listener", {"speaker": 99, "cohost": 99}, True),
    ],
)
def test_seats(role: str, occupied: dict[str, int], ok: bool) -> None:
    if ok:
        roles.check_seat(role, occupied, max_cohosts=2, max_speakers=10)
    else:
        with pytest.raises(Conflict, match="the most allowed"):
            roles.check_seat(role, occupied, max_cohosts=2, max_speakers=10)
