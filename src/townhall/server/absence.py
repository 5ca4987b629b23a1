"""Spaces nobody runs any more end by themselves: a live space whose host and
co-hosts have all been disconnected for ``host_absent_end_s`` is ended as if
the host had pressed End (the recording is published, listeners are switched
to the replay). Only the node that runs a space's room checks it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from townhall.policy.roles import MODERATORS
from townhall.server.services import Services

log = logging.getLogger("townhall.media")


class AbsenceClock:
    """When each space last had a host or co-host connected. Pure: fed by the watcher."""

    def __init__(self, absent_end_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.absent_end_s = absent_end_s
        self._clock = clock
        self._seen: dict[str, float] = {}

    def observe(self, space_id: str, present: bool) -> bool:
        """Record one check; True when the space should end now."""
        now = self._clock()
        if present or space_id not in self._seen:
            self._seen[space_id] = now
            return False
        return self.absent_end_s > 0 and now - self._seen[space_id] >= self.absent_end_s

    def keep_only(self, space_ids: Iterable[str]) -> None:
        keep = set(space_ids)
        for space_id in [s for s in self._seen if s not in keep]:
            del self._seen[space_id]


async def _moderator_connected(services: Services, space_id: str) -> bool:
    room = services.rooms.get(space_id)
    if room is None:
        return True
    connected = {a for a, s in room.stage.speaker_status().items() if s.connected}
    if not connected:
        return False
    members = await services.spaces.stage(space_id)
    return any(m.role in MODERATORS and m.account.id in connected for m in members)


async def end_abandoned_forever(services: Services) -> None:
    """The watcher task: check every ``host_absent_check_s``; never raises."""
    settings = services.settings
    clock = AbsenceClock(settings.host_absent_end_s)
    while True:
        await asyncio.sleep(settings.host_absent_check_s)
        ids = services.rooms.space_ids()
        clock.keep_only(ids)
        for space_id in ids:
            try:
                present = await _moderator_connected(services, space_id)
                if not clock.observe(space_id, present):
                    continue
                space = await services.spaces.get(space_id)
                if space.state != "live":
                    continue
                log.info(
                    "space %s: no host or co-host connected for %.0f s; ending it",
                    space_id,
                    settings.host_absent_end_s,
                )
                await services.spaces.end(space_id, space.host.id)
                await services.rooms.end(space_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # one space's failure must not stop the others' checks
                log.exception("absence check of space %s failed", space_id)
