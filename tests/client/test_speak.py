"""`townhall speak` against a real `townhall serve`: the CLI publishes a WAV and
records its return; a second speaker in the test hears the CLI's tone and the
CLI hears only the second speaker."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.conftest import LiveServer
from townhall.client.speak import ReturnRecorder, publish, speak_command, speaker_token
from townhall.media import signals

PASSWORD = "correct horse 1"


async def setup_space(url: str) -> tuple[str, str]:
    """A live space with host 'cli' and invited speaker 'bot'; returns (space id, bot token)."""
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        for name in ("cli", "bot"):
            r = await http.post("/api/accounts", json={"username": name, "password": PASSWORD})
            assert r.status_code == 201, r.text
        r = await http.post("/api/sessions", json={"username": "cli", "password": PASSWORD})
        host = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await http.post("/api/spaces", json={"title": "speak test"}, headers=host)
        assert r.status_code == 201, r.text
        sid = str(r.json()["id"])
        r = await http.post(
            f"/api/spaces/{sid}/invites", json={"username": "bot", "role": "speaker"}, headers=host
        )
        assert r.status_code == 200, r.text
        return sid, await speaker_token(http, sid, "bot", PASSWORD)


@pytest.mark.slow
async def test_speak_cli_publishes_a_file_and_records_the_return(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        sid, bot_token = await setup_space(server.url)
        wav = tmp_path / "in.wav"
        signals.write_wav(wav, signals.tone(440.0, 1.0, amplitude=0.3))
        back = tmp_path / "back.wav"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "townhall", "speak", str(wav),
            "--server", server.url, "--space", sid,
            "--username", "cli", "--password", PASSWORD,
            "--loop", "--duration-s", "4", "--record-return", str(back),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        heard = ReturnRecorder()
        await publish(
            server.url,
            sid,
            bot_token,
            signals.tone(880.0, 1.0, amplitude=0.3),
            loop=True,
            duration_s=5.0,
            record_to=heard,
        )
        out, _ = await asyncio.wait_for(cli.communicate(), 30)
        assert cli.returncode == 0, out.decode()
    finally:
        server.stop()
    assert b"sent" in out and b"received" in out
    cli_hears, rate = signals.read_wav(back)
    assert rate == 48000 and len(cli_hears) > 48000
    bot_hears = heard.pcm()
    assert signals.goertzel_amplitude(bot_hears, 440.0) > 0.05  # the CLI's file reached the bot
    assert signals.goertzel_amplitude(cli_hears, 880.0) > 0.05  # and the bot reached the CLI
    assert signals.goertzel_amplitude(cli_hears, 440.0) < 0.005  # never its own voice


def test_speak_needs_a_token_or_credentials(tmp_path: Path) -> None:
    wav = tmp_path / "in.wav"
    signals.write_wav(wav, signals.tone(440.0, 0.1))
    result = CliRunner().invoke(
        speak_command, [str(wav), "--server", "http://127.0.0.1:9", "--space", "x"]
    )
    assert result.exit_code == 2
    assert "Give --token, or both --username and --password" in result.output


def test_speak_says_when_the_server_cannot_be_reached(tmp_path: Path) -> None:
    wav = tmp_path / "in.wav"
    signals.write_wav(wav, signals.tone(440.0, 0.1))
    result = CliRunner().invoke(
        speak_command,
        [str(wav), "--server", "http://127.0.0.1:9", "--space", "x", "--token", "t"],
    )
    assert result.exit_code == 1
    assert "Could not reach http://127.0.0.1:9" in result.output
