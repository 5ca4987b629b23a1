"""Room state for listeners: ``/spaces/{id}/state.json``, and the in-memory
tallies behind it (listener count, reaction totals).

The document is computed at most once per ``state_interval_ms`` per space,
however many clients ask: the first request after it goes stale computes it,
concurrent requests await that same computation, and everyone else gets the
cached bytes with an ETag (``304`` on ``If-None-Match``) and a ``max-age`` of
the interval, so caches in front absorb the rest.

The listener count is approximate: a HyperLogLog sketch of the distinct
listener token ids seen on join or renewal (a renewal keeps its token id) over
the last one to two token lifetimes; memory is fixed per space whatever the
crowd (4 KiB per generation, about 1.6 % standard error).

With ``redis_url`` set, the count and the reaction totals are those of every
node, kept in Redis (``store/shared.py``); the tallies here then only hold
this node's own count, answered while Redis cannot be reached.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from townhall import metrics
from townhall.errors import NotFound
from townhall.live.program import state_fields
from townhall.server.auth import PROBLEM_SCHEMA
from townhall.store.recordings import RecordingStore

if TYPE_CHECKING:
    from townhall.server.services import Services

# ---------------------------------------------------------------- pure tallies


class ListenerSink(Protocol):
    """What join feeds (memory only, must not block): a listener token id seen."""

    def add(self, space_id: str, token_id: str) -> None: ...


class ReactionSink(Protocol):
    """What an accepted reaction feeds (memory only, must not block)."""

    def add(self, space_id: str, emoji: str) -> None: ...


HLL_BITS = 12
HLL_REGISTERS = 1 << HLL_BITS
_HLL_ALPHA = 0.7213 / (1 + 1.079 / HLL_REGISTERS)
_HLL_REST_BITS = 64 - HLL_BITS


def hll_estimate(registers: bytes | bytearray) -> int:
    """Cardinality estimate of a HyperLogLog register array (with the usual
    small-range correction)."""
    m = len(registers)
    harmonic = sum(2.0**-r for r in registers)
    estimate = _HLL_ALPHA * m * m / harmonic
    zeros = registers.count(0)
    if estimate <= 2.5 * m and zeros:
        estimate = m * math.log(m / zeros)
    return round(estimate)


class ListenerCounter:
    """Distinct listener token ids per space within the token lifetime.

    Two generations of registers per space: the current one takes new ids and
    becomes the previous one after ``ttl_s``; the count is their union, so an
    id is counted for between one and two lifetimes after it was last seen.
    """

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        # space_id -> [generation start, current registers, previous registers]
        self._spaces: dict[str, tuple[float, bytearray, bytearray]] = {}

    def _generation(self, space_id: str) -> tuple[float, bytearray, bytearray]:
        now = self._clock()
        gen = self._spaces.get(space_id)
        if gen is None or now - gen[0] >= 2 * self.ttl_s:
            gen = (now, bytearray(HLL_REGISTERS), bytearray(HLL_REGISTERS))
            self._spaces[space_id] = gen
        elif now - gen[0] >= self.ttl_s:
            gen = (now, bytearray(HLL_REGISTERS), gen[1])
            self._spaces[space_id] = gen
        return gen

    def add(self, space_id: str, token_id: str) -> None:
        value = int.from_bytes(hashlib.blake2b(token_id.encode(), digest_size=8).digest())
        index = value >> _HLL_REST_BITS
        rest = value & ((1 << _HLL_REST_BITS) - 1)
        rank = _HLL_REST_BITS - rest.bit_length() + 1
        registers = self._generation(space_id)[1]
        if registers[index] < rank:
            registers[index] = rank

    def count(self, space_id: str) -> int:
        if space_id not in self._spaces:
            return 0
        _, current, previous = self._generation(space_id)
        union = bytes(max(a, b) for a, b in zip(current, previous, strict=True))
        return hll_estimate(union)


class ReactionTotals:
    """Reaction totals per space since the process started (in memory)."""

    def __init__(self) -> None:
        self._totals: dict[str, Counter[str]] = {}

    def add(self, space_id: str, emoji: str) -> None:
        self._totals.setdefault(space_id, Counter())[emoji] += 1

    def totals(self, space_id: str) -> dict[str, int]:
        return dict(self._totals.get(space_id, {}))


@dataclass(frozen=True, slots=True)
class StateEntry:
    body: bytes
    etag: str
    computed_at: float


class StateCache:
    """One shared computation per space per interval (single flight)."""

    def __init__(
        self,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_spaces: int = 10_000,
    ) -> None:
        self.interval_s = interval_s
        self.max_spaces = max_spaces
        self._clock = clock
        self._entries: dict[str, StateEntry] = {}
        self._inflight: dict[str, asyncio.Future[StateEntry]] = {}

    async def get(self, space_id: str, compute: Callable[[], Awaitable[bytes]]) -> StateEntry:
        entry = self._entries.get(space_id)
        if entry is not None and self._clock() - entry.computed_at < self.interval_s:
            return entry
        pending = self._inflight.get(space_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[StateEntry] = asyncio.get_running_loop().create_future()
        self._inflight[space_id] = future
        try:
            body = await compute()
            entry = StateEntry(body, _etag(body), self._clock())
            if len(self._entries) >= self.max_spaces and space_id not in self._entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[space_id] = entry
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here so a lone computation logs no warning
            raise
        finally:
            del self._inflight[space_id]


def _etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


# ---------------------------------------------------------------- HTTP

router = APIRouter(tags=["listener"])

LISTENER_COUNT_METHOD = (
    "approximate: distinct listener token ids (a renewal keeps its id) seen on join or "
    "renewal during the last one to two token lifetimes, counted with a HyperLogLog "
    "sketch (about 1.6% error), on this node"
)
LISTENER_COUNT_METHOD_SHARED = (
    "approximate: distinct listener token ids (a renewal keeps its id) seen on join or "
    "renewal during the last one to two token lifetimes on every node, counted with a Redis "
    "HyperLogLog (about 0.81% error) and flushed by each node once per state interval; while "
    "Redis is unreachable, the last count read (or, if larger, this node's own count of the "
    "listeners it saw meanwhile)"
)


async def compute_state(services: Services, space_id: str) -> bytes:
    """The state.json document of one space (one database read for the stage)."""
    metrics.STATE_COMPUTED.inc()
    space = await services.spaces.get(space_id)
    members = await services.spaces.stage(space_id) if space.state != "ended" else []
    room = services.rooms.get(space_id)
    status = room.stage.speaker_status() if room is not None else {}
    speakers = []
    for member in members:
        st = status.get(member.account.id)
        speakers.append(
            {
                "account_id": member.account.id,
                "username": member.account.username,
                "display_name": member.account.display_name,
                "role": member.role,
                "muted": bool(st.muted) if st else False,
                "speaking": bool(st.speaking) if st else False,
                "level": round(float(st.level), 3) if st else 0.0,
                "connected": bool(st.connected) if st else False,
            }
        )
    if services.shared is not None:
        tally = await services.shared.read(space_id)
        listener_count, reactions = tally.listener_count, tally.reactions
        method = LISTENER_COUNT_METHOD_SHARED
    else:
        listener_count, reactions = _local_tallies(services, space_id)
        method = LISTENER_COUNT_METHOD
    doc = {
        "id": space.id,
        "title": space.title,
        "state": space.state,
        "speakers": speakers,
        "listener_count": listener_count,
        "listener_count_method": method,
        "reactions": reactions,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **await state_fields(
            room.program if room is not None else None,
            RecordingStore(services.settings.recordings_dir, space.id)
            if space.state == "ended"
            else None,
        ),
    }
    return orjson.dumps(doc)


def _local_tallies(services: Services, space_id: str) -> tuple[int, dict[str, int]]:
    listeners, reactions = services.listeners, services.reactions
    count = listeners.count(space_id) if isinstance(listeners, ListenerCounter) else 0
    totals = reactions.totals(space_id) if isinstance(reactions, ReactionTotals) else {}
    return count, totals


STATE_EXAMPLE = {
    "id": "abcdefghijkl",
    "title": "Town hall",
    "state": "live",
    "speakers": [
        {
            "account_id": "mnopqrstuvwx",
            "username": "ada",
            "display_name": "Ada",
            "role": "host",
            "muted": False,
            "speaking": True,
            "level": 0.31,
            "connected": True,
        }
    ],
    "listener_count": 1234,
    "listener_count_method": LISTENER_COUNT_METHOD,
    "reactions": {"👏": 12},
    "updated_at": "2026-11-20T23:46:16Z",
}

STATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "title",
        "state",
        "speakers",
        "listener_count",
        "listener_count_method",
        "reactions",
        "updated_at",
    ],
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "state": {"type": "string", "enum": ["scheduled", "live", "ended"]},
        "speakers": {"type": "array", "items": {"type": "object"}},
        "listener_count": {"type": "integer", "minimum": 0},
        "listener_count_method": {"type": "string"},
        "reactions": {"type": "object", "additionalProperties": {"type": "integer"}},
        "updated_at": {"type": "string"},
        "program": {
            "type": "object",
            "description": "The live program on this node: status ok, recovering (restarting after an encoder failure) or failed, with a sentence.",
            "properties": {"status": {"type": "string"}, "message": {"type": "string"}},
        },
        "recording": {
            "type": "object",
            "description": "The recording: status ok, failing (writes retried now), incomplete (part of the talk is missing: see missing) or failed, with a sentence.",
            "properties": {
                "status": {"type": "string"},
                "message": {"type": "string"},
                "missing_s": {"type": "number"},
                "missing": {"type": "array", "items": {"type": "object"}},
            },
        },
    },
}


@router.get(
    "/spaces/{space_id}/state.json",
    summary="Room state for listeners",
    description="Speakers, listener count and reaction totals; cacheable (max-age of the state interval, ETag).",
    response_class=Response,
    responses={
        200: {
            "description": "The room state.",
            "content": {"application/json": {"schema": STATE_SCHEMA, "example": STATE_EXAMPLE}},
        },
        304: {"description": "Not modified (If-None-Match matched the ETag)."},
        "default": {
            "description": "A problem.",
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        },
    },
)
async def state_json(space_id: str, request: Request) -> Response:
    services = cast("Services", request.app.state.services)
    if services.spaces.index.get(space_id) is None:
        raise NotFound(f"There is no space '{space_id}'; check the link.")
    entry = await services.state.get(space_id, lambda: compute_state(services, space_id))
    max_age = max(1, min(2, int(services.state.interval_s)))
    headers = {"Cache-Control": f"public, max-age={max_age}", "ETag": entry.etag}
    inm = request.headers.get("if-none-match")
    if inm is not None and (
        inm.strip() == "*" or entry.etag in {t.strip() for t in inm.split(",")}
    ):
        return Response(status_code=304, headers=headers)
    return Response(entry.body, media_type="application/json", headers=headers)
