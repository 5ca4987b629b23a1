"""Priority in a space's waiting line (issues 9 and 10): who is numbered
first among the arrivals of one short window.

The defense layer (``server/defense.py``) says what a join showed:

- ``returning``: a valid signed "seen before" mark (an earlier admission);
- ``solver``: it solved the proof-of-work challenge asked under pressure;
- ``normal``: nothing was asked (no pressure) and it has no mark;
- ``unsolved``: it was asked to solve and did not (a radio app, no JavaScript):
  never walled off, but behind everyone else of its window.

Within one arrival window the line numbers arrivals by :func:`rank`, then in
arrival order (``server/arrival_window.py``); across windows it stays first
come, first served, so a low priority delays by at most one window's
arrivals, never forever. Pure.
"""

from __future__ import annotations

from typing import Literal

from townhall.policy.admission import Decision, Kind

Priority = Literal["returning", "solver", "normal", "unsolved"]

_RANKS: dict[str, int] = {"returning": 0, "solver": 1, "normal": 1, "unsolved": 2}


def rank(priority: Priority) -> int:
    """Lower is numbered first."""
    return _RANKS[priority]


UNSOLVED = (
    "This space is under heavy load and your client did not solve the proof-of-work "
    "challenge, so you wait in line behind those who did: keep this ticket and come back "
    "when your turn comes (the listener page solves it for you in about a second)."
)


def held_back(decision: Decision, kind: Kind, priority: Priority, cap: int) -> Decision:
    """``decision`` for a join of a space with a line (``cap`` > 0), except that
    a new arrival that did not solve goes in line instead of straight in."""
    if cap > 0 and kind == "arrival" and priority == "unsolved" and decision.outcome == "admit":
        return Decision("queue", "unsolved", UNSOLVED, status=202)
    return decision
