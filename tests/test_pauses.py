"""Sentences given whole are spoken without a pause in the middle of a phrase.

The pieces `split_text` makes of each text are synthesized by the real VITS engine
(deterministic, CPU) and joined, as the producer joins them; `bench.pauses` finds the pauses of
150 ms or more (energy) and places them in the text (Whisper's word times); every one must
follow punctuation. The old six-word first piece failed this on the first two sentences.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bench.asr_helpers import ASR_RATE_HZ, load_asr_model, to_asr_rate
from bench.pauses import Pause, find_pauses, locate_pauses, transcribe_words
from duplexd._downlink.segment import split_text
from duplexd.engines.vits import VitsEngine

TEXTS = [
    "Doctor Patel said the results should be ready by the end of the week.",
    "How many kilometers is it from the airport to the city center?",
    "My grandmother always kept a small jar of lemon candies on the kitchen windowsill.",
    "The train to Manchester leaves from platform seven at half past nine tomorrow.",
    "Hello there, the committee reviewed every application submitted before the deadline.",
    "We need flour, sugar, eggs, butter and a pinch of salt for the cake.",
    "Mr. Smith and Dr. Jones met at St. Mary's hospital on Tuesday afternoon.",
]


@pytest.mark.unit
def test_pause_detector_finds_silence_inside_speech_only() -> None:
    rate = ASR_RATE_HZ
    tone = (0.3 * np.sin(np.arange(rate // 2) * 0.1)).astype(np.float32)  # 0.5 s of "speech"
    gap = np.zeros(int(0.2 * rate), np.float32)
    short = np.zeros(int(0.1 * rate), np.float32)
    audio = np.concatenate([gap, tone, gap, tone, short, tone, gap])
    assert find_pauses(audio, rate) == [pytest.approx((0.7, 0.9))]  # not the ends, not 0.1 s
    words = [("one", 0.2, 0.7), ("two", 0.9, 1.6), ("three", 1.6, 2.2)]
    assert locate_pauses([(0.7, 0.9), (1.5, 1.7)], words, "One, two three.") == [
        Pause(0.7, pytest.approx(0.2), "One,", True),
        Pause(1.5, pytest.approx(0.2), "two", False),
    ]


@pytest.mark.integration
@pytest.mark.slow
def test_whole_sentences_have_no_pause_off_punctuation() -> None:
    engine = VitsEngine(device="cpu", deterministic=True)
    try:
        voice = engine.open_voice("joe")
        model = load_asr_model()
        off: list[tuple[str, Pause]] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for text in TEXTS:
                pieces = [voice.synthesize(p.text) for p in split_text(text)]
                audio = to_asr_rate(np.concatenate(pieces), voice.sample_rate_hz)
                heard = transcribe_words(model, audio)
                pauses = locate_pauses(find_pauses(audio, ASR_RATE_HZ), heard, text)
                off += [(text, p) for p in pauses if not p.at_punctuation]
    finally:
        engine.close()
    assert off == []
