"""What the segment bus adds, part by part: the same blocking playlist reload
(the next part) sent at once to the room's node and to a follower; the
difference of their answer times is the part's delay through the bus
(Redis write, XREAD, replay), independent of any player's start phase."""

from __future__ import annotations

import asyncio
import re
import time

import httpx

from townhall.bench.bursts import stats_row

_PART = re.compile(r'#EXT-X-PART:[^\n]*URI="part/(\d+)\.(\d+)\.m4s"')

BAR_BUS_ADDED_S = 0.1  # issue 11: the bus adds at most 100 ms


async def _answered_at(http: httpx.AsyncClient, space_id: str, msn: int, part: int) -> float:
    r = await http.get(
        f"/spaces/{space_id}/live.m3u8", params={"_HLS_msn": msn, "_HLS_part": part}, timeout=15
    )
    r.raise_for_status()
    return time.monotonic()


async def part_delays(
    owner: httpx.AsyncClient, follower: httpx.AsyncClient, space_id: str, parts: int
) -> dict[str, object]:
    """``parts`` consecutive parts: follower answer time minus owner answer
    time, as a latency row (``bus_part_delay``)."""
    delays: list[float] = []
    text = (await owner.get(f"/spaces/{space_id}/live.m3u8")).text
    found = _PART.findall(text)
    if not found:
        return stats_row("bus_part_delay", [], parts, BAR_BUS_ADDED_S)
    msn, index = (int(x) for x in found[-1])
    for _ in range(parts):
        index += 1  # a part index past the segment's last is the next segment's first
        t_owner, t_follower = await asyncio.gather(
            _answered_at(owner, space_id, msn, index),
            _answered_at(follower, space_id, msn, index),
        )
        delays.append(t_follower - t_owner)
        text = (await owner.get(f"/spaces/{space_id}/live.m3u8")).text
        found = _PART.findall(text)
        msn, index = (int(x) for x in found[-1])
    return stats_row("bus_part_delay", delays, parts, BAR_BUS_ADDED_S)
