"""Shared fixtures: settings in a temporary data directory, the app in-process
(with its lifespan), and a real `townhall serve` subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from townhall.config import Settings
from townhall.server.app import create_app

# WebRTC in tests stays on loopback (aioice would gather on every other interface)
os.environ.setdefault("TOWNHALL_WEBRTC_HOST_ADDRESSES", "127.0.0.1")
# Most tests read a live space's parts without connecting a microphone; the
# tests of "no program before the host is on the air" (tests/players,
# tests/web/test_first_use.py) turn the product default back on explicitly.
os.environ.setdefault("TOWNHALL_PROGRAM_WAITS_FOR_HOST", "false")

FAST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # The in-process app tests reach the API through httpx's ASGI transport with
    # rooms in this process (the --no-media-process mode): a media process per
    # test would cost ~0.7 s of CPU each and test nothing more. Every real
    # `townhall serve` of the suite (LiveServer, tests/scale, tests/web,
    # tests/players, tests/live/test_mediaproc.py) runs the default, the media process.
    return Settings(data_dir=tmp_path / "data", media_process=False, **FAST_ARGON2)  # type: ignore[arg-type]


@pytest.fixture
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, lifespan run, reached through httpx's ASGI transport."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


class LiveServer:
    """A real `townhall serve` process; ``url`` is its base URL."""

    def __init__(
        self, data_dir: Path, extra_env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        env = dict(os.environ)
        env.update({"TOWNHALL_ARGON2_TIME_COST": "1", "TOWNHALL_ARGON2_MEMORY_KIB": "1024"})
        # one process (serve runs one HTTP worker per core by default): these
        # tests read, pause and kill the server's one process; the tests of
        # workers (tests/server/test_local_workers.py, tests/scale/test_workers.py,
        # tests/players/test_wheel.py: the default as installed) ask for them
        env.setdefault("TOWNHALL_HTTP_WORKERS", "1")
        env.update(extra_env or {})
        self.env = env
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, verb: str = "serve", timeout_s: float = 30.0) -> LiveServer:
        return self.launch(verb).wait_ready(timeout_s)

    def launch(self, verb: str = "serve") -> LiveServer:
        """Start the process without waiting for it (``wait_ready`` waits):
        several servers then start at once."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "townhall",
                verb,
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> LiveServer:
        """Wait until the launched process answers /healthz (stopped and
        raising if it exits or does not answer in ``timeout_s``)."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"server did not answer /healthz in {timeout_s}s:\n{self.log_path.read_text()[-4000:]}"
        )

    def stop(self, sig: int | None = None) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig is not None:
            self.proc.send_signal(sig)
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "data").start()
    try:
        yield server
    finally:
        server.stop()


def pytest_report_header(config: Any) -> str:
    return f"townhall tests; CI={os.environ.get('CI', '')}"


# The files whose tests hold real time to a bound (a media clock, audio with no
# gap, a browser that must not stall, a deadline in seconds) or read the
# machine's CPU: `make test` runs them alone, after the rest has run two at a
# time (pytest-xdist), so another test's server starting on the same two cores
# cannot make them late. Every test is still run; plain `pytest` runs them all
# one at a time, as before.
SERIAL = {
    "tests/bench/test_attack.py": "a slow connection cut at its deadline while a listener plays",
    "tests/bench/test_attack_fleet.py": "the generator's own CPU",
    "tests/bench/test_clock.py": "the mixer clock late by at most a bound",
    "tests/bench/test_real_run.py": "simulated listeners' stalls",
    "tests/bench/test_storm.py": "a real storm: the line moves in time",
    "tests/captions/test_clips.py": "a 30 s clip within 2 s",
    "tests/captions/test_player_captions.py": "cues line up with the audio within 1 s in Chromium",
    "tests/captions/test_worker.py": "feeding returns within 1 s",
    "tests/client/test_latency.py": "mouth-to-ear latency, measured",
    "tests/client/test_speak_reconnect.py": "what the server acknowledged, in seconds of talk",
    "tests/live/test_mediaproc.py": "the media process's clock ticks while the HTTP loop is blocked",
    "tests/live/test_program_health_http.py": "an outage seen within 5 s",
    "tests/live/test_program_resilience.py": "resumes within 5 s, loses no more than the outage",
    "tests/live/test_stage_clock.py": "the 20 ms clock",
    "tests/origin/test_http1_limits.py": "408 between 0.25 s and 1.5 s",
    "tests/players/test_browser_players.py": "20 s without a stall in Chromium",
    "tests/players/test_dead_air.py": "at most 2 s of dead air",
    "tests/players/test_gstreamer.py": "GStreamer plays the live tone",
    "tests/players/test_listener_count.py": "a silent listener leaves within its presence time",
    "tests/players/test_presence_scale.py": "40 pages beat within a 2 s presence window",
    "tests/players/test_recording_m4a.py": "an hour's recording.m4a within 1 s",
    "tests/players/test_wheel.py": "plays in Chromium",
    "tests/scale/test_pages_takeover.py": "the tone back in Chromium after a takeover",
    "tests/scale/test_seat_board.py": "a seat board's age within a window",
    "tests/scale/test_seats_nodes.py": "a mute reaches the owner within a bound",
    "tests/web/test_first_use.py": "a scheduled space starts by itself, audio back in Chromium",
    "tests/web/test_listener_count_pages.py": "listener pages counted through a restart",
    "tests/web/test_live_space.py": "listeners hear the host live in Chromium",
    "tests/web/test_mic_reconnect.py": "the host page comes back by itself",
    "tests/web/test_waiting_room.py": "admitted within 10 s",
}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    root = Path(__file__).resolve().parent.parent
    for item in items:
        if item.path.resolve().relative_to(root).as_posix() in SERIAL:
            item.add_marker(pytest.mark.serial)


# ---------------------------------------------------------------------------
# Control plane (added by the control-plane engineer): API helpers for tests
# that go through the real HTTP interface.


class Api:
    """Small helpers over an httpx client: accounts, sessions, spaces."""

    PASSWORD = "correct horse 1"

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def account(self, username: str) -> tuple[str, dict[str, str]]:
        """Sign up and sign in ``username``: (account id, auth headers)."""
        response = await self.client.post(
            "/api/accounts", json={"username": username, "password": self.PASSWORD}
        )
        assert response.status_code == 201, response.text
        response = await self.client.post(
            "/api/sessions", json={"username": username, "password": self.PASSWORD}
        )
        assert response.status_code == 200, response.text
        return response.json()["account"]["id"], {
            "Authorization": f"Bearer {response.json()['token']}"
        }

    async def space(self, headers: dict[str, str], **body: Any) -> dict[str, Any]:
        body.setdefault("title", "Town hall")
        response = await self.client.post("/api/spaces", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return dict(response.json())


@pytest.fixture
def api(app_client: httpx.AsyncClient) -> Api:
    return Api(app_client)
