"""`townhall serve` with two HTTP workers on its embedded default: a listener
worker hands a connection whose first request it would pass on to the
primary (origin/handoff.py), which serves it from then on with the client's
own address; loopback's X-Forwarded-For counts only with the local secret.

Which worker the kernel gives a connection is not ours to choose
(SO_REUSEPORT): each case is tried on new connections until the primary's
``townhall_handoffs_total{outcome="adopted"}``, read on its own loopback port
(no handoff there), says one of them came through the listener worker; every
try must be answered right wherever it landed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Api, LiveServer
from tests.scale.test_bus_nodes import PART_URI, playlist, speaker_token, until_tone
from tests.scale.test_three_nodes_nginx import SpeakBot
from tests.test_end_to_end import TONE_HZ
from townhall.media.signals import tone, write_wav

pytestmark = [pytest.mark.slow]

PER_NETWORK = 4  # open connections per client network
SIGNUPS = 3  # sign-ups per network and minute
EMBEDDED = {
    "TOWNHALL_DATABASE_URL": "",
    "TOWNHALL_REDIS_URL": "",
    "TOWNHALL_BUS_ENABLED": "false",
    "TOWNHALL_HTTP_WORKERS": "2",
    "TOWNHALL_HTTP_MAX_CONNECTIONS_PER_NETWORK": str(PER_NETWORK),
    "TOWNHALL_SIGNIN_PER_NETWORK_PER_MIN": str(SIGNUPS),
    # every try below asks for a playlist from 127.0.0.1: not what is tested here
    "TOWNHALL_PLAYLISTS_PER_NETWORK_PER_10S": "100000",
}
CLIENT = "127.0.1.5"  # a loopback address of a network of its own (127.0.1.0/24)


def primary_url(data_dir: Path) -> str:
    return str(json.loads((data_dir / "run" / "primary.json").read_text())["url"])


async def counter(url: str, name: str, label: str) -> float:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(url + "/metrics")).text
    found = re.search(rf"^{name}\{{{label}\}} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def adopted(url: str) -> float:
    return await counter(url, "townhall_handoffs_total", 'outcome="adopted"')


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (Content-Length or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = b""
    return status, headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: townhall\r\n\r\n".encode()


async def until_handed(primary: str, case: Callable[[], Awaitable[None]], tries: int = 24) -> None:
    """Run ``case`` on new connections until one was handed to the primary."""
    for _ in range(tries):
        before = await adopted(primary)
        await case()
        if await adopted(primary) > before:
            return
    raise AssertionError(f"none of {tries} connections went through the listener worker")


async def test_a_listener_worker_hands_connections_to_the_primary(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data", extra_env=EMBEDDED)
    server.start(timeout_s=120)
    wav = tmp_path / "tone.wav"
    write_wav(wav, tone(TONE_HZ, 1.0, amplitude=0.3))
    bot: SpeakBot | None = None
    try:
        primary = primary_url(server.data_dir)
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
            _, headers = await Api(http).account("host")
            space_id = (await Api(http).space(headers, title="Handed over"))["id"]
            bot = SpeakBot(server.url, space_id, await speaker_token(http, space_id, headers), wav)
            await until_tone(http, space_id, 60)
            for _ in range(8):  # the listener worker follows the room once asked
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as fresh:
                    await playlist(fresh, space_id)
            await asyncio.sleep(1.0)
            part = f"/spaces/{space_id}/" + PART_URI.findall(await playlist(http, space_id))[-3]
            expected_part = (await http.get(part)).content
        state = f"/spaces/{space_id}/state.json"

        async def keep_alive() -> None:
            # an API call first, then the fast path and the API again on that connection
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                for path in ("/healthz", part, state, f"/spaces/{space_id}/live.m3u8", "/healthz"):
                    writer.write(get(path))
                    status, found, body = await read_response(reader)
                    assert status == 200, (path, status, body[:300])
                    assert "via" not in found  # not relayed over loopback HTTP
                    if path == part:
                        assert body == expected_part
            finally:
                writer.close()

        async def parts_first() -> None:
            # the listener plane first (answered where it landed), then the API:
            # handed over at that later request too, not relayed over HTTP
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                for path in (part, f"/spaces/{space_id}/live.m3u8", "/healthz", state, part):
                    writer.write(get(path))
                    status, found, body = await read_response(reader)
                    assert status == 200, (path, status, body[:300])
                    assert "via" not in found, path  # not relayed over loopback HTTP
                    if path == part:
                        assert body == expected_part
            finally:
                writer.close()

        async def pipelined() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(get("/healthz") + get(state) + get(part) + get("/healthz"))
                answers = [await read_response(reader) for _ in range(4)]
                assert [a[0] for a in answers] == [200] * 4, [a[:2] for a in answers]
                assert answers[2][2] == expected_part
                assert isinstance(json.loads(answers[1][2]), dict)
            finally:
                writer.close()

        names = iter(range(1000))

        async def late_body() -> None:
            # the head alone first (handed over), the body once the primary has it
            body = json.dumps({"username": f"late{next(names)}", "password": Api.PASSWORD})
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(
                    b"POST /api/accounts HTTP/1.1\r\nHost: townhall\r\n"
                    b"Content-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                )
                await writer.drain()
                await asyncio.sleep(0.3)
                writer.write(body.encode())
                status, _, answer = await read_response(reader)
                assert status in (201, 429), (status, answer[:300])  # 429: the network's sign-ups
            finally:
                writer.close()

        await until_handed(primary, keep_alive)
        await until_handed(primary, pipelined)
        await until_handed(primary, parts_first)
        await until_handed(primary, late_body)

        # the primary counts a handed connection against the client's own
        # network: of connections held open from one network, PER_NETWORK are
        # served wherever they landed, the rest refused
        before = await adopted(primary)
        held: list[asyncio.StreamWriter] = []
        served = 0
        try:
            for _ in range(PER_NETWORK * 2):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", server.port, local_addr=(CLIENT, 0)
                )
                held.append(writer)
                writer.write(get("/healthz"))
                try:
                    status, _, _ = await read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    continue  # refused and closed before its answer was read
                served += status == 200
                assert status in (200, 503), status
        finally:
            for writer in held:
                writer.close()
        assert await adopted(primary) > before, "no connection went through the listener worker"
        assert served == PER_NETWORK, served

        # the listener worker's own count, in the primary's /metrics
        taken = 0.0
        for _ in range(40):
            async with httpx.AsyncClient(timeout=10) as http:
                text = (await http.get(primary + "/metrics")).text
            found = re.search(
                r'^townhall_handoffs_total\{worker="[^"]+-w2",outcome="taken"\} (\S+)$', text, re.M
            )
            taken = float(found[1]) if found else 0.0
            if taken >= 4:
                break
            await asyncio.sleep(0.25)
        assert taken >= 4, taken  # at least one of each case above
    finally:
        if bot is not None:
            bot.stop()
        server.stop()


_USERS = iter(range(1_000_000))


async def signups(
    url: str, count: int, headers: dict[str, str], local: str | None = None
) -> list[httpx.Response]:
    """``count`` sign-ups (new names), each on a connection of its own."""
    answers = []
    for _ in range(count):
        transport = httpx.AsyncHTTPTransport(local_address=local) if local else None
        async with httpx.AsyncClient(base_url=url, timeout=10, transport=transport) as http:
            answers.append(
                await http.post(
                    "/api/accounts",
                    json={"username": f"user{next(_USERS)}", "password": Api.PASSWORD},
                    headers=headers,
                )
            )
    return answers


async def test_without_handoffs_the_pass_over_http_keys_the_client_and_forgeries_are_not_believed(
    tmp_path: Path,
) -> None:
    """Handoffs off (no handoff socket: the fallback every worker uses while
    the primary restarts): requests are passed on over loopback HTTP with
    X-Forwarded-For and the secret, so the client's network is what the
    sign-up limit counts; a loopback request that names another client
    without the secret is counted on its own address."""
    server = LiveServer(tmp_path / "data", extra_env={**EMBEDDED, "TOWNHALL_HTTP_HANDOFF": "false"})
    server.start(timeout_s=120)
    try:
        assert not (server.data_dir / "run" / "handoff.sock").exists()
        primary = primary_url(server.data_dir)
        answers = await signups(server.url, SIGNUPS * 3, {}, local=CLIENT)
        statuses = [a.status_code for a in answers]
        assert statuses.count(201) == SIGNUPS, statuses  # every one on 127.0.1.0/24
        assert any("via" in a.headers for a in answers), "none went through the listener worker"

        # forged: each request from 127.0.0.1 names a client of another network
        forged = []
        for k in range(SIGNUPS * 2):
            forged += await signups(
                primary, 1, {"X-Forwarded-For": f"198.51.{k}.7", "X-Townhall-Local": "guess"}
            )
        statuses = [a.status_code for a in forged]
        assert statuses.count(201) == SIGNUPS, statuses  # all counted on 127.0.0.0/24
        # and through the port (the listener worker drops a client's own line too)
        again = await signups(server.url, 2, {"X-Forwarded-For": "203.0.113.9"})
        assert [a.status_code for a in again] == [429, 429], [a.text[:200] for a in again]
    finally:
        server.stop()


async def healthz_or_none(url: str) -> httpx.Response | None:
    """/healthz on a connection of its own; None when nobody answered in 3 s
    (it landed on the stopped primary)."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=3) as http:
            return await http.get("/healthz")
    except httpx.TimeoutException:
        return None


