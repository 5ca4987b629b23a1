"""Small real runs of the simulated listeners: plain HLS from nginx (ffmpeg
writing live), LL-HLS and a progressive stream from a tiny in-test origin that
keeps LL-HLS's rules (blocking reload, preload hint), and the checks on options."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.bench.conftest import StaticHls, need
from townhall.bench import listeners
from townhall.errors import BadRequest


def _config(url: str, path: str, mode: str, n: int, duration_s: float) -> listeners.RunConfig:
    return listeners.build_config(
        target=url,
        space=None,
        path=path,
        mode=mode,  # type: ignore[arg-type]
        shape="steady",
        listeners=n,
        ramp_s=0.2,
        duration_s=duration_s,
        join=False,
        allow_remote=False,
        startup_s=None,
        request_timeout_s=3.0,
        preload_hint=True,
    )


@pytest.mark.slow
async def test_plain_hls_listeners_on_nginx(nginx_live_hls: StaticHls) -> None:
    config = _config(nginx_live_hls.url, nginx_live_hls.path, "hls", 5, 3.0)
    summary = await listeners.run(config)
    assert summary["errors"] == {}
    assert summary["listeners_started"] == 5
    assert summary["listeners_held"] == 5
    assert summary["stall_events"] == 0
    # each joined 3 segments (~1.5 s) behind the edge and played until the end
    assert summary["played_s"] == pytest.approx(5 * (3.0 - summary["ttfa_p50_s"]), rel=0.15)
    assert summary["bytes"] > 5 * 3 * 4000  # three 0.5 s segments at 64 kbit/s each, at least
    assert summary["client_cpu_percent"] >= 0


class FakeLlOrigin:
    """An LL-HLS origin in miniature: 0.2 s parts, 5 per segment, part g exists
    from t0 + (g + 1) * 0.2 s. Blocking reloads and hinted parts wait for their
    part. ``/live.aac`` streams ADTS (chunked) in real time."""

    PART_S = 0.2
    PER_SEGMENT = 5

    def __init__(self, aac: bytes, *, stall_after_s: float | None = None) -> None:
        self.t0 = time.monotonic() - 10 * self.PART_S  # ten parts already made
        self.aac = aac
        self.stall_after_s = stall_after_s
        self.hits: Counter[str] = Counter()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()

    def available(self) -> int:
        now = time.monotonic()
        if self.stall_after_s is not None:
            now = min(now, self.t0 + 10 * self.PART_S + self.stall_after_s)
        return int((now - self.t0) / self.PART_S)

    async def wait_for(self, g: int) -> None:
        while self.available() <= g:
            await asyncio.sleep(max(0.005, self.t0 + (g + 1) * self.PART_S - time.monotonic()))

    def playlist(self, n: int) -> bytes:
        lines = [
            "#EXTM3U",
            "#EXT-X-TARGETDURATION:1",
            f"#EXT-X-PART-INF:PART-TARGET={self.PART_S}",
            f"#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={3 * self.PART_S:.1f}",
            "#EXT-X-MEDIA-SEQUENCE:0",
            '#EXT-X-MAP:URI="init.mp4"',
        ]
        done, open_parts = divmod(n, self.PER_SEGMENT)
        for s in range(done):
            if s >= done - 2:
                lines += [
                    f'#EXT-X-PART:DURATION={self.PART_S},URI="p{s}.{i}.m4s"' for i in range(5)
                ]
            lines += ["#EXTINF:1.0,", f"s{s}.m4s"]
        lines += [
            f'#EXT-X-PART:DURATION={self.PART_S},URI="p{done}.{i}.m4s"' for i in range(open_parts)
        ]
        lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="p{done}.{open_parts}.m4s"')
        return ("\n".join(lines) + "\n").encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                url = urlsplit(target)
                if url.path == "/live.aac":
                    await self.stream(writer)
                    return
                body = await self.answer(url.path, parse_qs(url.query))
                status = b"200 OK" if body is not None else b"404 Not Found"
                body = body or b""
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)

    async def answer(self, path: str, query: dict[str, list[str]]) -> bytes | None:
        if path == "/live.m3u8":
            if "_HLS_msn" in query:
                self.hits["blocking_reload"] += 1
                msn, part = int(query["_HLS_msn"][0]), int(query.get("_HLS_part", ["0"])[0])
                await self.wait_for(msn * self.PER_SEGMENT + part)
            else:
                self.hits["playlist"] += 1
            return self.playlist(self.available())
        if path == "/init.mp4":
            self.hits["init"] += 1
            return b"init"
        if path.startswith("/p") and path.endswith(".m4s"):
            msn, index = (int(x) for x in path[2:-4].split("."))
            g = msn * self.PER_SEGMENT + index
            if g >= self.available():
                self.hits["part_waited"] += 1
            self.hits["part"] += 1
            await self.wait_for(g)
            return b"m" * 1600
        return None

    async def stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        rate = len(self.aac) / 3.0  # the file holds 3 s of audio
        start = time.monotonic()
        sent = 0
        while sent < len(self.aac):
            due = int(min(len(self.aac), (time.monotonic() - start + 0.1) * rate))
            if due > sent:
                chunk = self.aac[sent:due]
                writer.write(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                await writer.drain()
                sent = due
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def __aenter__(self) -> FakeLlOrigin:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture(scope="module")
def aac_3s(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    ffmpeg = need("ffmpeg")
    path = tmp_path_factory.mktemp("aac") / "tone.aac"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "sine=frequency=440:sample_rate=48000:duration=3", "-ac", "1", "-c:a", "aac",
         "-b:a", "64k", "-f", "adts", str(path)],
        check=True,
    )  # fmt: skip
    return Path(path).read_bytes()


async def test_llhls_listeners_block_on_reload_and_use_the_preload_hint(aac_3s: bytes) -> None:
    async with FakeLlOrigin(aac_3s) as origin:
        config = _config(f"http://127.0.0.1:{origin.port}", "/live.m3u8", "llhls", 5, 2.5)
        summary = await listeners.run(config)
    assert summary["errors"] == {}
    assert summary["listeners_held"] == 5
    assert summary["stall_events"] == 0
    assert origin.hits["init"] == 5
    # they asked for parts before they existed (preload hint) and blocked on reloads
    assert origin.hits["part_waited"] >= 5 * 8
    assert origin.hits["blocking_reload"] >= 5 * 8
    # each part once: 3 to join (PART-HOLD-BACK 0.6 s), then one per 0.2 s
    assert origin.hits["part"] <= 5 * (3 + 2.5 / 0.2 + 2)
    assert summary["played_s"] == pytest.approx(5 * (2.5 - summary["ttfa_p50_s"]), rel=0.15)


async def test_llhls_listeners_count_stalls_when_the_origin_stops(aac_3s: bytes) -> None:
    async with FakeLlOrigin(aac_3s, stall_after_s=0.6) as origin:
        config = _config(f"http://127.0.0.1:{origin.port}", "/live.m3u8", "llhls", 3, 2.0)
        summary = await listeners.run(config)
    assert summary["listeners_started"] == 3
    assert summary["listeners_held"] == 0  # dry at the end
    assert summary["stall_events"] == 3
    # 0.6 s buffer + 0.6 s of new parts, then silence until the end of the 2 s run
    assert summary["stall_ratio"] > 0.3


async def test_progressive_listeners_read_the_chunked_stream(aac_3s: bytes) -> None:
    async with FakeLlOrigin(aac_3s) as origin:
        config = _config(f"http://127.0.0.1:{origin.port}", "/live.aac", "progressive", 3, 2.0)
        summary = await listeners.run(config)
    assert summary["errors"] == {}
    assert summary["listeners_held"] == 3
    assert summary["stall_events"] == 0
    assert summary["bytes"] == pytest.approx(3 * 2.1 / 3 * len(aac_3s), rel=0.2)


async def test_errors_are_counted_by_kind(aac_3s: bytes) -> None:
    async with FakeLlOrigin(aac_3s) as origin:
        config = _config(f"http://127.0.0.1:{origin.port}", "/nothing.m3u8", "llhls", 2, 1.5)
        summary = await listeners.run(config)
    assert summary["errors"]["http_404"] >= 2
    assert summary["listeners_started"] == 0
    assert summary["ttfa_p50_s"] is None


def test_options_are_checked() -> None:
    with pytest.raises(BadRequest, match="not a loopback address; pass --allow-remote"):
        _config("http://192.0.2.1:8000", "/x.m3u8", "llhls", 1, 5)
    with pytest.raises(BadRequest, match="must be an http:// URL"):
        _config("https://127.0.0.1", "/x.m3u8", "llhls", 1, 5)
    with pytest.raises(BadRequest, match="--listeners must be between"):
        _config("http://127.0.0.1:1", "/x.m3u8", "llhls", 0, 5)
    with pytest.raises(BadRequest, match="Give --space"):
        listeners.build_config(
            target="http://[::1]:8000", space=None, path=None, mode="llhls", shape="storm",
            listeners=1, ramp_s=None, duration_s=20, join=False, allow_remote=False,
            startup_s=None, request_timeout_s=3, preload_hint=True,
        )  # fmt: skip
    config = listeners.build_config(
        target="http://localhost:8000", space="abc", path=None, mode="hls", shape="storm",
        listeners=10, ramp_s=None, duration_s=20, join=True, allow_remote=False,
        startup_s=None, request_timeout_s=3, preload_hint=True,
    )  # fmt: skip
    assert config.listener.path == "/spaces/abc/plain.m3u8"
    assert config.listener.join_path == "/api/spaces/abc/join"
    assert config.ramp_s == 10.0


def test_storm_starts_evenly_from_zero_to_ramp() -> None:
    assert listeners.start_offsets_s(5, 2.0) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert listeners.start_offsets_s(3, 0.0) == [0.0, 0.0, 0.0]
