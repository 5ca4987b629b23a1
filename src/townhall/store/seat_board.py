"""A live room's seats as its owner publishes them, in Redis beside the
room's bus keys (``<prefix>bus:<space_id>:seats``, a hash): the document of
``live/seats.py`` (``doc``), the lease token it was written under (``token``)
and when, by Redis's own clock (``t``, ms), so every node judges its age by
one clock whatever their own say.

A write is one script that first checks the writer's token against the
room's lease (``store/lease.py``): a node that lost the room cannot
overwrite the new owner's seats. The hash lives ``bus_ttl_s`` after its last
write, like the bus, so a node that takes the room over still finds the last
mutes. A read is one round trip (TIME, the hash, the lease's value).
Methods raise the client's errors when Redis cannot answer; callers decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from townhall import metrics
from townhall.store.bus_redis import stream_key
from townhall.store.lease import lease_key

_PUBLISH = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'token', ARGV[1], 't', ms)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class SeatRead:
    """One read of a room's published seats (``SeatBoard.read``): the
    document (None: nothing published), its age by Redis's clock, the
    lease token it was written under and the lease's value now (None: nobody
    holds the room)."""

    raw: bytes | None
    age_ms: int | None
    writer_token: str
    holder_token: str | None


def seats_key(prefix: str, space_id: str) -> str:
    return f"{stream_key(prefix, space_id)}:seats"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SeatBoard:
    """Publishes and reads rooms' seats (see the module docstring)."""

    def __init__(self, redis: Any, *, prefix: str, ttl_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._publish = redis.register_script(_PUBLISH)

    async def publish(self, space_id: str, token: str, doc: bytes) -> bool:
        """Write ``doc`` under lease ``token``; False (counted) when the token
        is not the room's lease any more."""
        keys = [seats_key(self.prefix, space_id), lease_key(self.prefix, space_id)]
        written = bool(await self._publish(keys=keys, args=[token, doc, self.ttl_s]))
        metrics.SEATS_PUBLISHED.labels(outcome="written" if written else "fenced").inc()
        return written

    async def read(self, space_id: str) -> SeatRead:
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hmget(seats_key(self.prefix, space_id), "doc", "token", "t")
        pipe.get(lease_key(self.prefix, space_id))
        (seconds, micros), (doc, token, written_ms), holder = await pipe.execute()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        age_ms = None if written_ms is None else max(0, now_ms - int(written_ms))
        return SeatRead(
            raw=None if doc is None else bytes(doc),
            age_ms=age_ms,
            writer_token="" if token is None else _text(token),
            holder_token=None if holder is None else _text(holder),
        )
