"""The primary's uvicorn server with the socket listener workers hand their
connections to (origin/handoff.py; HTTP workers without Redis, server/local_bus.py).

An adopted connection gets the protocol uvicorn builds for the primary's own
port (``config.http_protocol_class`` with the server's ``config``,
``server_state`` and the lifespan's ``app_state``), so it is one of the
server's connections: counted, capped, shut down with the others. The socket
opens once the app has started and closes first at shutdown (a worker then
passes requests on over HTTP, whose retry rules apply while the primary is
away)."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from townhall.config import Settings
from townhall.origin.handoff import HANDOFF_FILE, HIGH_WATER_BYTES, HandoffReceiver, HandoffSender


class PrimaryServer(uvicorn.Server):
    """uvicorn's server plus the handoff socket under ``DATA_DIR/run``."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings
        self.receiver: HandoffReceiver | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        self.receiver = HandoffReceiver(
            self.settings.data_dir / HANDOFF_FILE,
            self._protocol,
            self.settings.http_max_head_bytes + HIGH_WATER_BYTES,
        )
        self.receiver.start()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.receiver is not None:
            self.receiver.close()
            self.receiver = None
        await super().shutdown(sockets=sockets)

    def _protocol(self, preread: bytes) -> Any:
        protocol: Any = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        protocol.preread = preread
        return protocol


def handoff_sender(settings: Settings) -> HandoffSender:
    """A listener worker's end of the primary's handoff socket."""
    return HandoffSender(settings.data_dir / HANDOFF_FILE, settings.handoff_timeout_ms / 1000)
