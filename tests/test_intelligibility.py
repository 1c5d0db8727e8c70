"""Does the VITS engine say what it is asked? Synthesize, transcribe with Whisper, score WER."""

from __future__ import annotations

import warnings

import pytest

from bench.asr_helpers import normalize_text, transcribe, word_error_rate
from duplexd.engines.vits import VitsEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "I bought 12 apples and 3 oranges at the market.",
    "Where did you put the keys to the car?",
    "Alice and Robert moved to Chicago last summer.",
    "The meeting is scheduled for March 15, 2024.",
    "The FBI opened an investigation into the matter.",
    "She said that the weather would be lovely this weekend.",
    "Can you recommend a good restaurant near the station?",
    "Dr. Smith will see you in about 20 minutes.",
    "We need 250 copies of the report by Friday.",
    "My flight to London leaves on Monday evening.",
    "Turn left at the next corner and keep walking straight.",
]
MAX_WER = 0.10


def test_normalizer() -> None:
    assert normalize_text("On March 15th, 2,024 $5 & 10%!") == (
        "on march fifteen two thousand twenty four five dollars and ten percent"
    )
    assert normalize_text("The U.S. isn't far.") == "the us isnt far"
    assert normalize_text("Dr. Who and Mr. Bean") == "doctor who and mister bean"


def test_engine_is_intelligible() -> None:
    engine = VitsEngine(device="cpu")  # the voice's own noise scales, as in production
    try:
        voice = engine.open_voice("joe")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            hyps = [transcribe(voice.synthesize(s), voice.sample_rate_hz) for s in SENTENCES]
    finally:
        engine.close()
    wer = word_error_rate(SENTENCES, hyps)
    print(f"\nVITS intelligibility WER over {len(SENTENCES)} sentences: {wer:.1%}")
    for ref, hyp in zip(SENTENCES, hyps, strict=True):
        if normalize_text(ref) != normalize_text(hyp):
            print(f"  ref: {ref}\n  asr: {hyp}")
    assert wer <= MAX_WER
