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
    args = parser.parse_args()
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
