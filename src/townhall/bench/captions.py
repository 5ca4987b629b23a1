"""Caption engine benchmark: word error rate, real-time factor and CPU on a
speech clip with a known transcript, made with espeak-ng.

    python -m townhall.bench.captions [--threads 1] [--chunk-s 5]

The clip is cut into ``chunk_s`` pieces the way the live worker cuts the
program (at the quietest moment near each cut), so the figures are those of
live captions, not of one whole-file pass.
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = (
    "Good evening and welcome to the town hall. Tonight we talk about the new library "
    "on the main street. The council voted to open it next spring. "
    "It will have a reading room for children and a quiet floor for study. "
    "Many people asked about parking, so we added 40 spaces behind the building. "
    "The library will be open every day from 9 in the morning until 8 at night. "
    "We also plan a small cafe near the entrance. "
    "Thank you all for coming, and please send us your questions after the meeting."
)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference's length, after
    lowercasing and dropping punctuation."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


def normalize(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def espeak_clip(text: str, *, words_per_minute: int = 160) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng: (int16 mono samples, sample rate)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.wav"
        subprocess.run(
            [exe, "-v", "en-us", "-s", str(words_per_minute), "-w", str(out), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with wave.open(str(out)) as wav:
            rate = wav.getframerate()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).copy()
    return pcm, rate


def stream_bench(threads: int, step_s: float, window_s: float) -> None:
    """Streaming captions over the clip fed at its own pace (each pass sees
    exactly the audio it would live): WER, CPU, and how long after a word
    ends it settles, in audio seconds (plus each pass's wall time, live)."""
    from townhall.captions.engine import WhisperRecognizer, to_float_16k
    from townhall.captions.stream import Stream

    pcm, rate = espeak_clip(SCRIPT)
    audio = to_float_16k(pcm, rate)
    audio = np.concatenate([np.zeros(16_000, np.float32), audio, np.zeros(32_000, np.float32)])
    duration_s = len(audio) / 16_000
    recognizer = WhisperRecognizer(cpu_threads=threads)
    recognizer.words(audio[: 16_000 * 3])  # warm up, as a running worker is
    stream = Stream(recognizer, step_s=step_s, window_s=window_s)
    lags: list[float] = []
    settle = stream._settle

    def timed(words: list[Any]) -> Any:
        lags.extend(stream.end_s - w.end_s for w in words)
        return settle(words)

    stream._settle = timed  # type: ignore[method-assign]
    lines = []
    walls: list[float] = []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    for start in range(0, len(audio), 4000):  # the worker's 250 ms batches
        stream.feed(audio[start : start + 4000], start / 16_000)
        if stream.due:
            t0 = time.perf_counter()
            lines += stream.step().closed
            walls.append(time.perf_counter() - t0)
    live = np.array(lags)
    lines += stream.finish().closed
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    hypothesis = " ".join(line.text for line in lines)
    print(
        f"engine: {recognizer.name}, threads {threads}, stream: step {step_s} s, window {window_s} s"
    )
    print(
        f"clip: {duration_s:.1f} s (espeak-ng, 1 s lead, 2 s tail), {len(normalize(SCRIPT))} words"
    )
    print(f"WER: {word_error_rate(SCRIPT, hypothesis):.1%}")
    print(f"CPU per second of audio: {cpu_s / duration_s:.3f} core ({stream.passes} passes)")
    print(
        f"word settled after it ends (audio s): p50 {np.percentile(live, 50):.2f}, "
        f"p90 {np.percentile(live, 90):.2f}, max {live.max():.2f}"
    )
    print(f"pass wall time: p50 {np.percentile(walls, 50):.2f} s, max {max(walls):.2f} s")
    print(f"hypothesis: {hypothesis}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-s", type=float, default=5.0)
    parser.add_argument(
        "--min-s",
        type=float,
        default=None,
        help="earliest cut (default: half the chunk, as the worker)",
    )
    parser.add_argument("--mode", choices=["stream", "chunks"], default="stream")
    parser.add_argument("--step-s", type=float, default=1.0, help="stream: seconds between passes")
    parser.add_argument("--window-s", type=float, default=8.0, help="stream: longest window")
    args = parser.parse_args()
    if args.mode == "stream":
        stream_bench(args.threads, args.step_s, args.window_s)
        return
    from townhall.captions.engine import WhisperRecognizer
    from townhall.captions.worker import Chunker

    pcm, rate = espeak_clip(SCRIPT)
    duration_s = len(pcm) / rate
    t0 = time.perf_counter()
    recognizer = WhisperRecognizer(cpu_threads=args.threads)
    load_s = time.perf_counter() - t0
    min_s = args.min_s if args.min_s is not None else args.chunk_s / 2
    chunker = Chunker(rate, target_s=args.chunk_s, min_s=min_s)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    texts = []
    step = rate // 2
    for start in range(0, len(pcm), step):
        for _chunk_start, chunk in chunker.feed(pcm[start : start + step], start):
            texts += [s.text for s in recognizer.transcribe(chunk, rate)]
    for _chunk_start, chunk in chunker.flush():
        texts += [s.text for s in recognizer.transcribe(chunk, rate)]
    wall_s = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    hypothesis = " ".join(texts)
    wer = word_error_rate(SCRIPT, hypothesis)
    print(f"engine: {recognizer.name}, threads {args.threads}, chunks of ~{args.chunk_s} s")
    print(f"clip: {duration_s:.1f} s of espeak-ng speech, {len(normalize(SCRIPT))} words")
    print(f"model load: {load_s:.2f} s")
    print(f"WER: {wer:.1%}")
    print(f"real-time factor (wall): {wall_s / duration_s:.3f}")
    print(f"CPU per second of audio: {cpu_s / duration_s:.3f} core")
    print(f"hypothesis: {hypothesis}")


if __name__ == "__main__":
    main()
