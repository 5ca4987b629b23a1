"""Caption delay as a listener sees it, and WebVTT cue timing in hls.js.

    python -m townhall.bench.captions_page [--rounds 1] [--pause-s 1.5]

Runs ``townhall serve`` with captions on, a ``townhall speak`` bot reading
the espeak-ng script one sentence at a time with pauses between them, and
Chromium (Debian's, under Playwright) on two pages at once:

- the **listener page** (``/spaces/{id}``, Listen live): the page's own
  caption line (``#caption-line``) and, through Web Audio on the page's
  ``<audio>``, when each sentence starts and ends *in what the listener
  hears*. Per sentence: the delay from hearing its first words to the
  caption line showing them, and from hearing its last word to the line
  showing that word. Both times are taken in the page (``performance.now``),
  so network, HLS latency, captions.json's max-age and the page's poll are
  all inside the figure.
- **hls.js on master.m3u8** with the subtitles rendition on: the cues it
  loads (``textTracks``) against the sentence onsets it plays
  (``currentTime`` when the level rises): the cue timing error.

Needs the captions extra, espeak-ng, Chromium and ``node_modules/hls.js``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from townhall.bench.captions import SCRIPT, espeak_clip, normalize, word_error_rate

PASSWORD = "correct horse battery"
CHROMIUM = "/usr/bin/chromium"
HLS_JS = Path(__file__).resolve().parents[3] / "node_modules" / "hls.js" / "dist" / "hls.min.js"
LEAD_S = 12.0
SENTENCES = [s.strip() + "." for s in SCRIPT.split(".") if s.strip()]

# level tap on a media element: [performance.now(), rms, currentTime] every 20 ms
TAP_JS = """
(selector) => {
  const el = document.querySelector(selector);
  const ctx = new AudioContext();
  const source = ctx.createMediaElementSource(el);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  analyser.connect(ctx.destination);
  const buf = new Float32Array(analyser.fftSize);
  window.__levels = [];
  ctx.resume();
  setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    window.__levels.push([performance.now(), Math.sqrt(sum / buf.length), el.currentTime]);
  }, 20);
}
"""

# the caption line's text each time it changes: [performance.now(), text]
CAPTION_JS = """
() => {
  const el = document.getElementById('caption-line');
  window.__captions = [];
  const note = () => window.__captions.push([performance.now(), el.hidden ? '' : el.textContent]);
  new MutationObserver(note).observe(el, {childList: true, characterData: true, subtree: true, attributes: true});
}
"""

HLS_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script src="/__bench/hls.js"></script></head><body><video id="media" playsinline></video>
<script>
const media = document.getElementById('media');
const hls = new Hls({lowLatencyMode: true});
window.hls = hls;
window.__events = [];
for (const name of ['SUBTITLE_FRAG_PROCESSED', 'SUBTITLE_TRACK_LOADED', 'ERROR', 'SUBTITLE_TRACK_SWITCH'])
  hls.on(Hls.Events[name], (_e, data) => window.__events.push([name, JSON.stringify(data && (data.details || data.frag && data.frag.sn || data.id || '')).slice(0, 200)]));
// automatic captions are DEFAULT=NO: turn them on, as a viewer would
const pick = setInterval(() => {
  if (hls.subtitleTracks.length && hls.subtitleTrack !== 0) { hls.subtitleDisplay = true; hls.subtitleTrack = 0; }
}, 200);
hls.loadSource(%(url)r);
hls.attachMedia(media);
media.play();
</script></body></html>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def speech_wav(path: Path, *, pause_s: float, rounds: int = 1) -> list[tuple[float, float]]:
    """The script, sentence by sentence with ``pause_s`` between: writes a
    48 kHz WAV and returns each sentence's (start, end) in it."""
    rate = 48_000
    # a lead of silence: the pages are listening before the first sentence
    parts: list[np.ndarray] = [np.zeros(int(rate * LEAD_S), np.int16)]
    spans: list[tuple[float, float]] = []
    at = len(parts[0])
    for _ in range(rounds):
        for sentence in SENTENCES:
            pcm, src_rate = espeak_clip(sentence)
            t = np.arange(int(len(pcm) * rate / src_rate)) / rate
            voice = np.interp(t, np.arange(len(pcm)) / src_rate, pcm.astype(np.float64))
            voice = voice.astype(np.int16)
            loud = np.flatnonzero(np.abs(voice) > 300)
            voice = voice[loud[0] : loud[-1] + 1] if len(loud) else voice
            spans.append((at / rate, (at + len(voice)) / rate))
            parts += [voice, np.zeros(int(rate * pause_s), np.int16)]
            at += len(voice) + int(rate * pause_s)
    parts.append(np.zeros(rate * 3, np.int16))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.concatenate(parts).tobytes())
    return spans


@dataclass
class Bursts:
    """Sentences as heard: (start, end) in page time (ms) and media time (s)."""

    wall_ms: list[tuple[float, float]] = field(default_factory=list)
    media_s: list[tuple[float, float]] = field(default_factory=list)


