"""Captions in real players, on a real server with a speaker bot reading the
espeak-ng script (sentence by sentence, with pauses), captions on:

- master.m3u8 offers the subtitles rendition; hls.js in Chromium lists the
  track, loads its WebVTT cues, and each cue that starts a sentence lines up
  with that sentence as hls.js plays it (within 1 s: level rise in Web Audio
  vs the cue's start, both in the player's media time);
- the listener page's caption line shows the sentences while they are heard;
- ffmpeg (PyAV) still plays master.m3u8 (audio decoded, speech in it).

Delay figures are the bench's (python -m townhall.bench.captions_page), not
asserted here: the machine is shared.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from townhall.bench import captions_page as bench
from townhall.bench.captions import normalize

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CUE_TOLERANCE_S = 1.0


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not Path(bench.CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh --test)")
    if not bench.HLS_JS.is_file():
        pytest.skip("node_modules/hls.js is missing: run `npm ci`")
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("player-captions")
    with bench.Run(root, pause_s=1.5) as run, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=bench.CHROMIUM,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--disable-gpu"],
        )
        try:
            context = browser.new_context()
            run.speak()
            listener = bench.open_listener(context, run)
            player = bench.open_hls(context, run)
            master = __import__("httpx").get(f"{run.url}/spaces/{run.space_id}/master.m3u8").text
            pyav = _pyav_levels(f"{run.url}/spaces/{run.space_id}/master.m3u8")
            time.sleep(run.speaking_s() + 6 - bench.LEAD_S / 2)
            yield {
                "run": run,
                "master": master,
                "pyav": pyav,
                "captions": listener.evaluate("window.__captions"),
                "listener_heard": bench.bursts(listener.evaluate("window.__levels")),
                "hls": player.evaluate(bench.CUES_JS),
                "hls_heard": bench.bursts(player.evaluate("window.__levels")),
            }
        finally:
            browser.close()


def _pyav_levels(url: str) -> tuple[str, float]:
    """(audio codec, seconds decoded) of ~3 s of the master playlist."""
    import av

    with av.open(url, timeout=20) as container:
        stream = container.streams.audio[0]
        decoded = 0.0
        for frame in container.decode(stream):
            decoded += frame.samples / frame.sample_rate
            if decoded >= 3.0:
                break
        return stream.codec_context.name, decoded


def test_master_offers_subtitles_and_ffmpeg_still_plays_it(played: dict[str, Any]) -> None:
    master = played["master"]
    assert "#EXT-X-MEDIA:TYPE=SUBTITLES" in master and 'SUBTITLES="subs"' in master
    codec, decoded_s = played["pyav"]
    assert codec == "aac" and decoded_s >= 3.0


def test_hls_js_lists_the_track_and_its_cues_line_up_with_the_audio(
    played: dict[str, Any],
) -> None:
    doc = played["hls"]
    assert doc["tracks"] == ["English (automatic)"]
    assert len(doc["cues"]) >= 4, doc["cues"]
    starts = bench.sentence_starts()
    # cues whose words start a sentence as written (a misheard start is not
    # a timing question)
    good = [
        (text, err)
        for text, err in bench.cue_errors(doc["cues"], played["hls_heard"])
        if " ".join(normalize(text)[:2]) in starts
    ]
    assert len(good) >= 3, (doc["cues"], played["hls_heard"].media_s)
    assert all(abs(err) <= CUE_TOLERANCE_S for _, err in good), good


def test_listener_page_caption_line_shows_what_is_heard(played: dict[str, Any]) -> None:
    run = played["run"]
    heard = played["listener_heard"]
    assert len(heard.wall_ms) == len(run.sentences), heard.wall_ms  # every sentence heard
    delays = bench.sentence_delays(played["captions"], heard, run.sentences)
    shown = [first for _, first, _ in delays if first is not None]
    assert len(shown) >= len(run.sentences) // 2, delays
    # shown around when heard: not minutes late (a timing bar is the bench's)
    assert all(-5.0 < d < 15.0 for d in shown), delays
    assert np.isfinite(shown).all()
