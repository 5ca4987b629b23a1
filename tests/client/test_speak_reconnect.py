"""`townhall speak --loop` survives a server restart: it reconnects by itself
with backoff, the restarted server hears it again, and the report counts only
audio the server acknowledged (not what went into a dead connection)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.client.test_speak import PASSWORD, setup_space
from tests.conftest import LiveServer
from townhall.media import signals

pytestmark = pytest.mark.slow

DURATION_S = 24.0


async def speaking(url: str, space_id: str, username: str) -> bool:
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:
            doc = (await http.get(f"/spaces/{space_id}/state.json")).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(
        s["username"] == username and s["connected"] and s["speaking"] for s in doc["speakers"]
    )


async def until_speaking(url: str, space_id: str, timeout_s: float) -> float:
    started = time.monotonic()
    while not await speaking(url, space_id, "cli"):
        assert time.monotonic() - started < timeout_s, "the speaker never came (back)"
        await asyncio.sleep(0.2)
    return time.monotonic() - started


async def test_speak_reconnects_after_a_restart(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data").start()
    wav = tmp_path / "in.wav"
    signals.write_wav(wav, signals.tone(440.0, 1.0, amplitude=0.3))
    cli = None
    try:
        sid, _ = await setup_space(server.url)
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "townhall", "speak", str(wav),
            "--server", server.url, "--space", sid,
            "--username", "cli", "--password", PASSWORD,
            "--loop", "--duration-s", str(DURATION_S), "--reconnect-for-s", "30",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        await until_speaking(server.url, sid, 15)
        await asyncio.sleep(2)
        down_at = time.monotonic()
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(server.start)
        back_s = await until_speaking(server.url, sid, 20)
        gap_s = time.monotonic() - down_at
        out, _ = await asyncio.wait_for(cli.communicate(), DURATION_S + 30)
        text = out.decode()
        assert cli.returncode == 0, text
    finally:
        if cli is not None and cli.stdout is not None and not cli.stdout.at_eof():
            if cli.returncode is None:
                cli.kill()
            leftover, _ = await cli.communicate()
            print("townhall speak said:\n" + leftover.decode()[-3000:])
            print("server said:\n" + server.log()[-3000:])
        server.stop()
    found = re.search(
        r"sent ([\d.]+) s of audio the server acknowledged \(of ([\d.]+) s pushed\).*?(\d+) reconnect",
        text,
    )
    assert found, text
    acked_s, pushed_s, reconnects = float(found[1]), float(found[2]), int(found[3])
    assert reconnects >= 1
    # the time the server was away is not reported as sent
    assert acked_s <= DURATION_S - gap_s + 2.0, (acked_s, gap_s, text)
    assert acked_s > 5.0 and acked_s <= pushed_s + 0.1, text
    print(
        f"restart: speaker back {back_s:.1f} s after the new server answered; gap {gap_s:.1f} s; "
        f"acknowledged {acked_s:.1f} s of {pushed_s:.1f} s pushed"
    )
