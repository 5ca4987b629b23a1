"""`townhall demo`: ``serve`` plus a live demo space in which two bot speakers
keep talking (speech-like audio made by ``media.signals``; nothing is
downloaded).

Once the server answers, the bots (in a thread with their own event loop)
sign up a demo host and a demo guest through the HTTP API (their passwords
are kept in DATA_DIR/demo-accounts.json so a restart signs in again), create
or reuse the public live space "townhall demo", invite the guest, and publish
over WebRTC until the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
from pathlib import Path
from typing import Any

import click
import httpx

from townhall.cli.options import build_settings, settings_options
from townhall.client.speak import PcmTrack, publish, speaker_token
from townhall.config import Settings
from townhall.media import signals
from townhall.server.run import run_server
from townhall.server.workers import resolve_workers

log = logging.getLogger("townhall.demo")

DEMO_TITLE = "townhall demo"
BOTS = (("demo_host", 110.0, 1), ("demo_guest", 190.0, 2))  # username, pitch, seed
LOOP_S = 30.0
RETRY_S = 3.0


def local_url(settings: Settings) -> str:
    """Where this process reaches its own server."""
    host = settings.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _credentials(data_dir: Path) -> dict[str, str]:
    """The demo accounts' passwords, made once and kept in the data directory."""
    path = data_dir / "demo-accounts.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if all(name in stored for name, _, _ in BOTS):
            return {str(k): str(v) for k, v in stored.items()}
    creds = {name: secrets.token_urlsafe(18) for name, _, _ in BOTS}
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(creds))
    path.chmod(0o600)
    return creds


async def _wait_healthy(http: httpx.AsyncClient, stop: asyncio.Event, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not stop.is_set():
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)


async def _session(http: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    r = await http.post("/api/accounts", json={"username": username, "password": password})
    if r.status_code not in (201, 409):
        raise click.ClickException(f"Could not create the demo account {username}: {r.text}")
    r = await http.post("/api/sessions", json={"username": username, "password": password})
    if r.status_code != 200:
        raise click.ClickException(
            f"Could not sign in as {username} ({r.status_code}); remove demo-accounts.json "
            "from the data directory if you changed it."
        )
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def prepare_space(http: httpx.AsyncClient, data_dir: Path) -> tuple[str, dict[str, Any]]:
    """Accounts, the live demo space and the invite; returns (space id, sessions)."""
    creds = _credentials(data_dir)
    sessions = {name: await _session(http, name, creds[name]) for name, _, _ in BOTS}
    host_name, guest_name = BOTS[0][0], BOTS[1][0]
    r = await http.get("/api/spaces", params={"state": "live"})
    r.raise_for_status()
    space_id = next(
        (
            s["id"]
            for s in r.json()["spaces"]
            if s["title"] == DEMO_TITLE and s["host"]["username"] == host_name
        ),
        None,
    )
    if space_id is None:
        r = await http.post(
            "/api/spaces",
            json={
                "title": DEMO_TITLE,
                "description": "Two bots talking, so you can hear townhall work.",
                "visibility": "public",
            },
            headers=sessions[host_name],
        )
        if r.status_code != 201:
            raise click.ClickException(f"Could not create the demo space: {r.text}")
        space_id = str(r.json()["id"])
    r = await http.post(
        f"/api/spaces/{space_id}/invites",
        json={"username": guest_name, "role": "speaker"},
        headers=sessions[host_name],
    )
    if r.status_code not in (200, 409):
        raise click.ClickException(f"Could not invite the demo guest: {r.text}")
    return space_id, sessions


async def _bot(
    url: str,
    space_id: str,
    username: str,
    password: str,
    pitch_hz: float,
    seed: int,
    stop: asyncio.Event,
) -> None:
    """Publish speech-like audio as ``username`` until ``stop``; reconnect on failure."""
    pcm = signals.speech_like(LOOP_S, seed=seed, base_pitch_hz=pitch_hz)
    while not stop.is_set():
        try:
            async with httpx.AsyncClient(base_url=url, timeout=20.0) as http:
                token = await speaker_token(http, space_id, username, password)
            await publish(url, space_id, token, PcmTrack(pcm, loop=True), stop=stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bot's top level: log, wait, reconnect
            log.warning("demo bot %s: %s; reconnecting in %.0f s", username, exc, RETRY_S)
        if not stop.is_set():
            try:
                async with asyncio.timeout(RETRY_S):
                    await stop.wait()
            except TimeoutError:
                pass


async def run_bots(settings: Settings, stop: asyncio.Event, *, ready_timeout_s: float = 60) -> None:
    """Set up the demo space and run both bots until ``stop`` is set."""
    url = local_url(settings)
    async with httpx.AsyncClient(base_url=url, timeout=20.0) as http:
        await _wait_healthy(http, stop, ready_timeout_s)
        if stop.is_set():
            return
        space_id, _ = await prepare_space(http, settings.data_dir)
    public = settings.public_url.rstrip("/") or url
    click.echo(f"demo space live: listen at {public}/spaces/{space_id}")
    creds = _credentials(settings.data_dir)
    await asyncio.gather(
        *(_bot(url, space_id, name, creds[name], pitch, seed, stop) for name, pitch, seed in BOTS)
    )


class BotThread(threading.Thread):
    """The bots on their own event loop, beside uvicorn's."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="townhall-demo-bots", daemon=True)
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._ready.set()
        try:
            await run_bots(self.settings, self._stop_event)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the demo bots stopped")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the bots to hang up and wait for them (at most ``timeout_s``)."""
        if not self.is_alive():
            return
        self._ready.wait(timeout_s)
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and not loop.is_closed():
            # the loop may close in between: the thread is ending anyway then
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)
        self.join(timeout_s)


@click.command("demo")
@settings_options
def demo_command(**overrides: Any) -> None:
    """Run townhall with a live demo space where two bot speakers keep talking.

    Takes every flag of `townhall serve`. Open the printed URL to listen.
    """
    settings = build_settings(overrides)
    resolve_workers(settings)  # a refusal comes first and alone
    click.echo(f"townhall demo on {local_url(settings)}/ (data in {settings.data_dir})")
    # one line per bot request and per ICE check is noise here
    for noisy in ("httpx", "aioice"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    bots = BotThread(settings)
    bots.start()
    try:
        run_server(settings)
    finally:
        bots.stop()
