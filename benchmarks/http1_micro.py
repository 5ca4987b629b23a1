#!/usr/bin/env python3
"""The HTTP/1.1 driver's own Python cost per fast answer, without sockets or
the kernel: keep-alive GETs fed to one Http1Protocol with a fake transport,
and a cProfile of the same loop (where the time goes).

    PYTHONPATH=src .venv/bin/python benchmarks/http1_micro.py --requests 200000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from townhall.config import Settings
from townhall.origin.http1 import protocol_for
from townhall.origin.rules import FastPath, Rendered

REQUEST = b"GET /spaces/abc/part/12.3.m4s HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"


class OnePart(FastPath):
    """Every request is the same pre-rendered part (what the memo gives)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, lambda _: None)
        self.answer = Rendered(
            200, b"content-type: video/iso.segment\r\ncontent-length: 4096\r\n", b"x" * 4096, "part"
        )

    def decide(self, method: bytes, path: bytes, query: bytes | None) -> Any:
        return self.answer


class Transport:
    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else None

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


async def run(requests: int, profile: bool) -> float:
    settings = Settings(data_dir=Path(tempfile.gettempdir()) / "http1-micro")
    cls = protocol_for(OnePart(settings), settings)
    config = SimpleNamespace(loaded=True, loaded_app=None, limit_concurrency=None, root_path="")
    state = SimpleNamespace(connections=set(), tasks=set(), total_requests=0,
                            default_headers=[(b"date", b"Tue, 01 Dec 2026 09:00:00 GMT")])  # fmt: skip
    proto = cls(config=config, server_state=state, app_state={})
    transport = Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    feed = proto.data_received
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    t0 = time.perf_counter()
    for _ in range(requests):
        feed(REQUEST)
    elapsed = time.perf_counter() - t0
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(14)
    assert state.total_requests == requests
    return 1e6 * elapsed / requests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200_000)
    args = ap.parse_args()
    us = asyncio.run(run(args.requests, profile=False))
    print(f"{us:.2f} us of Python per fast answer (no profiler), {args.requests} requests")
    asyncio.run(run(args.requests // 4, profile=True))


if __name__ == "__main__":
    main()
