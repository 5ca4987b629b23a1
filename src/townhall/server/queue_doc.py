"""The queue document of a space (``/spaces/{id}/queue.json``): the line as
of its last tick, rendered once per tick into the same bytes for everyone
(what every waiting client computes its position and ETA from; see
docs/CONTRACTS.md, "Client rule"). Pure: state in, bytes and ETag out."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from townhall.config import Settings
from townhall.policy.admission import QueueState
from townhall.store.space_index import IndexEntry


@dataclass(frozen=True, slots=True)
class QueueDoc:
    body: bytes
    etag: str


def render_queue_doc(
    space_id: str,
    entry: IndexEntry,
    line: QueueState,
    *,
    cap: int,
    admitted: int,
    settings: Settings,
    now: float,
) -> QueueDoc:
    """queue.json for ``line`` at ``now`` (epoch seconds); ``cap`` is the
    space's cap now (0: no limit), ``admitted`` its admitted count."""
    full_rate = line.full_rate
    settled = line.settled_rate if cap > 0 else None
    doc = {
        "space_id": space_id,
        "state": entry.state,
        "max_listeners": cap,
        "admitted": admitted,
        "admitting_through": line.through,
        "issued": line.issued,
        "waiting": line.waiting,
        # what a client needs for its own ETA (policy/eta.py; queue.js)
        "admit_rate_per_s": settings.admit_rate_per_s,
        "free_places": line.free if cap > 0 else None,
        "full_rate_per_s": None if full_rate is None else round(full_rate, 3),
        "line_rate_per_s": round(line.speed_per_s, 2),
        "settled_rate_per_s": None if settled is None else round(settled, 3),
        "mean_listen_s": None if settled is None else round(cap / settled, 1),
        "settling": cap > 0 and line.settling,
        "max_admit_rate_per_s": settings.admit_rate_per_s,
        "drawn": line.lottery is not None,
        "drawn_count": line.lottery,
        "opens_at": iso(
            None
            if entry.scheduled_for_s is None
            else entry.scheduled_for_s - settings.waiting_room_open_s
        ),
        "starts_at": iso(entry.scheduled_for_s),
        "released_places": line.released,
        "claim_s": settings.ticket_claim_s,
        "interval_ms": settings.queue_interval_ms,
        "updated_at": iso(now),
    }
    body = orjson.dumps(doc)
    return QueueDoc(body, '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"')


def iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
