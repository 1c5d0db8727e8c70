"""`tone`: a deterministic synthetic engine for tests and the bench.

Each character becomes `ms_per_char` of audio (so its words' timing is known exactly:
`synthesize_words`): a short sine tone whose pitch follows the
character (silence for whitespace), with 2 ms raised-cosine ramps so tones do not click.
`compute_ms_per_char` adds an artificial compute cost (a blocking sleep in the calling worker
thread) to stand in for a neural engine's inference time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np

from .base import FloatAudio, UnknownVoiceError, WordMark, iter_text_words

TONE_SAMPLE_RATE_HZ = 48_000
DEFAULT_MS_PER_CHAR = 60.0
_RAMP_MS = 2.0
_AMPLITUDE = 0.3
_STEPS = 24  # tones per octave
FIRST_CHUNK_CHARS = 4  # synthesize_stream's first chunk (240 ms of audio at 60 ms a character)
MAX_CHUNK_CHARS = 64

# voice name -> base frequency in Hz
VOICES: dict[str, float] = {"sine": 220.0, "low": 110.0, "high": 440.0}


class ToneVoice:
    """A tone voice; synthesis is pure numpy and thread-safe."""

    def __init__(
        self,
        name: str,
        base_hz: float,
        *,
        sample_rate_hz: int,
        ms_per_char: float,
        compute_ms_per_char: float,
    ) -> None:
        self._name = name
        self._rate = sample_rate_hz
        self._ms_per_char = ms_per_char
        self._compute_ms_per_char = compute_ms_per_char
        n = self.samples_per_char
        ramp = min(n // 2, int(self._rate * _RAMP_MS / 1000))
        env = np.ones(n, dtype=np.float32)
        if ramp > 0:
            rise = 0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, ramp, dtype=np.float32))
            env[:ramp] = rise
            env[n - ramp :] = rise[::-1]
        t = np.arange(n, dtype=np.float32) / np.float32(self._rate)
        # a character's tone depends only on its code modulo 24 (a quarter-tone scale over an
        # octave): the 24 tones, computed once, make synthesis a table lookup (a neural voice
        # does not get this cheap: `compute_ms_per_char` stands in for its inference)
        hz = base_hz * 2.0 ** (np.arange(_STEPS, dtype=np.float64) / _STEPS)
        omega = (2 * math.pi * hz).astype(np.float32)
        tones = np.sin(omega[:, None] * t[None, :]) * env  # (_STEPS, n)
        tones *= np.float32(_AMPLITUDE)
        self._tones = np.concatenate([tones, np.zeros((1, n), dtype=np.float32)])  # + silence

    @property
    def name(self) -> str:
        return self._name

    @property
    def sample_rate_hz(self) -> int:
        return self._rate

    @property
    def samples_per_char(self) -> int:
        return round(self._rate * self._ms_per_char / 1000)

    def synthesize(self, text: str) -> FloatAudio:
        """`len(text) * ms_per_char` of audio; blocks `compute_ms_per_char` per character."""
        if self._compute_ms_per_char > 0:
            time.sleep(self._compute_ms_per_char * len(text) / 1000)
        if not text:
            return np.zeros(0, dtype=np.float32)
        rows = [_STEPS if ch.isspace() else ord(ch) % _STEPS for ch in text]
        return self._tones[rows].reshape(-1)  # (chars, n), silence for whitespace

    def synthesize_stream(self, text: str) -> Iterator[FloatAudio]:
        """`synthesize(text)` in chunks of characters, `FIRST_CHUNK_CHARS` first and then
        twice as many each time (at most `MAX_CHUNK_CHARS`): the first audio comes early, as
        a streaming neural voice's does, and a long piece is not one long computation."""
        start, size = 0, FIRST_CHUNK_CHARS
        while start < len(text):
            yield self.synthesize(text[start : start + size])
            start += size
            size = min(2 * size, MAX_CHUNK_CHARS)

    def synthesize_words(self, text: str) -> Iterator[tuple[FloatAudio, list[WordMark]]]:
        """`synthesize_stream(text)`, each chunk with the marks of the words that start in it
        (word timing by construction: a word's audio is its characters' tones)."""
        n = self.samples_per_char
        words = iter_text_words(text)  # found as the chunks reach them, not all up front
        word = next(words, None)
        start = 0
        for chunk in self.synthesize_stream(text):
            stop = start + len(chunk) // n  # characters in this chunk
            marks = []
            while word is not None and word[0] < stop:
                marks.append(WordMark(word[0], word[1], word[0] * n, word[1] * n))
                word = next(words, None)
            yield chunk, marks
            start = stop


class ToneEngine:
    """Engine of `ToneVoice`s; see the module docstring."""

    def __init__(
        self,
        *,
        sample_rate_hz: int = TONE_SAMPLE_RATE_HZ,
        ms_per_char: float = DEFAULT_MS_PER_CHAR,
        compute_ms_per_char: float = 0.0,
    ) -> None:
        if sample_rate_hz <= 0 or ms_per_char <= 0 or compute_ms_per_char < 0:
            raise ValueError("tone: rates and durations must be positive")
        self._voices = {
            name: ToneVoice(
                name,
                hz,
                sample_rate_hz=sample_rate_hz,
                ms_per_char=ms_per_char,
                compute_ms_per_char=compute_ms_per_char,
            )
            for name, hz in VOICES.items()
        }

    @property
    def name(self) -> str:
        return "tone"

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def default_voice(self) -> str:
        return "sine"

    def voices(self) -> list[str]:
        return list(self._voices)

    def open_voice(self, name: str) -> ToneVoice:
        try:
            return self._voices[name]
        except KeyError:
            raise UnknownVoiceError(
                f"unknown voice {name!r} for engine 'tone'; available: {', '.join(self._voices)}"
            ) from None

    def close(self) -> None:
        pass