def bursts(levels: list[list[float]], *, min_gap_s: float = 0.7) -> Bursts:
    """Speech bursts in a level trace: louder than a tenth of the loud level,
    separated by at least ``min_gap_s`` of quiet."""
    if not levels:
        return Bursts()
    trace = np.array(levels, dtype=np.float64)
    loud = trace[:, 1] > 0.1 * np.percentile(trace[:, 1], 95)
    out = Bursts()
    start: int | None = None
    last_loud = -1
    for i, on in enumerate(loud):
        if on:
            if start is None:
                start = i
            elif (trace[i, 0] - trace[last_loud, 0]) / 1000 > min_gap_s:
                out.wall_ms.append((trace[start, 0], trace[last_loud, 0]))
                out.media_s.append((trace[start, 2], trace[last_loud, 2]))
                start = i
            last_loud = i
    if start is not None:
        out.wall_ms.append((trace[start, 0], trace[last_loud, 0]))
        out.media_s.append((trace[start, 2], trace[last_loud, 2]))
    return out


def shown_at(captions: list[list[Any]], words: list[str], after_ms: float) -> float | None:
    """First page time after ``after_ms`` at which the caption line shows any
    two of ``words`` in a row (normalized): one misheard word does not hide a
    sentence, a common word alone does not match one."""
    pairs = [f"{a} {b}" for a, b in itertools.pairwise(words)] or words
    for at, text in captions:
        shown = " ".join(normalize(str(text)))
        if at >= after_ms and any(f" {pair} " in f" {shown} " for pair in pairs):
            return float(at)
    return None


def sentence_delays(
    captions: list[list[Any]], heard: Bursts, sentences: list[str]
) -> list[tuple[str, float | None, float | None]]:
    """Per heard sentence: (sentence, delay of its first words, of its last
    words), seconds from hearing them (the burst's start, its end) to the
    caption line showing them; None where the line never showed them
    (misrecognized)."""
    out = []
    n = min(len(sentences), len(heard.wall_ms))
    offset = len(heard.wall_ms) - n  # bursts before the script (none, normally)
    for k in range(n):
        words = normalize(sentences[k])
        start_ms, end_ms = heard.wall_ms[offset + k]
        first = shown_at(captions, words[:4], start_ms - 5000)
        last = shown_at(captions, words[-3:], start_ms - 5000)
        out.append(
            (
                sentences[k],
                None if first is None else (first - start_ms) / 1000,
                None if last is None else (last - end_ms) / 1000,
            )
        )
    return out


