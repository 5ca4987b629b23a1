"""STUB (to be replaced by the speaker plane): a stage with no speakers whose
clock feeds silence. Keeps the contract of docs/CONTRACTS.md."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from townhall.config import Settings
from townhall.errors import ServiceUnavailable


@dataclass(frozen=True, slots=True)
class SpeakerStatus:
    connected: bool
    muted: bool
    speaking: bool
    level: float


class Stage:
    def __init__(
        self, space_id: str, settings: Settings, sink: Callable[[np.ndarray], None]
    ) -> None:
        self.space_id = space_id
        self.settings = settings
        self.sink = sink

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def accept_offer(
        self, account_id: str, role: str, sdp: str, type_: str
    ) -> tuple[str, str]:
        raise ServiceUnavailable("Speaking is not available on this server yet.")

    def speaker_status(self) -> dict[str, SpeakerStatus]:
        return {}

    async def set_muted(self, account_id: str, muted: bool) -> None:
        pass

    async def disconnect(self, account_id: str) -> None:
        pass
