"""The pure parts of HTTP workers (server/workers.py) and of passing
owner-only requests on (server/forward.py): which requests only a room's
owner answers, who holds a lease, how many workers a setting means, and the
sentence that refuses workers without the scaled-out mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import townhall
from tests.conftest import free_port
from townhall.config import Settings
from townhall.server.forward import default_forward_url, holder_node, owner_only, window_request
from townhall.server.workers import resolve_workers, reuseport_socket, share_keys, worker_settings

SCALED = {
    "database_url": "postgresql+asyncpg://db/x",
    "redis_url": "redis://127.0.0.1:6379/0",
    "bus_enabled": True,
}


@pytest.mark.parametrize(
    ("method", "path", "space_id"),
    [
        ("POST", "/api/spaces/abc/webrtc/offer", "abc"),
        ("GET", "/spaces/abc/live.aac", "abc"),
        ("HEAD", "/spaces/abc/live.aac", "abc"),
        ("POST", "/api/spaces/abc/speakers/u1/mute", "abc"),
        ("POST", "/api/spaces/abc/speakers/u1/unmute", "abc"),
        ("POST", "/api/spaces/abc/speakers/u1/demote", "abc"),
        ("POST", "/api/spaces/abc/blocks", "abc"),
        ("PUT", "/api/spaces/abc/captions", "abc"),
        # any node answers these
        ("GET", "/spaces/abc/live.m3u8", None),
        ("GET", "/spaces/abc/state.json", None),
        ("POST", "/api/spaces/abc/join", None),
        ("GET", "/api/spaces/abc/captions", None),
        ("POST", "/spaces/abc/live.aac", None),
        ("GET", "/api/spaces/abc/webrtc/offer", None),
        ("POST", "/api/spaces/abc/webrtc/offer/x", None),
        ("POST", "/api/spaces/a/b/webrtc/offer", None),
        ("GET", "/spaces/abc/live.aac/", None),
    ],
)
def test_owner_only_requests(method: str, path: str, space_id: str | None) -> None:
    assert owner_only(method, path) == space_id


@pytest.mark.parametrize(
    ("method", "path", "space_id"),
    [
        ("GET", "/spaces/abc/live.m3u8", "abc"),
        ("HEAD", "/spaces/abc/plain.m3u8", "abc"),
        ("GET", "/spaces/abc/part/12.3.m4s", "abc"),
        ("GET", "/spaces/abc/init.mp4", "abc"),
        ("GET", "/spaces/abc/init/7.mp4", "abc"),
        # a copy does not answer these (or every node does)
        ("POST", "/spaces/abc/live.m3u8", None),
        ("GET", "/spaces/abc/state.json", None),
        ("GET", "/spaces/abc/recording.m4a", None),
        ("GET", "/spaces/abc/12.m4s", None),  # a finished segment: on disk everywhere
        ("GET", "/spaces/abc/live.aac", None),
        ("GET", "/spaces/a/b/live.m3u8", None),
    ],
)
def test_window_requests(method: str, path: str, space_id: str | None) -> None:
    assert window_request(method, path) == space_id


def test_the_lease_names_its_node() -> None:
    assert holder_node("7:vm:8000:123-w2") == "vm:8000:123-w2"
    assert holder_node("garbage") == ""


def test_default_forward_url() -> None:
    assert default_forward_url(Settings(host="0.0.0.0", port=8001)) == "http://127.0.0.1:8001"
    assert default_forward_url(Settings(host="10.0.0.5", port=80)) == "http://10.0.0.5:80"
    assert default_forward_url(Settings(host="::1", port=80)) == "http://[::1]:80"


def test_how_many_workers() -> None:
    cores = len(os.sched_getaffinity(0))  # the cores this process may use (taskset)
    # one per core by default, scaled out or not (a primary and listener workers)
    assert resolve_workers(Settings()) == cores
    assert resolve_workers(Settings(**SCALED)) == cores  # type: ignore[arg-type]
    assert resolve_workers(Settings(http_workers=0, **SCALED)) == cores  # type: ignore[arg-type]
    # rooms in the HTTP process (no media process): one process
    assert resolve_workers(Settings(media_process=False)) == 1
    assert resolve_workers(Settings(http_workers=3, **SCALED)) == 3  # type: ignore[arg-type]
    assert resolve_workers(Settings(http_workers=1)) == 1


def test_workers_without_a_media_process_or_redis_are_refused_with_a_sentence() -> None:
    assert resolve_workers(Settings(http_workers=2, redis_url="redis://x")) == 2  # a primary
    with pytest.raises(SystemExit) as refused:
        resolve_workers(Settings(http_workers=2, media_process=False))
    message = str(refused.value)
    assert message.startswith("townhall serve --workers 2: more than one HTTP worker needs")
    for name in (
        "TOWNHALL_MEDIA_PROCESS=true",
        "TOWNHALL_DATABASE_URL",
        "TOWNHALL_REDIS_URL",
        "TOWNHALL_BUS_ENABLED=true",
    ):
        assert name in message


@pytest.mark.parametrize("verb", ["serve", "demo"])
def test_the_refusal_of_workers_comes_first_and_alone(verb: str, tmp_path: Path) -> None:
    """The real command: it prints the refusal and nothing else (no
    "serving on ..." before it), exits non-zero, and starts nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWNHALL_")}
    env["PYTHONPATH"] = str(Path(townhall.__file__).parents[1])
    port = free_port()
    flags = ["--workers", "2", "--no-media-process", "--port", str(port)]
    flags += ["--data-dir", str(tmp_path / "data")]
    done = subprocess.run(
        [sys.executable, "-m", "townhall", verb, *flags],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stdout == b"", done.stdout
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("townhall serve --workers 2: more than one HTTP worker needs")
    with socket.create_server(("127.0.0.1", port)):  # nothing listens there
        pass


def test_a_worker_is_a_node_of_its_own(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, node_id="edge1", http_workers=2, **SCALED)  # type: ignore[arg-type]
    second = worker_settings(settings, 2, 8123)
    assert (second.node_id, second.port, second.http_workers) == ("edge1-w2", 8123, 1)
    assert second.data_dir == tmp_path / "workers" / "w2"
    assert second.trusted_proxies == "127.0.0.1/32"  # passed-on requests count by the client
    behind = worker_settings(Settings(trusted_proxies="10.0.0.0/8", **SCALED), 1, 1)  # type: ignore[arg-type]
    assert behind.trusted_proxies == "10.0.0.0/8,127.0.0.1/32"
    unnamed = worker_settings(Settings(data_dir=tmp_path), 1, 8123)
    assert unnamed.node_id.endswith(f":8123:{os.getpid()}-w1")
    # loopback's X-Forwarded-For only with the supervisor's secret, as without Redis
    vouched = worker_settings(settings, 2, 8123, 2, "s3cret")
    assert (vouched.secret_proxies, vouched.local_bus_secret) == ("127.0.0.1/32", "s3cret")
    nginx = Settings(data_dir=tmp_path, trusted_proxies="127.0.0.0/8", **SCALED)  # type: ignore[arg-type]
    assert worker_settings(nginx, 1, 8123, 2, "s3cret").secret_proxies == ""


@pytest.mark.parametrize(
    ("url", "vouched"),
    [
        ("http://127.0.0.1:8123", True),  # another worker of this supervisor
        ("http://[::1]:8123", True),
        ("http://10.0.0.7:8123", False),  # another machine never gets the secret
        ("http://node-b.internal:8123", False),
    ],
)
def test_a_request_passed_on_carries_the_secret_only_on_this_machine(
    tmp_path: Path, url: str, vouched: bool
) -> None:
    from townhall.origin.handoff import SECRET_HEADER
    from townhall.server.forward import OwnerForward

    settings = Settings(data_dir=tmp_path, node_id="w1", local_bus_secret="s3cret", **SCALED)  # type: ignore[arg-type]
    forward = OwnerForward(lambda *a: None, settings)  # type: ignore[arg-type]
    scope = {
        "headers": [(b"x-forwarded-for", b"203.0.113.9"), (SECRET_HEADER, b"guessed")],
        "client": ("198.51.100.4", 5555),
    }
    headers = forward._headers(scope, url)
    assert (b"x-forwarded-for", b"203.0.113.9, 198.51.100.4") in headers
    secrets = [v for k, v in headers if k == SECRET_HEADER]
    assert secrets == ([b"s3cret"] if vouched else [])  # a client's own is never passed on


def test_without_redis_one_primary_and_listener_workers(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, node_id="edge1")
    first, second = (worker_settings(settings, k, 8123, 2, "s3cret") for k in (1, 2))
    assert (first.worker_role, second.worker_role) == ("primary", "listener")
    assert first.data_dir == second.data_dir == tmp_path  # one control plane, one DATA_DIR
    assert first.local_bus_secret == second.local_bus_secret == "s3cret"
    assert (first.node_id, second.node_id) == ("edge1-w1", "edge1-w2")
    assert first.trusted_proxies == "127.0.0.1/32"  # the listener workers pass requests on
    assert first.secret_proxies == "127.0.0.1/32"  # ... believed only with the secret
    assert first.recording_copies == ""
    # nginx on this machine, trusted by the operator: loopback stays believed as is
    nginx = Settings(data_dir=tmp_path, trusted_proxies="127.0.0.0/8")
    assert worker_settings(nginx, 1, 8123, 2, "s3cret").secret_proxies == ""


def test_workers_share_the_signing_keys(tmp_path: Path) -> None:
    from townhall.policy.tokens import load_keys

    settings = Settings(data_dir=tmp_path)
    share_keys(settings, tmp_path / "workers" / "w1")
    share_keys(settings, tmp_path / "workers" / "w2")
    keys = load_keys("", tmp_path)
    assert load_keys("", tmp_path / "workers" / "w1") == keys
    assert load_keys("", tmp_path / "workers" / "w2") == keys


def test_two_sockets_bind_one_port() -> None:
    first = reuseport_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = reuseport_socket("127.0.0.1", port)
    try:
        first.listen()
        second.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        first.close()
        second.close()
    with socket.socket() as plain:  # without SO_REUSEPORT the port is taken
        plain.bind(("127.0.0.1", 0))
        with pytest.raises(OSError):
            reuseport_socket("127.0.0.1", plain.getsockname()[1])
