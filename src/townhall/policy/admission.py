"""Admission: who may listen now, who waits in line, who is refused and why.

Pure: no I/O, no clock (times are arguments). The adapters
(``store/admission.py`` counts, ``server/api_spaces.py`` answers) feed it.

The line of a space is a sequence of numbered places and one pointer,
``through``: every ticket numbered at or below it has had its turn called.
The pointer moves (:func:`advance`, once per queue interval, one node at a
time) by at most ``admit_rate_per_s`` places per second and only as far as
places are free; each move opens a *batch* of places reserved for the
tickets it called. A called ticket has ``claim_s`` to come and exchange its
ticket for a listener token; after that its batch closes and the unclaimed
places go to the next in line (so a place whose holder went away is given on
within ``claim_s`` plus one interval). A ticket that comes back later, while
still valid, enters at the next free place before anyone new.

Arrivals before a scheduled start take numbers in arrival order, but those
numbers are shuffled when the space goes live (:func:`number_of`, a keyed
permutation of the ``lottery`` first arrivals): the fastest click does not
win. After the start it is first come, first served.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, replace
from typing import Literal

from townhall.policy.eta import Knots, listen_sample, next_age, settled_rate, with_knot

Outcome = Literal["admit", "queue", "refuse"]
Delivery = Literal["llhls", "hls"]
Phase = Literal["closed", "waiting_room", "open"]
Kind = Literal["renewal", "arrival", "ticket"]

# Time constant of the observed admission speed.
SPEED_TAU_S = 5.0
# Time constant of the line's measured speed while the space is full (the
# ETA's second regime, policy/eta.py), and the share of it observed before the
# speed is published (about 3 s: a first reading on the ramp of the first
# leaves would make every ETA given then several times too long).
FULL_TAU_S = 10.0
FULL_MIN_WEIGHT = 1.0 - math.exp(-2.5 / FULL_TAU_S)  # 3 intervals of 1 s, with room for rounding
_STARTED = 1e-12  # the weight once the full line first moved (that move is not a sample)

DEGRADED = (
    "This server's low-latency listeners are at their limit, so you are listening with "
    "a few seconds more delay (plain HLS)."
)


@dataclass(frozen=True, slots=True)
class Batch:
    """Places ``lo < n <= hi`` called at ``at_s``; ``claimed`` of them came."""

    at_s: float
    lo: int
    hi: int
    claimed: int = 0

    @property
    def open_places(self) -> int:
        return self.hi - self.lo - self.claimed


@dataclass(frozen=True, slots=True)
class QueueState:
    """One space's line. ``issued``: numbers handed out; ``through``: the
    highest called; ``lottery``: how many arrived before the start (None until
    it went live); ``speed_per_s``: observed places called per second."""

    issued: int = 0
    through: int = 0
    lottery: int | None = None
    carry: float = 0.0
    last_s: float | None = None
    speed_per_s: float = 0.0
    batches: tuple[Batch, ...] = ()
    released: int = 0  # called places never claimed, given on to the next in line
    version: int = 0  # how many times the line was moved; a newer state has a higher one
    # The line's speed while the space is full (places freed per second:
    # listeners leaving, tokens expiring, called places given on), the ETA's
    # second regime (policy/eta.py): a bias-corrected EWMA, divide by the weight,
    # which stays 0 until the full line first moved (unknown before).
    full_rate_per_s: float = 0.0
    full_weight: float = 0.0
    free: int = 0  # places free after the last tick's calls (0 with no cap)
    # The settled speed (policy/eta.py): the pointer's recent history and the
    # listening times measured from it (a sum and a count, both decaying by
    # e^-1 per cap's worth of departures, so about the last cap's worth count).
    knots: Knots = ()
    listen_sum_s: float = 0.0
    listen_n: float = 0.0
    cap: int = 0  # the cap of the last tick

    @property
    def settled_rate(self) -> float | None:
        """``cap / mean listening time`` once enough listeners have left a
        full space; None before."""
        age = None
        if self.last_s is not None:
            age = next_age(self.knots, self.last_s, through=self.through, cap=self.cap)
        return settled_rate(
            self.cap, self.listen_sum_s, self.listen_n, age, matched=self.through - self.cap
        )

    @property
    def settling(self) -> bool:
        """The settled speed is being measured: every place of the cap was
        called from the line, and too few have left yet to know it."""
        return self.cap > 0 and self.through >= self.cap and self.settled_rate is None

    @property
    def full_rate(self) -> float | None:
        """Places called per second lately while the space was full; None
        until a place freed in a full space."""
        if self.full_weight < FULL_MIN_WEIGHT:
            return None
        return max(0.0, self.full_rate_per_s / self.full_weight)

    @property
    def reserved(self) -> int:
        """Places called and not claimed yet (in open batches)."""
        return sum(b.open_places for b in self.batches)

    @property
    def waiting(self) -> int:
        """Numbers handed out whose turn has not been called."""
        return max(0, self.issued - self.through)

    def batch_of(self, number: int) -> Batch | None:
        for batch in self.batches:
            if batch.lo < number <= batch.hi:
                return batch
        return None

    def claimed(self, number: int) -> QueueState:
        """This state after ticket ``number`` claimed its reserved place."""
        batches = tuple(
            replace(b, claimed=b.claimed + 1) if b.lo < number <= b.hi else b for b in self.batches
        )
        return replace(self, batches=batches)


def advance(
    state: QueueState,
    now_s: float,
    *,
    cap: int,
    admitted: int,
    rate_per_s: float,
    claim_s: float,
    live: bool,
) -> QueueState:
    """The line one interval later: closed batches dropped, the pointer moved
    over as many places as are free and the rate allows (at most two seconds'
    worth at once, so a quiet spell does not turn into a burst)."""
    last_s = now_s if state.last_s is None else state.last_s
    dt_s = max(0.0, now_s - last_s)
    if not live:
        return replace(
            state,
            last_s=now_s,
            carry=0.0,
            version=state.version + 1,
            free=0 if cap <= 0 else max(0, cap - admitted),
        )
    lottery = state.issued if state.lottery is None else state.lottery
    batches = tuple(b for b in state.batches if b.at_s > now_s - claim_s and b.open_places > 0)
    released = state.released + sum(
        b.open_places for b in state.batches if b.at_s <= now_s - claim_s
    )
    reserved = sum(b.open_places for b in batches)
    free = math.inf if cap <= 0 else max(0, cap - admitted - reserved)
    allowance = min(state.carry + rate_per_s * dt_s, max(1.0, 2.0 * rate_per_s))
    if state.lottery is None:
        allowance = max(allowance, 1.0)  # the first listener at the start does not wait a tick
    k = int(min(free, math.floor(allowance), state.issued - state.through))
    k = max(k, 0)
    if k:
        batches = (*batches, Batch(now_s, state.through, state.through + k))
    speed = state.speed_per_s
    # the speed of the line, measured only while someone waits (an empty line
    # moves at the pace of arrivals, which says nothing about the next wait)
    if dt_s > 0 and k < state.issued - state.through:
        alpha = 1.0 - math.exp(-dt_s / SPEED_TAU_S)
        speed += alpha * (k / dt_s - speed)
    # ... and its speed while the space is full: free places, not the rate,
    # bound this move and people still wait after it
    full_rate, full_weight = state.full_rate_per_s, state.full_weight
    bound = free < math.floor(allowance) and k < state.issued - state.through
    if dt_s > 0 and bound and full_weight > 0:
        beta = 1.0 - math.exp(-dt_s / FULL_TAU_S)
        full_rate += beta * (k / dt_s - full_rate)
        full_weight += beta * (1.0 - full_weight)
    elif bound and k > 0:
        full_weight = _STARTED  # its interval began before places freed: measure from here
    # ... and how long listeners stay: each place freed in a full space is
    # matched with the oldest call still in (policy/eta.py)
    listen_sum, listen_n = state.listen_sum_s, state.listen_n
    sample = None
    if bound:
        sample = listen_sample(state.knots, now_s, through=state.through, freed=k, cap=cap)
    if sample is not None:
        listen_s, n = sample
        decay = math.exp(-n / cap)
        listen_sum = listen_sum * decay + n * listen_s
        listen_n = listen_n * decay + n
    knots = state.knots if cap <= 0 else with_knot(state.knots, now_s, state.through + k, cap)
    return QueueState(
        issued=state.issued,
        through=state.through + k,
        lottery=lottery,
        carry=allowance - k,
        last_s=now_s,
        speed_per_s=speed,
        batches=batches,
        released=released,
        version=state.version + 1,
        free=0 if cap <= 0 else int(free) - k,
        full_rate_per_s=full_rate,
        full_weight=full_weight,
        knots=knots,
        listen_sum_s=listen_sum,
        listen_n=listen_n,
        cap=max(0, cap),
    )


def newest(cached: QueueState | None, loaded: QueueState) -> QueueState:
    """The view of a line to keep when ``loaded`` arrives while ``cached`` is
    held: never an older version (a slow read must not move the pointer back,
    or a ticket whose turn was published would be told to wait again); for the
    same version, the larger counts of numbers issued and places claimed (both
    only grow within a version)."""
    if cached is None or loaded.version > cached.version:
        return loaded
    if loaded.version < cached.version:
        return cached
    claims = {b.lo: b.claimed for b in cached.batches}
    batches = tuple(replace(b, claimed=max(b.claimed, claims.get(b.lo, 0))) for b in loaded.batches)
    return replace(loaded, issued=max(loaded.issued, cached.issued), batches=batches)


def may_have_called(
    state: QueueState, number: int | None, now_s: float, *, rate_per_s: float, slack_s: float
) -> bool:
    """Whether ticket ``number`` may have been called (or the draw made) by a
    newer state than ``state``, which was written at ``state.last_s``: the
    pointer moves by at most the carried allowance plus ``rate_per_s`` per
    second, plus one place at the draw. ``slack_s`` covers clocks of nodes
    that disagree and a read in flight. A ticket farther back needs no read."""
    if number is None or state.lottery is None or number <= state.through:
        return True
    age_s = max(0.0, now_s - (now_s if state.last_s is None else state.last_s)) + slack_s
    reach = max(1.0, 2.0 * rate_per_s) + rate_per_s * age_s + 1.0
    return number - state.through <= reach


def phase_of(
    state: Literal["scheduled", "live", "ended"],
    scheduled_for_s: float | None,
    now_s: float,
    open_s: float,
) -> Phase:
    """Whether a space takes arrivals: a scheduled space opens its waiting
    room ``open_s`` before its start time (and keeps it open until the host
    goes live); a live or ended space is open."""
    if state != "scheduled":
        return "open"
    if scheduled_for_s is not None and now_s < scheduled_for_s - open_s:
        return "closed"
    return "waiting_room"


def number_of(index: int, lottery: int | None, key: bytes) -> int | None:
    """The place in line of arrival ``index``: arrivals after the start keep
    their index; the ``lottery`` arrivals before it are shuffled by a keyed
    permutation of 1..lottery (None: not drawn yet, the space is not live)."""
    if lottery is None:
        return None
    if index > lottery:
        return index
    return shuffle(index, lottery, key)


def shuffle(index: int, size: int, key: bytes) -> int:
    """A keyed permutation of 1..size (a balanced Feistel network over the
    next even power of two, cycle-walking back into range)."""
    if not 1 <= index <= size:
        raise ValueError(f"index {index} is outside 1..{size}")
    if size == 1:
        return 1
    bits = max(2, (size - 1).bit_length())
    bits += bits % 2
    half = bits // 2
    mask = (1 << half) - 1
    x = index - 1
    while True:
        left, right = x >> half, x & mask
        for round_ in range(4):
            digest = hmac.new(key, b"%d:%d" % (round_, right), hashlib.sha256).digest()
            left, right = right, left ^ (int.from_bytes(digest[:8], "big") & mask)
        x = (left << half) | right
        if x < size:
            return x + 1


# ---------------------------------------------------------------- the cap of a space

# A cap a host may ask for on a deployment without one.
MAX_SPACE_CAP = 10_000_000


def space_cap(ceiling: int, own: int | None) -> int:
    """The cap a space runs with (0: no limit): the host's own when set, never
    above the deployment's ``ceiling``; else the deployment's."""
    if own is None or own <= 0:
        return ceiling
    return own if ceiling <= 0 else min(own, ceiling)


def cap_problem(value: int | None, ceiling: int) -> str | None:
    """Why a host's ``max_listeners`` is refused (None: it is fine)."""
    field = "Field 'max_listeners'"
    if value is None:
        return None
    if value < 0:
        return (
            f"{field} is negative: give a number of listeners, or null for this server's default."
        )
    if ceiling > 0 and (value == 0 or value > ceiling):
        return (
            f"{field} is {value:,}, but this server admits at most {ceiling:,} listeners per "
            f"space: give 1 to {ceiling:,}, or null for {ceiling:,}."
        )
    if value > MAX_SPACE_CAP:
        return f"{field} is {value:,}: give at most {MAX_SPACE_CAP:,}, or 0 for no limit."
    return None


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the counters say. A cap or budget of 0 means no limit."""

    space_cap: int
    space_admitted: int
    node_cap: int = 0
    node_admitted: int = 0
    llhls_budget: int = 0
    node_llhls: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    code: str  # machine-readable reason
    detail: str  # the sentence a person reads
    delivery: Delivery = "llhls"
    status: int = 200


def decide(
    kind: Kind,
    capacity: Capacity,
    line: QueueState,
    *,
    phase: Phase,
    number: int | None = None,
) -> Decision:
    """Admit, queue or refuse one join.

    ``kind``: a renewal of a valid listener token, a new arrival, or a valid
    ticket whose place in line is ``number`` (None before the draw).
    Renewals are always admitted (a lowered cap or a full node never cuts off
    someone listening); nobody new passes anyone waiting in line.
    """
    if kind == "renewal":
        return Decision("admit", "renewal", "Your listener token is renewed.")
    cap = capacity.space_cap
    if capacity.node_cap > 0 and capacity.node_admitted >= capacity.node_cap:
        return Decision(
            "refuse",
            "node_full",
            "This server is at its listener capacity; try again in a few seconds "
            "(another server of this deployment may have room).",
            status=503,
        )
    if cap > 0 and phase == "closed":
        return Decision(
            "refuse",
            "not_open",
            "The waiting room of this space is not open yet; come back shortly before it starts.",
            status=503,
        )
    if cap > 0 and phase == "waiting_room":
        return _queued(
            "before_start",
            "The space has not started: everyone who arrives before the start is given a "
            "place in a random order when it starts.",
        )
    free = cap <= 0 or capacity.space_admitted + line.reserved < cap
    if kind == "ticket":
        if cap > 0:
            if number is None:
                return _queued("not_drawn", "Your place in line is drawn when the space starts.")
            if number > line.through:
                return _queued(
                    "not_your_turn",
                    f"Your turn has not come yet: you are number {number - line.through:,} in line.",
                )
            batch = line.batch_of(number)
            reserved = batch is not None and batch.open_places > 0
            if not (reserved and capacity.space_admitted < cap) and not free:
                return _queued(
                    "next", "Your turn came while you were away: you are next when a place frees."
                )
        return _admitted(capacity, "ticket", "Your turn has come: welcome in.")
    if cap > 0 and (line.waiting > 0 or not free):
        return _queued(
            "full", "This space is full: you have a place in line and will be let in by turn."
        )
    return _admitted(capacity, "admitted", "Welcome in.")


def _queued(code: str, detail: str) -> Decision:
    return Decision("queue", code, detail, status=202)


def _admitted(capacity: Capacity, code: str, detail: str) -> Decision:
    if capacity.llhls_budget > 0 and capacity.node_llhls >= capacity.llhls_budget:
        return Decision("admit", code, DEGRADED, delivery="hls")
    return Decision("admit", code, detail)
