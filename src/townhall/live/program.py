"""STUB (to be replaced by the listener plane): a program that drops its frames.
Keeps the contract of docs/CONTRACTS.md."""

from __future__ import annotations

import numpy as np

from townhall.config import Settings


class Program:
    def __init__(self, space_id: str, settings: Settings) -> None:
        self.space_id = space_id
        self.settings = settings

    async def start(self) -> None:
        pass

    def push_frame(self, pcm: np.ndarray) -> None:
        pass

    async def finish(self) -> None:
        pass

    async def suspend(self) -> None:
        pass
