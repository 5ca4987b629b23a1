"""Chunking (pure), the bounded queue's drops, and an engine that cannot load."""

from __future__ import annotations

import time

import numpy as np

from townhall import metrics
from townhall.captions.worker import RUNNING, UNAVAILABLE, Captioner, Chunker


def _tone_with_gap(rate: int) -> np.ndarray:
    t = np.arange(rate * 4) / rate
    audio = (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)
    audio[int(rate * 2.0) : int(rate * 2.3)] = 0  # a pause at 2.0-2.3 s
    return audio


def test_chunker_cuts_at_the_pause() -> None:
    rate = 16_000
    chunker = Chunker(rate, target_s=3.0, min_s=1.0)
    audio = _tone_with_gap(rate)
    chunks = []
    for start in range(0, len(audio), 1600):
        chunks += chunker.feed(audio[start : start + 1600], start)
    chunks += chunker.flush()
    starts = [s for s, _ in chunks]
    assert starts[0] == 0
    assert 2.0 * rate <= starts[1] <= 2.3 * rate  # cut inside the pause
    assert sum(len(c) for _, c in chunks) == len(audio)  # nothing lost or doubled


def test_chunker_gap_closes_the_chunk() -> None:
    chunker = Chunker(16_000, target_s=3.0)
    assert chunker.feed(np.ones(8000, np.int16), 0) == []
    out = chunker.feed(np.ones(8000, np.int16), 100_000)  # audio was dropped before this
    assert [(s, len(c)) for s, c in out] == [(0, 8000)]
    assert [(s, len(c)) for s, c in chunker.flush()] == [(100_000, 8000)]


def test_full_queue_drops_and_counts() -> None:
    # never started: nobody drains the queue, so it fills
    cap = Captioner("q", engine="whisper-tiny.en", sample_rate_hz=48_000, queue_s=1.0, batch_ms=500)
    before = metrics.CAPTIONS_DROPPED_SECONDS._value.get()
    frame = np.zeros(960, np.int16)
    t0 = time.perf_counter()
    for i in range(50 * 5):  # 5 s of 20 ms frames
        cap.feed(frame, i * 960)
    elapsed = time.perf_counter() - t0
    time.sleep(0.2)
    assert cap.dropped_s >= 2.9  # 1 s of queue (2 batches) kept, the rest dropped
    assert metrics.CAPTIONS_DROPPED_SECONDS._value.get() - before >= 2.9
    assert elapsed < 1.0  # feeding never blocks
    cap.close()


def test_engine_missing_says_so() -> None:
    cap = Captioner("m", engine="no-such-engine", sample_rate_hz=48_000)
    cap.start()
    deadline = time.monotonic() + 60
    while cap.status not in (UNAVAILABLE, RUNNING) and time.monotonic() < deadline:
        cap.poll()
        time.sleep(0.1)
    assert cap.status == UNAVAILABLE
    assert "Unknown captions engine 'no-such-engine'" in cap.message
    cap.feed(np.zeros(960, np.int16), 0)  # ignored, no error
    cap.close(1.0)


def test_worker_captions_program_audio_on_the_media_timeline() -> None:
    from townhall.bench.captions import espeak_clip, word_error_rate
    from townhall.captions.engine import to_float_16k

    text = "Good evening and welcome to the town hall. Tonight we talk about the new library."
    pcm, rate = espeak_clip(text)
    pcm48 = (to_float_16k(pcm, rate) * 32767).astype(np.int16).repeat(3)
    pcm48 = np.concatenate([pcm48, np.zeros(48_000, np.int16)])
    offset = 48_000 * 100  # the space has been live 100 s
    cap = Captioner("w", engine="whisper-tiny.en", sample_rate_hz=48_000, chunk_s=5.0)
    cap.start()
    for i in range(0, len(pcm48) - 959, 960):
        cap.feed(pcm48[i : i + 960], offset + i, "ada")
    cap.stop_feeding()
    deadline = time.monotonic() + 120
    while not cap.finished and cap.status != UNAVAILABLE and time.monotonic() < deadline:
        cap.poll()
        time.sleep(0.1)
    assert cap.status == RUNNING and cap.finished
    lines = list(cap.track.lines)
    assert lines and all(100 <= ln.start_s < ln.end_s <= 100 + len(pcm48) / 48_000 for ln in lines)
    assert all(ln.speaker == "ada" for ln in lines)
    assert word_error_rate(text, " ".join(ln.text for ln in lines)) <= 0.2
    assert cap.track.done_s >= 100 + (len(pcm48) - 960) / 48_000
    cap.close(1.0)


def test_worker_death_is_noticed_and_said() -> None:
    cap = Captioner("d", engine="whisper-tiny.en", sample_rate_hz=48_000)
    cap.start()
    deadline = time.monotonic() + 60
    while cap.status != RUNNING and time.monotonic() < deadline:
        cap.poll()
        time.sleep(0.1)
    assert cap.status == RUNNING
    assert cap._proc is not None
    cap._proc.kill()
    cap._proc.join(5)
    cap.poll()
    assert cap.status == UNAVAILABLE
    assert "recognizer process exited" in cap.message
    cap.feed(np.zeros(960, np.int16), 0)  # ignored from now on
    cap.close(1.0)


def test_streaming_worker_captions_program_audio_on_the_media_timeline() -> None:
    from townhall.bench.captions import espeak_clip, word_error_rate
    from townhall.captions.engine import to_float_16k
    from townhall.captions.worker import Tuning

    text = "Good evening and welcome to the town hall. Tonight we talk about the new library."
    pcm, rate = espeak_clip(text)
    pcm48 = (to_float_16k(pcm, rate) * 32767).astype(np.int16).repeat(3)
    pcm48 = np.concatenate([pcm48, np.zeros(48_000, np.int16)])
    offset = 48_000 * 100
    cap = Captioner(
        "s", engine="whisper-tiny.en", sample_rate_hz=48_000, tuning=Tuning(mode="stream")
    )
    cap.start()
    # fed all at once: the worker catches up in passes of at most window_s
    for i in range(0, len(pcm48) - 959, 960):
        cap.feed(pcm48[i : i + 960], offset + i, "ada")
    cap.stop_feeding()
    deadline = time.monotonic() + 120
    while not cap.finished and cap.status != UNAVAILABLE and time.monotonic() < deadline:
        cap.poll()
        time.sleep(0.1)
    assert cap.status == RUNNING and cap.finished
    lines = list(cap.track.lines)
    assert lines and all(100 <= ln.start_s < ln.end_s <= 100 + len(pcm48) / 48_000 for ln in lines)
    assert all(ln.speaker == "ada" for ln in lines)
    assert word_error_rate(text, " ".join(ln.text for ln in lines)) <= 0.2, lines
    assert cap.track.open is None  # the end closed the last line
    assert cap.track.done_s >= 100 + (len(pcm48) - 960) / 48_000
    cap.close(1.0)
