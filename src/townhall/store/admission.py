"""Admission counters: who holds a live listener token, which ticket numbers
have been used, and each space's line (``policy.admission.QueueState``).

Two stores with the same methods: :class:`MemoryAdmission` (one node) and
:class:`RedisAdmission` (every node of a deployment, through Redis).

"Admitted" is counted exactly: one entry per listener token id with the
token's expiry (a Redis ZSET scored by expiry, pruned with ZREMRANGEBYSCORE
before each count; in memory a dict and a heap). A renewal moves the expiry, a
leave removes the entry at once, a listener who stops renewing drops out when
the token expires. The count is the true number of unexpired tokens, so the
only overcount is listeners who left without saying so, for at most one token
lifetime. Admitting is one atomic step (Lua: prune, count, add if under the
limit), so concurrent joins on many nodes never go past the cap.

Used ticket numbers are kept until the ticket would have expired anyway
(after that it is refused as expired), so the set is bounded by the tickets
exchanged within one ticket lifetime.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import orjson

from townhall.policy.admission import Batch, QueueState


class ExpirySet:
    """Ids with an expiry; ``count`` forgets the expired ones first."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def add(self, item: str, expires_s: float) -> None:
        self._expiry[item] = expires_s
        heapq.heappush(self._heap, (expires_s, item))
        if len(self._heap) > 2 * len(self._expiry) + 64:  # renewals leave stale heap entries
            self._heap = [(e, i) for i, e in self._expiry.items()]
            heapq.heapify(self._heap)

    def discard(self, item: str) -> None:
        self._expiry.pop(item, None)

    def __contains__(self, item: str) -> bool:
        return item in self._expiry

    def get(self, item: str) -> float | None:
        return self._expiry.get(item)

    def prune(self, now_s: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now_s:
            expires_s, item = heapq.heappop(heap)
            if self._expiry.get(item) == expires_s:
                del self._expiry[item]

    def count(self, now_s: float) -> int:
        self.prune(now_s)
        return len(self._expiry)


Advance = Callable[[QueueState, int], QueueState]


class AdmissionStore(Protocol):
    async def issue(self, space_id: str) -> int:
        """The next arrival number of the space (from 1)."""
        ...

    async def admit(
        self, space_id: str, token_id: str, expires_s: float, now_s: float, limit: int
    ) -> bool:
        """Count the token as admitted if fewer than ``limit`` are (0: no limit)."""
        ...

    async def renew(self, space_id: str, token_id: str, expires_s: float) -> None: ...
    async def leave(self, space_id: str, token_id: str) -> None: ...
    async def count(self, space_id: str, now_s: float) -> int: ...

    async def use(self, space_id: str, number: int, until_s: float, now_s: float) -> bool:
        """Mark ticket ``number`` used; False if it already was."""
        ...

    async def unuse(self, space_id: str, number: int) -> None: ...
    async def is_used(self, space_id: str, number: int) -> bool: ...
    async def claim(self, space_id: str, batch_lo: int) -> None:
        """A called ticket of the batch starting after ``batch_lo`` came in."""
        ...

    async def load(self, space_id: str) -> QueueState: ...
    async def snapshot(self, space_id: str, now_s: float) -> tuple[QueueState, int]:
        """The line and the admitted count, read at one instant."""
        ...

    async def tick(
        self, space_id: str, now_s: float, step: Advance, *, draw: bool = False
    ) -> QueueState | None:
        """Apply ``step(state, admitted)`` if no other node did this interval;
        the new state, or None when another node holds the turn or moved the
        line first (a state is never written over a newer one). ``draw``:
        the draw at go-live, which does not wait for the interval's turn
        (the write's compare-and-set lets exactly one node draw); None when
        the line is drawn already."""
        ...


class MemoryAdmission:
    """All of it in this process (one node)."""

    def __init__(self) -> None:
        self._admitted: dict[str, ExpirySet] = {}
        self._used: dict[str, ExpirySet] = {}
        self._lines: dict[str, QueueState] = {}

    def _set(self, table: dict[str, ExpirySet], space_id: str) -> ExpirySet:
        found = table.get(space_id)
        if found is None:
            found = table[space_id] = ExpirySet()
        return found

    async def issue(self, space_id: str) -> int:
        line = self._lines.get(space_id, QueueState())
        self._lines[space_id] = replace(line, issued=line.issued + 1)
        return line.issued + 1

    async def admit(
        self, space_id: str, token_id: str, expires_s: float, now_s: float, limit: int
    ) -> bool:
        admitted = self._set(self._admitted, space_id)
        if limit > 0 and token_id not in admitted and admitted.count(now_s) >= limit:
            return False
        admitted.add(token_id, expires_s)
        return True

    async def renew(self, space_id: str, token_id: str, expires_s: float) -> None:
        self._set(self._admitted, space_id).add(token_id, expires_s)

    async def leave(self, space_id: str, token_id: str) -> None:
        self._set(self._admitted, space_id).discard(token_id)

    async def count(self, space_id: str, now_s: float) -> int:
        return self._set(self._admitted, space_id).count(now_s)

    async def use(self, space_id: str, number: int, until_s: float, now_s: float) -> bool:
        used = self._set(self._used, space_id)
        used.prune(now_s)
        if str(number) in used:
            return False
        used.add(str(number), until_s)
        return True

    async def unuse(self, space_id: str, number: int) -> None:
        self._set(self._used, space_id).discard(str(number))

    async def is_used(self, space_id: str, number: int) -> bool:
        return str(number) in self._set(self._used, space_id)

    async def claim(self, space_id: str, batch_lo: int) -> None:
        line = self._lines.get(space_id)
        if line is not None:
            batches = tuple(
                replace(b, claimed=b.claimed + 1) if b.lo == batch_lo else b for b in line.batches
            )
            self._lines[space_id] = replace(line, batches=batches)

    async def load(self, space_id: str) -> QueueState:
        return self._lines.get(space_id, QueueState())

    async def snapshot(self, space_id: str, now_s: float) -> tuple[QueueState, int]:
        return await self.load(space_id), await self.count(space_id, now_s)

    async def tick(
        self, space_id: str, now_s: float, step: Advance, *, draw: bool = False
    ) -> QueueState | None:
        if draw and (await self.load(space_id)).lottery is not None:
            return None
        state = step(*await self.snapshot(space_id, now_s))
        self._lines[space_id] = state
        return state


# ---------------------------------------------------------------- Redis

_ADMIT_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local limit = tonumber(ARGV[4])
if limit > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

_USE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return added
"""

# KEYS: the line's hash, its claims; ARGV: the version the new state was
# computed from, the keys' TTL, how many closed batches, their ``lo``s, then
# the new state's fields as name/value pairs. 0 if another tick wrote first.
_WRITE_LUA = """
if tonumber(redis.call('HGET', KEYS[1], 'version') or '0') ~= tonumber(ARGV[1]) then return 0 end
local gone = tonumber(ARGV[3])
for i = 4, 3 + gone do redis.call('HDEL', KEYS[2], ARGV[i]) end
for i = 4 + gone, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""

# Keys of a space's line live this long after their last write.
KEY_TTL_MS = 6 * 3600 * 1000


class RedisAdmission:
    """The same through Redis, shared by every node. Methods raise the Redis
    client's errors (``policy.ratelimit.STORE_ERRORS``); the caller decides
    what to do without Redis."""

    def __init__(self, redis: Any, *, prefix: str, tick_ms: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._tick_ms = tick_ms
        self._admit = redis.register_script(_ADMIT_LUA)
        self._use = redis.register_script(_USE_LUA)
        self._write = redis.register_script(_WRITE_LUA)

    def _key(self, space_id: str, part: str) -> str:
        return f"{self._prefix}adm:{space_id}:{part}"

    async def issue(self, space_id: str) -> int:
        return int(await self._redis.hincrby(self._key(space_id, "q"), "issued", 1))

    async def admit(
        self, space_id: str, token_id: str, expires_s: float, now_s: float, limit: int
    ) -> bool:
        ok = await self._admit(
            keys=[self._key(space_id, "in")],
            args=[token_id, repr(expires_s), repr(now_s), str(limit), str(KEY_TTL_MS)],
        )
        return bool(int(ok))

    async def renew(self, space_id: str, token_id: str, expires_s: float) -> None:
        await self._redis.zadd(self._key(space_id, "in"), {token_id: expires_s})

    async def leave(self, space_id: str, token_id: str) -> None:
        await self._redis.zrem(self._key(space_id, "in"), token_id)

    async def count(self, space_id: str, now_s: float) -> int:
        key = self._key(space_id, "in")
        pipe = self._redis.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now_s)
        pipe.zcard(key)
        return int((await pipe.execute())[1])

    async def use(self, space_id: str, number: int, until_s: float, now_s: float) -> bool:
        added = await self._use(
            keys=[self._key(space_id, "used")],
            args=[str(number), repr(until_s), repr(now_s), str(KEY_TTL_MS)],
        )
        return bool(int(added))

    async def unuse(self, space_id: str, number: int) -> None:
        await self._redis.zrem(self._key(space_id, "used"), str(number))

    async def is_used(self, space_id: str, number: int) -> bool:
        return await self._redis.zscore(self._key(space_id, "used"), str(number)) is not None

    async def claim(self, space_id: str, batch_lo: int) -> None:
        await self._redis.hincrby(self._key(space_id, "c"), str(batch_lo), 1)

    async def load(self, space_id: str) -> QueueState:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._key(space_id, "q"))
        pipe.hgetall(self._key(space_id, "c"))
        raw, claims = await pipe.execute()
        return _state_from(raw, claims)

    async def snapshot(self, space_id: str, now_s: float) -> tuple[QueueState, int]:
        key = self._key(space_id, "in")
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._key(space_id, "q"))
        pipe.hgetall(self._key(space_id, "c"))
        pipe.zremrangebyscore(key, "-inf", now_s)
        pipe.zcard(key)
        raw, claims, _, count = await pipe.execute()
        return _state_from(raw, claims), int(count)

    async def tick(
        self, space_id: str, now_s: float, step: Advance, *, draw: bool = False
    ) -> QueueState | None:
        lock = self._key(space_id, "tick")
        # one node per interval moves the pointer (a little less than the interval,
        # so that the same node can take the next turn on time); the draw does
        # not wait for the turn: the regular tick that holds it may have run
        # just before go-live, and would draw up to an interval late
        if not draw and not await self._redis.set(
            lock, "1", nx=True, px=max(1, self._tick_ms * 9 // 10)
        ):
            return None
        state, admitted = await self.snapshot(space_id, now_s)
        if draw and state.lottery is not None:
            return None  # another node drew
        new = step(state, admitted)
        # The lock is only a courtesy: a tick slower than the lock's lifetime (a
        # loaded machine) overlaps the next node's. The write is therefore a
        # compare-and-set on the version it was computed from, so a late tick
        # never writes an older line over a newer one (the pointer never moves
        # back, the draw happens once).
        gone = sorted({b.lo for b in state.batches} - {b.lo for b in new.batches})
        fields = [x for pair in _fields_of(new).items() for x in pair]
        written = await self._write(
            keys=[self._key(space_id, "q"), self._key(space_id, "c")],
            args=[str(state.version), str(KEY_TTL_MS), str(len(gone)), *map(str, gone), *fields],
        )
        return new if int(written) else None


def _fields_of(state: QueueState) -> dict[str, str]:
    """Everything but ``issued`` (nodes add to it concurrently) and the
    claims (kept in a hash of their own, counted by HINCRBY)."""
    return {
        "through": str(state.through),
        "lottery": "" if state.lottery is None else str(state.lottery),
        "carry": repr(state.carry),
        "last_s": "" if state.last_s is None else repr(state.last_s),
        "speed": repr(state.speed_per_s),
        "released": str(state.released),
        "batches": orjson.dumps([[b.at_s, b.lo, b.hi] for b in state.batches]).decode(),
        "version": str(state.version),
        "full_rate": repr(state.full_rate_per_s),
        "full_weight": repr(state.full_weight),
        "free": str(state.free),
        "knots": orjson.dumps(state.knots).decode(),
        "listen_sum": repr(state.listen_sum_s),
        "listen_n": repr(state.listen_n),
        "cap": str(state.cap),
    }


def _state_from(raw: dict[Any, Any], claims: dict[Any, Any]) -> QueueState:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    claimed = {int(_text(k)): int(v) for k, v in claims.items()}
    batches = tuple(
        Batch(float(at), int(lo), int(hi), claimed.get(int(lo), 0))
        for at, lo, hi in orjson.loads(fields.get("batches") or "[]")
    )
    return QueueState(
        issued=int(fields.get("issued") or 0),
        through=int(fields.get("through") or 0),
        lottery=int(fields["lottery"]) if fields.get("lottery") else None,
        carry=float(fields.get("carry") or 0.0),
        last_s=float(fields["last_s"]) if fields.get("last_s") else None,
        speed_per_s=float(fields.get("speed") or 0.0),
        batches=batches,
        released=int(fields.get("released") or 0),
        version=int(fields.get("version") or 0),
        full_rate_per_s=float(fields.get("full_rate") or 0.0),
        full_weight=float(fields.get("full_weight") or 0.0),
        free=int(fields.get("free") or 0),
        knots=tuple((float(at), int(n)) for at, n in orjson.loads(fields.get("knots") or "[]")),
        listen_sum_s=float(fields.get("listen_sum") or 0.0),
        listen_n=float(fields.get("listen_n") or 0.0),
        cap=int(fields.get("cap") or 0),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
