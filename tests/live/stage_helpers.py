"""Helpers for Stage tests: a stage whose sink records program frames, and
short-lived aiortc speaker peers in the same event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from townhall.client.speak import PcmTrack, SpeakerClient
from townhall.config import Settings
from townhall.live.stage import Stage
from townhall.media import signals

N = 960


class Sink:
    """Records every program frame the stage hands out."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def __call__(self, pcm: np.ndarray) -> None:
        assert pcm.dtype == np.int16 and pcm.shape == (N,)
        self.frames.append(pcm)

    def since(self, index: int) -> np.ndarray:
        return np.concatenate(self.frames[index:]) if self.frames[index:] else np.zeros(0)


def stage_settings(tmp_path: Any, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)


@asynccontextmanager
async def running_stage(settings: Settings) -> AsyncIterator[tuple[Stage, Sink]]:
    sink = Sink()
    stage = Stage("spacetest0001", settings, sink=sink)
    await stage.start()
    try:
        yield stage, sink
    finally:
        await stage.stop()


@asynccontextmanager
async def speaker(
    stage: Stage,
    account_id: str,
    pcm: np.ndarray | None = None,
    *,
    role: str = "speaker",
    wait_connected: bool = True,
) -> AsyncIterator[SpeakerClient]:
    """A speaker peer publishing ``pcm`` (looped; silence if None)."""
    source = PcmTrack(pcm if pcm is not None else np.zeros(N, dtype=np.int16), loop=True)
    client = SpeakerClient(source)
    try:
        await client.connect(lambda sdp, type_: stage.accept_offer(account_id, role, sdp, type_))
        if wait_connected:
            await asyncio.wait_for(client.connected.wait(), 10)
        yield client
    finally:
        await client.close()


def tone(freq_hz: float) -> np.ndarray:
    return signals.tone(freq_hz, 1.0, amplitude=0.3)


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    """Poll ``predicate`` until true (a liveness wait, not a speed assertion)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)
