"""The listen backlog is a setting (``http_listen_backlog``), capped at the
kernel's somaxconn: a real `townhall serve`'s listening socket, as the kernel
reports it (``ss``: a listening socket's Send-Q is its backlog)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from townhall.config import Settings
from townhall.server.run import SOMAXCONN, listen_backlog


def socket_backlog(port: int) -> int:
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    assert out, f"no listening socket on port {port}"
    return int(out[2])  # State Recv-Q Send-Q ...


def test_capped_at_somaxconn_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ceiling = tmp_path / "somaxconn"
    ceiling.write_text("4096\n")
    with caplog.at_level(logging.WARNING, logger="townhall.http"):
        assert listen_backlog(16384, ceiling) == 4096
    assert "capped at 4096" in caplog.text and "somaxconn" in caplog.text
    caplog.clear()
    assert listen_backlog(3000, ceiling) == 3000
    assert listen_backlog(3000, tmp_path / "missing") == 3000
    assert caplog.text == ""


def test_default_is_above_uvicorns() -> None:
    assert Settings().http_listen_backlog > 2048


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("ss") is None or not SOMAXCONN.exists(), reason="needs ss and /proc"
)
@pytest.mark.parametrize("wanted", [3000, None])
def test_serve_listens_with_the_backlog(tmp_path: Path, wanted: int | None) -> None:
    somaxconn = int(SOMAXCONN.read_text())
    env = {} if wanted is None else {"TOWNHALL_HTTP_LISTEN_BACKLOG": str(wanted)}
    server = LiveServer(tmp_path / "data", extra_env=env).start()
    try:
        expected = min(wanted or Settings().http_listen_backlog, somaxconn)
        assert socket_backlog(server.port) == expected
        assert expected != 2048  # uvicorn's default would read 2048
        capped = "capped at" in server.log_path.read_text()
        assert capped == ((wanted or Settings().http_listen_backlog) > somaxconn)
    finally:
        server.stop()
