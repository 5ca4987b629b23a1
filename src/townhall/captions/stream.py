"""Streaming captions: words shown about two seconds after they are spoken
(pure: the recognizer is injected, no I/O, no loop).

Whisper is not a streaming model, so ``Stream`` re-reads a short sliding
window of the program (at most ``window_s``, trimmed as words are settled)
every ``step_s`` and keeps a word once two passes in a row agree on it
("local agreement", after Macháček et al., *Turning Whisper into Real-Time
Transcription System*, 2023). A word heard at t is usually settled by
t + 2 steps + one pass. Settled words are never taken back.

``Lines`` groups settled words into caption lines: a line ends at a
sentence's end, at a pause, or when it is long enough to read; the line
being built is published as it grows (``Captions.open``), so the page
shows words as they settle, not when the line ends.

Times are seconds on the program's media timeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from townhall.captions.engine import WHISPER_RATE_HZ, Word, WordRecognizer

# settled words kept at the window's start when it is cut mid-sentence
OVERLAP_WORDS = 3
_SENTENCE_END = re.compile(r"[.?!][\"')\]]*$")
_KEY = re.compile(r"[^a-z0-9']+")


def _key(word: Word) -> str:
    return _KEY.sub("", word.text.lower())


def merge_punctuation(words: list[Word]) -> list[Word]:
    """Whisper's aligner gives "." and "," words of their own: join them to
    the word before."""
    out: list[Word] = []
    for w in words:
        if out and not _KEY.sub("", w.text.lower()) and not w.text.startswith(" "):
            prev = out[-1]
            out[-1] = Word(prev.start_s, max(prev.end_s, w.end_s), prev.text + w.text.strip())
        elif _KEY.sub("", w.text.lower()) or w.text.strip():
            out.append(w)
    return [w for w in out if _key(w)]


@dataclass(frozen=True, slots=True)
class Caption:
    start_s: float
    end_s: float
    text: str


@dataclass(slots=True)
class Update:
    """What one pass changed: lines that ended, the open line now (or None),
    and how far the captions are final (no line will start before it)."""

    closed: list[Caption] = field(default_factory=list)
    open: Caption | None = None
    final_s: float = 0.0


class Lines:
    """Settled words -> caption lines (see the module docstring)."""

    def __init__(self, *, max_s: float = 5.0, max_words: int = 12, pause_s: float = 0.8) -> None:
        self.max_s = max_s
        self.max_words = max_words
        self.pause_s = pause_s
        self.words: list[Word] = []

    def add(self, words: list[Word]) -> list[Caption]:
        closed: list[Caption] = []
        for w in words:
            if self.words and (
                w.start_s - self.words[-1].end_s > self.pause_s
                or w.end_s - self.words[0].start_s > self.max_s
            ):
                closed.extend(self.close())
            self.words.append(w)
            if _SENTENCE_END.search(w.text.strip()) or len(self.words) >= self.max_words:
                closed.extend(self.close())
        return closed

    def close(self) -> list[Caption]:
        if not self.words:
            return []
        line = self.current()
        self.words = []
        return [line] if line is not None else []

    def current(self) -> Caption | None:
        if not self.words:
            return None
        text = "".join(w.text for w in self.words).strip()
        return Caption(self.words[0].start_s, self.words[-1].end_s, text)


class Stream:
    """Feed 16 kHz float audio with ``feed``; ``step`` when ``due``; ``finish``
    at the end. ``window_s`` bounds the audio one pass reads (and so its
    cost): past it, the oldest unsettled words are settled as they stand."""

    def __init__(
        self,
        recognizer: WordRecognizer,
        *,
        step_s: float = 1.0,
        window_s: float = 6.0,
        keep_s: float = 2.5,
        lines: Lines | None = None,
    ) -> None:
        self.recognizer = recognizer
        self.step_s = step_s
        self.window_s = max(window_s, keep_s + step_s)
        self.keep_s = keep_s
        self.lines = lines or Lines()
        self._audio = np.zeros(0, np.float32)
        self._start_s = 0.0  # media time of _audio[0]
        self._fresh = 0  # samples fed since the last pass
        self._settled: list[Word] = []  # recent settled words (prompt, overlap)
        self._settled_end_s = 0.0
        self._guess: list[Word] = []  # the last pass's unsettled words
        self.passes = 0

    @property
    def end_s(self) -> float:
        return self._start_s + len(self._audio) / WHISPER_RATE_HZ

    def feed(self, audio: np.ndarray, start_s: float) -> Update | None:
        """Append audio at ``start_s``; a gap (dropped audio) settles what was
        guessed and starts over there, returning that update."""
        update = None
        if len(self._audio) and abs(start_s - self.end_s) > 0.05:
            update = self.finish()
        if not len(self._audio):
            self._start_s = start_s
            self._settled_end_s = max(self._settled_end_s, start_s)
        self._audio = np.concatenate([self._audio, audio.astype(np.float32)])
        self._fresh += len(audio)
        return update

    @property
    def due(self) -> bool:
        return self._fresh >= self.step_s * WHISPER_RATE_HZ

    @property
    def pending(self) -> bool:
        """Words guessed or a line open, or audio not read yet: ``finish``
        would change something."""
        return bool(self._guess or self.lines.words or self._fresh)

    @property
    def full(self) -> bool:
        """The window is as long as a pass may read: step before feeding more."""
        return self._fresh > 0 and self.end_s - self._start_s >= self.window_s

    def step(self) -> Update:
        """One pass over the window: settle what two passes agree on."""
        self._fresh = 0
        self.passes += 1
        hypothesis = self._new_words(self._recognize())
        agreed = 0
        while (
            agreed < len(hypothesis)
            and agreed < len(self._guess)
            and _key(hypothesis[agreed]) == _key(self._guess[agreed])
        ):
            agreed += 1
        settled, self._guess = hypothesis[:agreed], hypothesis[agreed:]
        if self.end_s - self._start_s > self.window_s and self._guess:
            # the window is full and the passes keep disagreeing: settle the
            # oldest half of the guess rather than read ever more audio
            half = max(1, len(self._guess) // 2)
            settled, self._guess = settled + self._guess[:half], self._guess[half:]
        update = Update(closed=self._settle(settled))
        if not hypothesis and self.end_s - self._settled_end_s > self.lines.pause_s + self.step_s:
            update.closed.extend(self.lines.close())  # a pause: the line is complete
        self._trim()
        return self._finish_update(update)

    def finish(self) -> Update:
        """The end, or a gap in the audio: one last pass over what came since
        the last one, and everything it hears is settled."""
        guess = self._guess
        if self._fresh > 0 and len(self._audio):
            self.passes += 1
            guess = self._new_words(self._recognize())
        update = Update(closed=self._settle(guess))
        self._guess = []
        update.closed.extend(self.lines.close())
        final = self.end_s
        self._audio = np.zeros(0, np.float32)
        self._fresh = 0
        self._start_s = final
        update.final_s = final
        return update

    def _recognize(self) -> list[Word]:
        # the prompt is what was said before the window: with words that are
        # also in the window, Whisper takes them as read and skips their audio
        before = [w for w in self._settled[-40:] if w.end_s <= self._start_s + 0.05]
        prompt = "".join(w.text for w in before).strip()
        words = merge_punctuation(self.recognizer.words(self._audio, prompt))
        return [Word(w.start_s + self._start_s, w.end_s + self._start_s, w.text) for w in words]

    def _new_words(self, words: list[Word]) -> list[Word]:
        """Drop the words already settled: the window may start with some."""
        if not self._settled:
            return words
        # by time: words that end before the settled ones end are old
        fresh = [w for w in words if (w.start_s + w.end_s) / 2 > self._settled_end_s - 0.05]
        # by text: the first fresh words repeating the last settled ones
        tail = [_key(w) for w in self._settled[-5:]]
        for n in range(min(5, len(fresh), len(tail)), 0, -1):
            if [_key(w) for w in fresh[:n]] == tail[-n:]:
                return fresh[n:]
        return fresh

    def _settle(self, words: list[Word]) -> list[Caption]:
        if not words:
            return []
        self._settled.extend(words)
        del self._settled[:-60]
        self._settled_end_s = max(self._settled_end_s, words[-1].end_s)
        return self.lines.add(words)

    def _trim(self) -> None:
        """Keep the window short, cutting only in a gap between two words
        already settled (so no word still guessed loses its start): after a
        settled sentence once the window is over ``keep_s``, else before the
        last ``OVERLAP_WORDS`` settled words once it nears ``window_s``. With
        nothing settled or guessed in it (silence), keep the last ``keep_s``."""
        length_s = self.end_s - self._start_s
        if length_s <= self.keep_s:
            return
        inside = [w for w in self._settled if w.start_s >= self._start_s]
        nexts = [*inside[1:], *self._guess[:1]]
        gaps = [(a.end_s + b.start_s) / 2 for a, b in zip(inside, nexts, strict=False)]
        if not inside and not self._guess:
            self._cut(self.end_s - self.keep_s)
            return
        sentence = [g for g, w in zip(gaps, inside, strict=False) if _SENTENCE_END.search(w.text)]
        if sentence:
            self._cut(sentence[-1])
        elif length_s > self.window_s - self.step_s and len(gaps) > OVERLAP_WORDS:
            self._cut(gaps[-OVERLAP_WORDS - 1])
        elif not self._guess and not self.lines.words and inside:
            self._cut(max(self.end_s - self.keep_s, inside[-1].end_s + 0.05))

    def _cut(self, cut_s: float) -> None:
        cut = int((cut_s - self._start_s) * WHISPER_RATE_HZ)
        if cut > 0:
            self._audio = self._audio[cut:]
            self._start_s += cut / WHISPER_RATE_HZ

    def _finish_update(self, update: Update) -> Update:
        update.open = self.lines.current()
        if update.open is not None:
            update.final_s = update.open.start_s
        elif self._guess:
            update.final_s = self._guess[0].start_s
        else:
            update.final_s = self.end_s
        return update