class Run:
    """A server with captions on, a space and a speaker bot, for the bench
    and the browser tests. Use as a context manager."""

    def __init__(self, root: Path, *, pause_s: float = 1.5, rounds: int = 1, **env: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.wav = root / "speech.wav"
        self.spans = speech_wav(self.wav, pause_s=pause_s, rounds=rounds)
        self.sentences = SENTENCES * rounds
        self.env = {
            **os.environ,
            "TOWNHALL_CAPTIONS": "true",
            "TOWNHALL_ARGON2_TIME_COST": "1",
            "TOWNHALL_ARGON2_MEMORY_KIB": "1024",
            **env,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.space_id = ""

    def __enter__(self) -> Run:
        log = (self.root / "server.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "townhall",
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.root / "data"),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError((self.root / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            client.post("/api/accounts", json={"username": "reader", "password": PASSWORD})
            token = client.post(
                "/api/sessions", json={"username": "reader", "password": PASSWORD}
            ).json()["token"]
            self.headers = {"Authorization": f"Bearer {token}"}
            self.space_id = client.post(
                "/api/spaces", json={"title": "Captions"}, headers=self.headers
            ).json()["id"]
        return self

    def end_and_transcript(self) -> str:
        """End the space; its transcript as text, once written."""
        with httpx.Client(base_url=self.url, timeout=30) as client:
            client.post(f"/api/spaces/{self.space_id}/end", headers=self.headers)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                answer = client.get(f"/spaces/{self.space_id}/transcript.txt")
                if answer.status_code == 200 and answer.text.strip():
                    return answer.text
                time.sleep(0.5)
        return ""

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
        )

    def speak(self) -> None:
        """Start the bot reading the script (once)."""
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "townhall",
                    "speak",
                    str(self.wav),
                    "--server",
                    self.url,
                    "--space",
                    self.space_id,
                    "--username",
                    "reader",
                    "--password",
                    PASSWORD,
                ],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
        )

    def speaking_s(self) -> float:
        return self.spans[-1][1] + 4.0

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def open_listener(context: Any, run: Run) -> Any:
    """The listener page, listening live, with the caption and level taps."""
    page = context.new_page()
    page.goto(f"{run.url}/spaces/{run.space_id}")
    page.click("#play-button")
    page.locator("#join-status").filter(has_text="listening live").wait_for(timeout=60_000)
    page.evaluate(CAPTION_JS)
    page.evaluate(TAP_JS, "#player")
    return page


def open_hls(context: Any, run: Run) -> Any:
    """hls.js on master.m3u8 with the subtitles rendition on, and a level tap."""
    page = context.new_page()
    page.route(
        "**/__bench/hls.js",
        lambda route: route.fulfill(
            body=HLS_JS.read_bytes(), content_type="application/javascript"
        ),
    )
    body = HLS_PAGE % {"url": f"/spaces/{run.space_id}/master.m3u8"}
    page.route(
        "**/__bench/page.html",
        lambda route: route.fulfill(body=body, content_type="text/html"),
    )
    page.goto(f"{run.url}/__bench/page.html")
    page.wait_for_function("() => document.getElementById('media').currentTime > 0", timeout=60_000)
    page.evaluate(TAP_JS, "#media")
    return page


CUES_JS = """
() => {
  const out = [];
  for (const track of document.getElementById('media').textTracks) {
    for (const cue of Array.from(track.cues || [])) out.push([cue.startTime, cue.endTime, cue.text]);
  }
  return {tracks: window.hls.subtitleTracks.map((t) => t.name), cues: out};
}
"""


def sentence_starts() -> set[str]:
    """The first two words (normalized) of each sentence of the script."""
    return {" ".join(normalize(s)[:2]) for s in SENTENCES}


def cue_errors(cues: list[list[Any]], heard: Bursts) -> list[tuple[str, float]]:
    """For each cue that starts a sentence (the first, one after a cue ending
    in . ? !, or one whose first two words start a sentence of the script:
    Whisper does not always write the full stop), its start minus the
    nearest heard sentence onset, both in the player's media time."""
    onsets = [start for start, _ in heard.media_s]
    starts = sentence_starts()
    out = []
    previous = ""
    for start, _end, text in sorted(cues):
        plain = re.sub(r"<[^>]+>", "", str(text)).strip()
        opens = " ".join(normalize(plain)[:2]) in starts
        if onsets and (not previous or previous[-1:] in ".?!" or opens):
            nearest = min(onsets, key=lambda t: abs(t - float(start)))
            out.append((plain, float(start) - nearest))
        previous = plain
    return out


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="times the script is read")
    parser.add_argument("--pause-s", type=float, default=1.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Run(Path(tmp), pause_s=args.pause_s, rounds=args.rounds) as run, sync_playwright() as pw:  # fmt: skip
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--disable-gpu"],
        )
        context = browser.new_context()
        run.speak()
        listener = open_listener(context, run)
        player = open_hls(context, run) if HLS_JS.is_file() else None
        time.sleep(run.speaking_s() + 6)
        captions = listener.evaluate("window.__captions")
        heard = bursts(listener.evaluate("window.__levels"))
        latency = listener.locator("#latency").inner_text()
        delays = sentence_delays(captions, heard, run.sentences)
        firsts = [d for _, d, _ in delays if d is not None]
        lasts = [d for _, _, d in delays if d is not None]
        print(f"listener page: {len(heard.wall_ms)} sentences heard, HLS latency {latency}")
        heard_s = [round((b - a) / 1000, 1) for a, b in heard.wall_ms]
        spoken_s = [round(b - a, 1) for a, b in run.spans]
        print(f"  sentence lengths heard {heard_s}, spoken {spoken_s}")
        for sentence, first, last in delays:
            f = "  -  " if first is None else f"{first:5.2f}"
            last_text = "  -  " if last is None else f"{last:5.2f}"
            print(f"  first words +{f} s, last word +{last_text} s  {sentence[:50]}")
        for name, values in (("first words", firsts), ("last word", lasts)):
            if values:
                print(
                    f"{name}: shown p50 {np.percentile(values, 50):.2f} s, "
                    f"max {max(values):.2f} s after heard ({len(values)}/{len(delays)} sentences)"
                )
        if player is not None:
            doc = player.evaluate(CUES_JS)
            errors = cue_errors(doc["cues"], bursts(player.evaluate("window.__levels")))
            print(f"hls.js subtitle tracks {doc['tracks']}, {len(doc['cues'])} cues")
            if os.environ.get("BENCH_DEBUG"):
                print(player.evaluate("window.__events")[-30:])
                print(httpx.get(f"{run.url}/spaces/{run.space_id}/captions.m3u8").text[-1500:])
                print(doc["cues"][:5])
                for at, text in captions:
                    print(f"    {at / 1000:8.2f} {text}")
                print(
                    "  heard", [(round(a / 1000, 2), round(b / 1000, 2)) for a, b in heard.wall_ms]
                )
            for text, err in errors:
                print(f"  cue start - heard onset {err:+.2f} s  {text[:50]}")
            if errors:
                print(f"cue timing: max |error| {max(abs(e) for _, e in errors):.2f} s")
        dropped = run.metric("townhall_captions_dropped_seconds_total")
        transcript = run.end_and_transcript()
        spoken = " ".join(run.sentences)
        said = " ".join(
            re.sub(r"^\[[0-9:]+\] ([^:]+: )?", "", ln) for ln in transcript.splitlines()
        )
        print(
            f"transcript WER {word_error_rate(spoken, said):.3f}; audio not captioned {dropped:.1f} s"
        )
        browser.close()


if __name__ == "__main__":
    main()
