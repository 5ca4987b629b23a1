"""A small ASGI app and servers around it for the HTTP/1.1 driver's tests: the
driver (origin/http1.py) and, for byte comparisons, uvicorn's own httptools
protocol, both on this test's loop."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from tests.conftest import free_port
from townhall.config import Settings
from townhall.origin.http1 import protocol_for


class App:
    """Routes: /echo (the body back, Content-Length), /sha (sha256 of the
    body), /stream (chunks, no length), /raise, /raise-after, /hold (waits for
    http.disconnect), /hello (a fixed 200)."""

    def __init__(self) -> None:
        self.calls = 0
        self.disconnects = 0
        self.held = asyncio.Event()

    async def body(self, receive: Any) -> bytes:
        data = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                raise ConnectionError("client gone")
            data += message.get("body", b"")
            if not message.get("more_body"):
                return data

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            return
        self.calls += 1
        path = scope["path"]
        if path == "/echo":
            data = await self.body(receive)
            await self.respond(send, data, [(b"x-method", scope["method"].encode())])
        elif path == "/sha":
            data = await self.body(receive)
            await self.respond(send, hashlib.sha256(data).hexdigest().encode())
        elif path == "/stream":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            for i in range(5):
                await send(
                    {"type": "http.response.body", "body": b"piece %d\n" % i, "more_body": True}
                )
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b""})
        elif path == "/raise":
            raise RuntimeError("boom before the answer")
        elif path == "/raise-after":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"10")],
                }
            )
            await send({"type": "http.response.body", "body": b"12345", "more_body": True})
            raise RuntimeError("boom mid-answer")
        elif path == "/hold":
            self.held.set()
            try:
                await self.body(receive)
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.disconnects += 1
            except ConnectionError:
                pass
        elif path == "/scope":
            info = f"{scope['path']}|{scope['raw_path']!r}|{scope['query_string']!r}|{scope['http_version']}|{scope['client'][0]}|{scope['scheme']}"
            await self.respond(send, info.encode())
        else:
            await self.respond(send, b"hello\n", status=200 if path == "/hello" else 404)

    async def respond(
        self,
        send: Any,
        body: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        status: int = 200,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"Content-Type", b"text/plain"),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def server(app: Any, http: Any, **config: Any) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=free_port(),
            log_level="warning",
            lifespan="off",
            http=http,
            **config,
        )
    )


@asynccontextmanager
async def running(*servers: uvicorn.Server) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    try:
        for _ in range(1000):
            if all(s.started for s in servers):
                break
            for task in tasks:
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError("a server stopped before it started")
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("the servers did not start within 10 s")
        yield
    finally:
        for s in servers:
            s.should_exit = True
        await asyncio.gather(*tasks)


def driver(app: Any, settings: Settings, **config: Any) -> uvicorn.Server:
    """``app`` behind townhall's driver, without a fast path."""
    return server(app, protocol_for(None, settings), **config)


def port_of(s: uvicorn.Server) -> int:
    return int(s.config.port)
