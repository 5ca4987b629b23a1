"""The shipped recognizer on speech made by espeak-ng, on silence and on music.

Needs the captions extra and espeak-ng (both installed by scripts/setup.sh --test).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from townhall.bench.captions import SCRIPT, espeak_clip, word_error_rate
from townhall.captions.engine import WhisperRecognizer, to_float_16k
from townhall.captions.worker import Chunker

os.environ["HF_HUB_OFFLINE"] = "1"  # a test that reaches a model hub must fail

WER_BOUND = 0.20


@pytest.fixture(scope="module")
def recognizer() -> WhisperRecognizer:
    return WhisperRecognizer(cpu_threads=1)


def test_word_error_rate() -> None:
    assert word_error_rate("the cat sat", "the cat sat") == 0
    assert word_error_rate("the cat sat", "The cat, sat!") == 0
    assert word_error_rate("the cat sat on", "the bat sat") == pytest.approx(0.5)


def test_espeak_clip_transcribed_in_live_chunks(recognizer: WhisperRecognizer) -> None:
    pcm, rate = espeak_clip(SCRIPT)
    # the program runs at 48 kHz: resample the 22.05 kHz clip as the worker sees it
    pcm48 = (to_float_16k(pcm, rate) * 32767).astype(np.int16).repeat(3)
    chunker = Chunker(48_000, target_s=5.0, min_s=2.5)
    texts = []
    step = 48_000 // 2
    for start in range(0, len(pcm48), step):
        for _, chunk in chunker.feed(pcm48[start : start + step], start):
            texts += [s.text for s in recognizer.transcribe(chunk, 48_000)]
    for _, chunk in chunker.flush():
        texts += [s.text for s in recognizer.transcribe(chunk, 48_000)]
    wer = word_error_rate(SCRIPT, " ".join(texts))
    assert wer <= WER_BOUND, (wer, texts)


def test_silence_gives_no_words(recognizer: WhisperRecognizer) -> None:
    assert recognizer.transcribe(np.zeros(48_000 * 5, np.int16), 48_000) == []
    rng = np.random.default_rng(1)
    hiss = (rng.standard_normal(48_000 * 5) * 30).astype(np.int16)  # about -60 dBFS
    assert recognizer.transcribe(hiss, 48_000) == []


def test_music_gives_few_words(recognizer: WhisperRecognizer) -> None:
    t = np.arange(48_000 * 8) / 48_000
    notes = [261.6, 329.6, 392.0, 523.3]
    chord = sum(
        np.sin(2 * np.pi * f * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 0.5 * t)) for f in notes
    )
    music = (chord / len(notes) * 12000).astype(np.int16)
    words = " ".join(s.text for s in recognizer.transcribe(music, 48_000)).split()
    assert len(words) <= 3, words
