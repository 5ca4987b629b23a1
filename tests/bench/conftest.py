"""Servers for the benchmark client's real runs: nginx serving HLS that ffmpeg
is writing live (skipped if nginx or ffmpeg is missing, failed under CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is required under CI (scripts/setup.sh --test installs it)")
        pytest.skip(f"{tool} is not installed (scripts/setup.sh --test installs it)")
    return path


def render(template: Path, **fields: str) -> str:
    text = template.read_text()
    for key, value in fields.items():
        text = text.replace("${" + key + "}", value)
    return text


@dataclass
class StaticHls:
    url: str
    path: str
    root: Path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def nginx_live_hls() -> Iterator[StaticHls]:
    """nginx serving a plain HLS playlist that ffmpeg writes in real time
    (0.5 s segments of a 440 Hz tone, AAC-LC 64 kbit/s), with 3 segments ready."""
    nginx = need("nginx")
    ffmpeg = need("ffmpeg")
    # mkdtemp + 0755: nginx's worker runs as an unprivileged user when we are root
    prefix = Path(tempfile.mkdtemp(prefix="townhall-bench-"))
    prefix.chmod(0o755)
    hls = prefix / "www" / "hls"
    hls.mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        render(
            ROOT / "benchmarks" / "nginx.conf.template",
            prefix=str(prefix),
            port=str(port),
            root=str(prefix / "www"),
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(
                [ffmpeg, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                 "sine=frequency=440:sample_rate=48000:duration=30", "-ac", "1", "-c:a", "aac",
                 "-b:a", "64k", "-f", "hls", "-hls_time", "0.5", "-hls_list_size", "20",
                 "-hls_segment_type", "fmp4", "-hls_fmp4_init_filename", "init.mp4",
                 "-hls_flags", "independent_segments+temp_file+omit_endlist",
                 str(hls / "plain.m3u8")],
                stdin=subprocess.DEVNULL,
            )
        )  # fmt: skip
        procs.append(
            subprocess.Popen(
                [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                stdin=subprocess.DEVNULL,
            )
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                r = httpx.get(url + "/hls/plain.m3u8", timeout=1)
                if r.status_code == 200 and r.text.count("#EXTINF") >= 3:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                err = prefix / "error.log"
                pytest.fail(
                    "nginx/ffmpeg did not serve 3 segments: "
                    + (err.read_text() if err.exists() else "")
                )
            time.sleep(0.1)
        yield StaticHls(url=url, path="/hls/plain.m3u8", root=prefix / "www")
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(prefix, ignore_errors=True)
