"""Room ownership: a lease in Redis with a fencing token.

A room's lease is one key, ``<prefix>lease:<space_id>``, whose value is the
holder's fencing token: ``<n>:<node_id>``, ``n`` from ``INCR`` on a counter
that never goes back (``<prefix>fence:<space_id>``). Taking the lease is
``SET NX PX`` and the ``INCR`` in one script; renewing and releasing check
the value first (a holder whose lease lapsed and was taken cannot renew or
release the new holder's). Every write on the segment bus carries the token
and is refused by the bus script unless it is still the lease's value, so a
stale owner (paused, cut off, or simply late) cannot write once another node
took the room, and stops (see ``live/scaleout.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local n = redis.call('INCR', KEYS[2])
local token = n .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def lease_key(prefix: str, space_id: str) -> str:
    return f"{prefix}lease:{space_id}"


def fence_key(prefix: str, space_id: str) -> str:
    return f"{prefix}fence:{space_id}"


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease this node holds (until it fails to renew it)."""

    space_id: str
    token: str

    @property
    def number(self) -> int:
        return int(self.token.split(":", 1)[0])


class Leases:
    """Room leases of one node. Methods raise the client's errors when Redis
    cannot answer; the caller decides (an owner that cannot renew stops
    before its lease would lapse)."""

    def __init__(self, redis: Any, *, prefix: str, node_id: str, ttl_ms: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.node_id = node_id
        self.ttl_ms = ttl_ms
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def key(self, space_id: str) -> str:
        return lease_key(self.prefix, space_id)

    async def acquire(self, space_id: str) -> Lease | None:
        """The lease if nobody holds it, with a fencing token higher than any
        before; None when another node holds it."""
        keys = [lease_key(self.prefix, space_id), fence_key(self.prefix, space_id)]
        token = await self._acquire(keys=keys, args=[self.node_id, self.ttl_ms])
        if token is None:
            return None
        return Lease(space_id, token.decode() if isinstance(token, bytes) else str(token))

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease; False when it lapsed (another node may hold it)."""
        done = await self._renew(keys=[self.key(lease.space_id)], args=[lease.token, self.ttl_ms])
        return bool(done)

    async def release(self, lease: Lease) -> bool:
        done = await self._release(keys=[self.key(lease.space_id)], args=[lease.token])
        return bool(done)

    async def holder(self, space_id: str) -> str | None:
        """The token of whoever holds the room now (``n:node_id``), or None."""
        value = await self.redis.get(self.key(space_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def holder_ttl(self, space_id: str) -> tuple[str | None, int]:
        """Who holds the room now and for how many more milliseconds (0: nobody).
        A node that sees a lease about to lapse tries to take it exactly then,
        not at its next round."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.key(space_id))
            pipe.pttl(self.key(space_id))
            value, ttl_ms = await pipe.execute()
        if value is None:
            return None, 0
        token = value.decode() if isinstance(value, bytes) else str(value)
        return token, max(0, int(ttl_ms))
