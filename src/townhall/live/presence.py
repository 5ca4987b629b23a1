"""Sampled presence beats: a big audience says "still here" through a fixed-size
sample, so the beat rate of a space stays bounded whatever its size.

Every listener token has a rank in [0, 1), a hash of its id independent of the
HyperLogLog's. At sample level ``L`` only ranks below ``2**-L`` beat and are
counted, under the counter key ``<space>~L`` (the bare space id at level 0),
and the count is that key's distinct count times ``2**L``. A count of ``n``
sampled listeners out of ``N`` has a relative standard error of about
``sqrt((1 - p) / (N p))`` (binomial) on top of the sketch's own.

The level of a space follows its sampled count with a factor-4 hysteresis:
above ``2 * target`` or below ``target / 2`` it moves (in one step) to the
level whose sample is about ``target``, so at most ``2 * target`` tokens per space beat (plus the
sampling's spread). At level 0 nothing changes: every page beats and a leave
shows within the presence window. A room stays at level 0 until it passes
``2 * target`` listeners, and a room that grew past it comes back to level 0
once it is below ``target`` again.

A change of level is never a jump in the count: the new level's key fills
beside the old one (beats in the wider band go to both), and the count reads
the old key until the new one has been filled for ``settle_s`` (a beat
interval for every page in the band to say so, plus one for pages to learn a
wider band from state.json). A key that started empty then holds exactly who
said so since, so it is read as soon as every page had its turn.

Pure: the caller passes the clock and the raw counts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

MAX_LEVEL = 30  # 2**-30: a billion listeners per sampled one, far past any room
_PERSON = b"th-presence-v1"  # keeps the rank independent of the sketch's hash


def rank_of(token_id: str) -> float:
    """The sampling rank of a token id, uniform in [0, 1)."""
    digest = hashlib.blake2b(token_id.encode(), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest) / 2.0**64


def key_of(space_id: str, level: int) -> str:
    """The counter key of a space at a sample level."""
    return space_id if level == 0 else f"{space_id}~{level}"


@dataclass(slots=True)
class _Level:
    active: int = 0
    pending: int | None = None
    since_s: float = 0.0


class PresenceSampler:
    """The sample level of every space (memory: one small record per space
    whose level is not 0, bounded by ``max_spaces``)."""

    def __init__(self, target: int, settle_s: float, *, max_spaces: int = 100_000) -> None:
        self.target = target  # 0: never sample
        self.settle_s = settle_s
        self.max_spaces = max_spaces
        self._levels: dict[str, _Level] = {}

    def level(self, space_id: str) -> int:
        rec = self._levels.get(space_id)
        return rec.active if rec is not None else 0

    def beat_below(self, space_id: str) -> float:
        """Tokens whose rank is below this beat (1.0: every token)."""
        rec = self._levels.get(space_id)
        if rec is None:
            return 1.0
        low = rec.active if rec.pending is None else min(rec.active, rec.pending)
        return 2.0**-low

    def keys_for(self, space_id: str, rank: float) -> list[str]:
        """The counter keys a beat of this rank goes to (none: outside the sample)."""
        rec = self._levels.get(space_id)
        if rec is None:
            return [space_id]
        keys = [key_of(space_id, rec.active)] if rank < 2.0**-rec.active else []
        if rec.pending is not None and rank < 2.0**-rec.pending:
            keys.append(key_of(space_id, rec.pending))
        return keys

    def count_key(self, space_id: str, now_s: float) -> tuple[str, int]:
        """(the key to read the count from, its scale 2**level); settles a
        pending level whose key has filled for ``settle_s``."""
        rec = self._levels.get(space_id)
        if rec is None:
            return space_id, 1
        if rec.pending is not None and now_s - rec.since_s >= self.settle_s:
            rec.active, rec.pending = rec.pending, None
            if rec.active == 0:
                del self._levels[space_id]
                return space_id, 1
        return key_of(space_id, rec.active), 1 << rec.active

    def observe(self, space_id: str, raw: int, now_s: float) -> int:
        """The estimated count from the active key's ``raw`` distinct count;
        starts a change of level when ``raw`` left the band."""
        rec = self._levels.get(space_id)
        active = rec.active if rec is not None else 0
        estimate = raw << active
        if self.target <= 0 or (rec is not None and rec.pending is not None):
            return estimate
        if not (raw > 2 * self.target or (raw < self.target / 2 and active > 0)):
            return estimate
        # straight to the level that brings the sample back to about target
        wanted = active + round(math.log2(raw / self.target)) if raw > 0 else 0
        wanted = min(MAX_LEVEL, max(0, wanted))
        if wanted == active:
            return estimate
        if rec is None:
            if len(self._levels) >= self.max_spaces:
                return estimate  # bounded: this space is counted unsampled
            rec = self._levels[space_id] = _Level()
        rec.pending, rec.since_s = wanted, now_s
        return estimate

    def relative_error(self, space_id: str, estimate: int) -> float:
        """The sampling's relative standard error at this estimate (0 at level 0)."""
        p = 2.0 ** -self.level(space_id)
        if p >= 1.0 or estimate <= 0:
            return 0.0
        return math.sqrt((1 - p) / (estimate * p))