async def test_a_handoff_the_primary_does_not_take_in_time_is_answered_503(
    tmp_path: Path,
) -> None:
    """The primary stopped (SIGSTOP): the listener worker gives up on each
    handoff after handoff_timeout_ms and answers 503 with Retry-After; once
    the primary runs again it drops those late handoffs and serves on."""
    server = LiveServer(
        tmp_path / "data", extra_env={**EMBEDDED, "TOWNHALL_HANDOFF_TIMEOUT_MS": "300"}
    )
    server.start(timeout_s=120)
    pid = 0
    try:
        primary = primary_url(server.data_dir)
        pid = int(json.loads((server.data_dir / "run" / "primary.json").read_text())["pid"])
        for _ in range(8):  # the listener worker's handoff socket is open
            assert (await healthz_or_none(server.url)) is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            answers = await asyncio.gather(*(healthz_or_none(server.url) for _ in range(12)))
        finally:
            os.kill(pid, signal.SIGCONT)
            pid = 0
        refused = [a for a in answers if a is not None]
        assert refused, "no connection landed on the listener worker"
        for answer in refused:
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "2"
            assert "did not take the request in time" in answer.json()["detail"]
        late = 0.0
        for _ in range(40):
            late = await counter(primary, "townhall_handoffs_total", 'outcome="late"')
            if late >= len(refused):
                break
            await asyncio.sleep(0.1)
        assert late >= len(refused), (late, len(refused))
        assert (await healthz_or_none(server.url)) is not None  # and it serves on
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)
        server.stop()
