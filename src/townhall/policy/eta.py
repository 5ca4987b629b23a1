"""How long a place in line will wait: the one model the server's answers,
the waiting page (``web/static/js/queue.js``, the same arithmetic) and the
storm bench use.

The line runs in two regimes. While places are free, the pointer moves at
the admit rate ``a`` (places called per second), and places freeing
meanwhile (at ``d`` per second) add to them, so the free places last
``free / (a - d)`` seconds and ``free * a / (a - d)`` tickets are called at
``a``. After that the space is full and the line moves only as fast as
places free: ``d``, the line's measured speed while full (listeners leaving,
tokens expiring, places of tickets that never came given on; see
``policy.admission.advance``). ``a``, ``d`` and ``free`` are published in
queue.json, so every waiting client computes its own ETA from its position.

Until the full line has moved once, ``d`` is unknown, and so is any ETA
past the free places (None: the page says "waiting for a place to free"
instead of a number it cannot know).
"""

from __future__ import annotations


def eta_s(
    position: int | None,
    *,
    free_places: float,
    admit_rate_per_s: float,
    full_rate_per_s: float | None,
    lag_s: float = 0.0,
) -> float | None:
    """Seconds until ``position`` more tickets have been called (0 when it is
    one's turn already), plus ``lag_s`` (the caller's own delay in noticing:
    half a queue interval, its polling). None when it cannot be known: the
    line is behind a full space and no listener has left yet, or nothing
    moves."""
    if position is None:
        return None
    if position <= 0:
        return 0.0
    a = admit_rate_per_s
    d = None if full_rate_per_s is None else max(0.0, full_rate_per_s)
    if a <= 0:
        return None
    if d is not None and d >= a:
        return position / a + lag_s  # places free faster than they are called
    fill = max(0.0, free_places)
    if d:
        fill = fill * a / (a - d)  # tickets called at ``a`` before the space is full
    if position <= fill:
        return position / a + lag_s
    if not d:
        return None
    return fill / a + (position - fill) / d + lag_s
