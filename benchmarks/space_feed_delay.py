#!/usr/bin/env python3
"""How long a space change takes from one node's feed to another's index
(``store/space_feed.py``): two feeds on one Redis, ``--changes`` changes
published one after another by the first, each timed until the second has
applied it. Loopback only; bounded in count and time; its own key prefix.

    PYTHONPATH=src python benchmarks/space_feed_delay.py [--changes 200] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

from townhall.config import Settings
from townhall.store.shared import connect
from townhall.store.space_feed import SpaceFeed, connect_subscriber
from townhall.store.space_index import IndexEntry, SpaceIndex

REDIS = os.environ.get("TOWNHALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
EACH_TIMEOUT_S = 5.0


async def run(changes: int, redis_url: str) -> list[float]:
    prefix = f"townhall-bench-feed:{secrets.token_hex(6)}:"
    applied: dict[str, float] = {}
    feeds: list[SpaceFeed] = []
    with tempfile.TemporaryDirectory(prefix="townhall-feed-") as tmp:
        try:
            for name in ("a", "b"):
                settings = Settings(data_dir=Path(tmp), redis_url=redis_url, redis_prefix=prefix)
                feed = SpaceFeed(
                    connect(settings),
                    connect_subscriber(settings, prefix + name),
                    SpaceIndex(),
                    prefix=prefix,
                    node=name,
                    on_applied=lambda s: applied.setdefault(s, time.perf_counter()),
                    on_gap=lambda: None,
                )
                feed.start()
                await feed.wait_subscribed(5)
                feeds.append(feed)
            delays = []
            for i in range(changes):
                space_id = f"s{i}"
                sent = time.perf_counter()
                feeds[0].publish(space_id, IndexEntry("live", "public"))
                while space_id not in applied:
                    if time.perf_counter() - sent > EACH_TIMEOUT_S:
                        raise RuntimeError(f"change {i} not applied within {EACH_TIMEOUT_S} s")
                    await asyncio.sleep(0)
                delays.append((applied[space_id] - sent) * 1000)
                await asyncio.sleep(0.01)
        finally:
            for feed in feeds:
                await feed.close()
                await feed.redis.aclose()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--redis-url", default=REDIS)
    args = parser.parse_args()
    delays = sorted(asyncio.run(run(args.changes, args.redis_url)))

    def at(q: float) -> float:
        return delays[min(len(delays) - 1, int(q * len(delays)))]

    print(
        f"changes {len(delays)}: p50 {at(0.5):.2f} ms, p90 {at(0.9):.2f} ms, "
        f"p99 {at(0.99):.2f} ms, max {delays[-1]:.2f} ms; load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
