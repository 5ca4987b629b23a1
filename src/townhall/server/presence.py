"""Who is listening now, on the server: join and the presence beat feed the
listener count through the sample of ``live.presence`` (every token in a room
of up to ``2 * presence_sample_target`` listeners; a fixed-size sample of a
bigger one), and state.json reads it back scaled.

Memory only, O(1) per beat: a hash of the token id, a dict lookup, a sketch
update.
"""

from __future__ import annotations

import time
from typing import Any

from townhall import metrics
from townhall.config import Settings
from townhall.live.presence import PresenceSampler, rank_of
from townhall.live.roomstate import ListenerCounter, ListenerSink

_BEAT_COUNTED = metrics.PRESENCE_BEATS.labels(outcome="counted")
_BEAT_OUTSIDE = metrics.PRESENCE_BEATS.labels(outcome="outside-sample")
_BEAT_NOT_LIVE = metrics.PRESENCE_BEATS.labels(outcome="not-live")


class Presence:
    def __init__(self, settings: Settings, listeners: ListenerSink, local: ListenerCounter) -> None:
        self.listeners = listeners
        self.local = local
        self.interval_s = round(settings.listener_presence_s / 3, 2)
        # a new level's key is read once every page in its band had a beat
        # interval to say so, plus one to learn the band (state.json, max-age 1)
        self.sampler = PresenceSampler(
            settings.presence_sample_target,
            settle_s=settings.listener_presence_s * 2 / 3,
            max_spaces=settings.rate_limit_max_keys,
        )

    def _add(self, space_id: str, token_id: str) -> bool:
        keys = self.sampler.keys_for(space_id, rank_of(token_id))
        for key in keys:
            self.listeners.add(key, token_id)
        return bool(keys)

    def admitted(self, space_id: str, token_id: str, counted: bool) -> dict[str, Any]:
        """After a join: count it (unless defense said not to), and the join
        answer's presence fields: beat every ``presence_interval_s`` while
        ``presence_rank < presence_sample`` (state.json carries the latter as
        it changes)."""
        if counted:
            self._add(space_id, token_id)
        return {
            "presence_interval_s": self.interval_s if counted else None,
            "presence_rank": rank_of(token_id),
            "presence_sample": self.sampler.beat_below(space_id),
        }

    def beat(self, space_id: str, token_id: str, live: bool) -> None:
        """A verified "still here" of a listener token."""
        if not live:
            _BEAT_NOT_LIVE.inc()
        elif self._add(space_id, token_id):
            _BEAT_COUNTED.inc()
        else:
            _BEAT_OUTSIDE.inc()  # a page beating outside the sample inflates nothing

    def count_key(self, space_id: str) -> str:
        return self.sampler.count_key(space_id, time.monotonic())[0]

    def estimate(self, space_id: str, raw: int) -> int:
        """The listener count from the raw distinct count of ``count_key``."""
        return self.sampler.observe(space_id, raw, time.monotonic())

    def local_count(self, space_id: str) -> int:
        """This node's own estimate (no level change), for the evidence."""
        key, scale = self.sampler.count_key(space_id, time.monotonic())
        return self.local.count(key) * scale
