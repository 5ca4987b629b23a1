"""`townhall demo`: a live demo space whose two bots are heard by listeners."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer
from townhall.media import signals


def demo_space(url: str) -> dict[str, Any] | None:
    spaces = httpx.get(f"{url}/api/spaces", params={"state": "live"}, timeout=5).json()["spaces"]
    return next((s for s in spaces if s["title"] == "townhall demo"), None)


def latest_audio(base: str, parts: int = 4) -> np.ndarray:
    """Decode the newest LL-HLS parts (init + parts) as a listener would get them."""
    playlist = httpx.get(base + "live.m3u8", timeout=10).text
    init = re.search(r'#EXT-X-MAP:URI="([^"]+)"', playlist)
    uris = re.findall(r'#EXT-X-PART:[^\n]*URI="([^"]+)"', playlist)
    assert init is not None and len(uris) >= parts, playlist
    data = httpx.get(base + init.group(1), timeout=10).content
    data += b"".join(httpx.get(base + uri, timeout=10).content for uri in uris[-parts:])
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray().astype(np.float64) for f in container.decode(audio=0)]
    return np.concatenate([f.mean(axis=0) for f in frames])


@pytest.mark.slow
def test_demo_runs_a_live_space_with_two_talking_bots(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data").start(verb="demo")
    try:
        deadline = time.monotonic() + 40
        state: dict[str, Any] = {}
        space = None
        while time.monotonic() < deadline:
            space = demo_space(server.url)
            if space is not None:
                state = httpx.get(f"{server.url}/spaces/{space['id']}/state.json", timeout=5).json()
                speakers = state["speakers"]
                if len(speakers) == 2 and all(s["connected"] and s["level"] > 0 for s in speakers):
                    break
            time.sleep(0.5)
        else:
            pytest.fail(f"the demo bots did not start talking: {state}\n{server.log()[-3000:]}")
        assert space is not None and space["visibility"] == "public"
        assert {s["username"] for s in state["speakers"]} == {"demo_host", "demo_guest"}
        time.sleep(2.5)  # let a few parts of talk reach the playlist
        pcm = latest_audio(f"{server.url}/spaces/{space['id']}/")
        assert f"listen at {server.url}/spaces/{space['id']}" in server.log()
    finally:
        server.stop()
    assert signals.rms(pcm) > 0.005  # listeners hear the bots, not silence
