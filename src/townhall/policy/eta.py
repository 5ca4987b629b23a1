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

Once enough listeners have left, ``d`` is the line's *settled* speed,
``cap / mean listening time`` (``settled_rate_per_s``, see below), not its
speed of the last seconds: the ETA is for a whole wait, and over a wait the
line runs at the settled speed, while its speed right after the cap fills
swings by tens of percent. Before that, ``d`` is the measured speed
(``full_rate_per_s``); until the full line has moved for a few seconds it is
unknown, and so is any ETA past the free places (None: the page says
"waiting for a place to free" instead of a number it cannot know).
"""

from __future__ import annotations

import math


def eta_s(
    position: int | None,
    *,
    free_places: float,
    admit_rate_per_s: float,
    full_rate_per_s: float | None,
    lag_s: float = 0.0,
    settled_rate_per_s: float | None = None,
    settling: bool = False,
) -> float | None:
    """Seconds until ``position`` more tickets have been called (0 when it is
    one's turn already), plus ``lag_s`` (the caller's own delay in noticing:
    half a queue interval, its polling). None when it cannot be known: the
    line is behind a full space and no listener has left yet, or nothing
    moves. ``settled_rate_per_s``, when known, is the full line's speed
    rather than ``full_rate_per_s``; ``settling``: it is being measured (every
    place of the cap was called from the line, too few have left yet), and
    ``full_rate_per_s`` is not used meanwhile (it then counts only called
    places nobody came for, which say nothing of how long listeners stay)."""
    if position is None:
        return None
    if position <= 0:
        return 0.0
    a = admit_rate_per_s
    rate = full_rate_per_s if settled_rate_per_s is None else settled_rate_per_s
    if settled_rate_per_s is None and settling:
        rate = None
    d = None if rate is None else max(0.0, rate)
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


# --- the settled speed (h10): how long admitted listeners stay ---
#
# A full space's line moves as fast as listeners leave. Right after the cap
# fills that speed swings (the first admitted all leave within a few seconds
# of each other, then their replacements do), so today's speed projected over
# a whole wait is wrong by tens of percent. What does not swing is the speed
# the line settles at: ``cap / mean listening time`` (Little's law). The
# listening time is measured without knowing who left: the places that free
# while the space is full are matched, first in first out, with the oldest
# calls of the line (the pointer's history, ``Knots``), and the time between
# that call and now is one sample. Whatever the real order of leaving, the
# mean of these samples is the mean listening time (every matching of the
# same calls and departures has the same total), and from the first
# departures on it is already about right when listeners stay about as long
# as each other. Until a cap's worth has left, the matched times are the
# first batch's shortest, so that batch's mean is extrapolated from their
# spread (h1-eta: ``batch_mean``; the age of the oldest calls still in, used
# before, first gave ETAs 30-40 % too short and then 15 % too long).

Knots = tuple[
    tuple[float, int], ...
]  # (time, pointer): at that time the line was called through it
MAX_KNOTS = 128  # beyond, every other knot goes (calls then look up to one knot later)


def called_at(knots: Knots, number: float) -> float | None:
    """When ticket ``number`` was called: the time of the first knot whose
    pointer reached it (None before the history)."""
    for at_s, through in knots:
        if through >= number:
            return at_s
    return None


def with_knot(knots: Knots, at_s: float, through: int, cap: int) -> Knots:
    """The history after the line was called through ``through`` at ``at_s``:
    only the calls that can still be matched with a departure are kept (those
    within ``cap`` of the pointer), thinned to at most ``MAX_KNOTS``."""
    out = [*knots, (at_s, through)] if not knots or knots[-1][1] != through else list(knots)
    while len(out) > 1 and out[0][1] <= through - cap:
        out.pop(0)
    if len(out) > MAX_KNOTS:
        out = [k for i, k in enumerate(out) if i % 2 == 1 or i == len(out) - 1]
    return tuple(out)


def listen_sample(
    knots: Knots, now_s: float, *, through: int, freed: int, cap: int
) -> tuple[float, int] | None:
    """The listening time of the ``freed`` places that freed while the space
    was full and the pointer stood at ``through``, and how many it stands
    for: they are matched with the calls ``through - cap + 1 ..
    through - cap + freed`` (at their middle). Calls numbered below 1 are
    places that were free before anyone was called (the cap filling, not a
    departure): no sample."""
    if freed <= 0 or cap <= 0:
        return None
    lo, hi = max(1, through - cap + 1), through - cap + freed
    if hi < lo:
        return None
    at_s = called_at(knots, (lo + hi) / 2)
    return None if at_s is None else (max(0.0, now_s - at_s), hi - lo + 1)


def settled_rate(
    cap: int,
    listen_sum: float,
    listen_n: float,
    next_age_s: float | None = None,
    *,
    matched: int = 0,
) -> float | None:
    """``cap / mean listening time``, once enough departures were matched
    (a tenth of the cap, at least 1, at most 20); None before.

    ``next_age_s``: how long ago the next call to be matched was made
    (:func:`next_age`); ``matched``: how many calls were matched so far (the
    pointer less the cap). Until a whole cap's worth has left, the times
    matched are the shortest of their batch (the first to go), so their mean
    alone is too short; the mean of the whole batch is then estimated from
    their spread so far (:func:`batch_mean`). After that the mean covers
    whole batches. ``listen_n`` decays by e^-1 per cap's worth of
    departures, so a cap's worth has left once it reaches
    ``cap * (1 - 1/e)``."""
    if cap <= 0 or listen_n < max(1.0, min(20.0, cap / 10)) or listen_sum <= 0:
        return None
    mean_s = listen_sum / listen_n
    if listen_n < cap * (1.0 - math.exp(-1.0)) and next_age_s is not None and 0 < matched < cap:
        mean_s = batch_mean(mean_s, matched / cap, next_age_s)
    return cap / mean_s if mean_s > 0 else None


# The share of a batch that must have left before its spread is extrapolated
# in full: the first few departures of a batch called over a few seconds come
# from its first calls, so their matched times rise faster than the batch's.
SPREAD_SHARE = 0.1


def batch_mean(mean_s: float, share: float, next_s: float) -> float:
    """The mean listening time of a whole batch when only its first
    ``share`` (0 < share < 1) has left: matched first in first out, the k-th
    departure is about the k-th shortest time, so the times matched so far
    (mean ``mean_s``, weighted e^-1 per cap's worth as the sums are) rise
    along the batch's quantile curve up to ``next_s`` (the next call's age,
    where the curve stands now). That curve is continued as a straight line
    to the whole batch, its slope shrunk while fewer than ``SPREAD_SHARE``
    have left. Exact when listening times are spread evenly (and when all
    stay the same); too short when a few stay very long (that tail is not
    seen yet), but less so than the times matched so far."""
    share = min(max(share, 1e-9), 1.0 - 1e-9)
    if share < 1e-6:
        centre = share / 2
    else:
        centre = ((share - 1.0) * math.exp(share) + 1.0) / (math.exp(share) - 1.0)
    slope = max(0.0, next_s - mean_s) / max(share - centre, 1e-12)
    slope *= min(1.0, share / SPREAD_SHARE)
    return mean_s + slope * (0.5 - centre)


def next_age(knots: Knots, now_s: float, *, through: int, cap: int) -> float | None:
    """How long ago the next call to be matched with a departure (the oldest
    still in, first in first out) was made; None while the cap's first places
    are not all taken from the line."""
    if cap <= 0 or through - cap + 1 < 1:
        return None
    at_s = called_at(knots, through - cap + 1)
    return None if at_s is None else max(0.0, now_s - at_s)
