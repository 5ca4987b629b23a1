"""Who may do what in a space: pure rules over (actor role, action, target role).

Roles, most powerful first: ``host`` (one, the creator), ``cohost`` (up to
``max_cohosts``), ``speaker`` (up to ``max_speakers``), ``listener``
(unlimited). A blocked account has no role (``None``) and may do nothing.

Co-hosts may do everything the host may, except end the space (and start it:
the space's life is the host's), and they cannot act on the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, get_args

from townhall.errors import Conflict, Forbidden

Role = Literal["host", "cohost", "speaker", "listener"]
ROLES: tuple[Role, ...] = get_args(Role)
STAGE_ROLES: frozenset[str] = frozenset({"host", "cohost", "speaker"})
MODERATORS: frozenset[str] = frozenset({"host", "cohost"})

Action = Literal[
    "join",
    "start",
    "end",
    "speaker_token",
    "request_to_speak",
    "list_requests",
    "approve_request",
    "deny_request",
    "invite",
    "mute",
    "unmute",
    "demote",
    "block",
]
ACTIONS: tuple[Action, ...] = get_args(Action)

# Actions that concern another account (the target).
TARGETED: frozenset[str] = frozenset(
    {"approve_request", "deny_request", "invite", "mute", "unmute", "demote", "block"}
)
# Targeted actions a stage member may also do to themself.
SELF_SERVICE: frozenset[str] = frozenset({"mute", "unmute", "demote"})


def can(
    actor: str | None, action: Action, target: str | None = None, *, is_self: bool = False
) -> bool:
    """Whether ``actor`` (a role, None when blocked) may do ``action`` on ``target``."""
    return _reason(actor, action, target, is_self) is None


def check(
    actor: str | None, action: Action, target: str | None = None, *, is_self: bool = False
) -> None:
    """Raise :class:`Forbidden` with a sentence when :func:`can` says no."""
    reason = _reason(actor, action, target, is_self)
    if reason is not None:
        raise Forbidden(reason)


def _reason(actor: str | None, action: Action, target: str | None, is_self: bool) -> str | None:
    if actor is None:
        return "You are blocked from this space."
    if action == "join":
        return None
    if action in ("start", "end"):
        return None if actor == "host" else f"Only the host can {action} this space."
    if action == "speaker_token":
        if actor in STAGE_ROLES:
            return None
        return "You are not on stage in this space; request to speak first."
    if action == "request_to_speak":
        return (
            None
            if actor == "listener"
            else "You are already on stage; there is nothing to request."
        )
    if action == "list_requests":
        return None if actor in MODERATORS else "Only the host and co-hosts can see requests."
    # Targeted actions from here on.
    if is_self and action in SELF_SERVICE:
        if actor not in STAGE_ROLES:
            return "You are not on stage in this space."
        if actor == "host" and action == "demote":
            return "The host cannot leave the stage; end the space instead."
        return None
    if is_self and action in ("block", "invite"):
        return f"You cannot {action} yourself."
    if actor not in MODERATORS:
        return "Only the host and co-hosts can do that."
    if target == "host":
        return "Nobody can do that to the host."
    if target is None and action == "block":
        return None
    if action in ("mute", "unmute", "demote") and target not in STAGE_ROLES:
        return "That account is not on stage."
    return None


def check_seat(
    role: str, occupied: Mapping[str, int], *, max_cohosts: int, max_speakers: int
) -> None:
    """Raise :class:`Conflict` when giving one more account ``role`` would
    exceed the space's seats. ``occupied`` counts accounts per role now
    (excluding the account being moved)."""
    if role == "cohost" and occupied.get("cohost", 0) >= max_cohosts:
        raise Conflict(
            f"This space already has {max_cohosts} co-hosts, the most allowed; "
            "move a co-host back first."
        )
    if role == "speaker" and occupied.get("speaker", 0) >= max_speakers:
        raise Conflict(
            f"This space already has {max_speakers} speakers, the most allowed; "
            "move a speaker back to the audience first."
        )
