"""One Whisper decode over a window cut to the clip, not Whisper's 30 s.

faster-whisper pads every clip to 30 s of features before the encoder, and on a CPU that
encoder pass is most of a decode: for a 3 s turn with Whisper tiny.en on two cores, 400 of
~420 ms. CTranslate2's encoder takes any length, and the decoder's cross-attention reads
whatever the encoder gave it, so here a clip is encoded in a window of its own length plus
`PAD_S` of silence, at least `MIN_WINDOW_S`, in whole seconds (few shapes recur), and decoded
from that. `python -m bench.asr_window`: 148 ms a turn against 419 ms (p50), WER 2.7 % against
2.2 % (punctuation, "quite"/"quiet").

Whisper has only ever seen clips padded to 30 s, and a short window makes it loop: with 3-5 s
windows it said "Can you tell me what the weather is like today? Can you tell me what the"
and "today. Today. Today..." on clips the 30 s window got right; from 10 s on, the bench's
clips came out as in the 30 s window but for one. So a text that `looped` is decoded again in
the 30 s window (1 of 96 clips in the bench). A clip that does not fit one window (`fits`)
takes faster-whisper's own path (`transcribe`, 30 s windows).

The decode follows faster-whisper's `transcribe` for one window at temperature 0 without
timestamps: the same prompt (previous text after `<|startofprev|>`), suppressed tokens,
no-speech check (skipped when no-speech probability > 0.6 and average log-probability < -1),
and for words its `find_alignment` and punctuation merging.

A decode for the end of a turn also says how sure Whisper is that the sentence ends where the
clip does (`Heard.end_mark`): the probability its decoder gave a sentence's end mark (". ? !")
right after the last word, read from the step's log-probabilities (~2 % more decoder time).
Whisper hears the voice as well as the words there: on `python -m bench.end_marks`' clips of
the bundled voice, the heads of sentences cut where a speaker might pause (whose text may end
a sentence: "Can you play?" of "Can you play | some quiet music") score 0.46 / 0.58 at p25 /
p50, the sentences spoken to their end 0.80 / 0.87 (p5 0.75), and with a pause inside them
0.79 / 0.86 (p5 0.66). It moves with where the speech sits in the window, by up to ~0.1.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

PAD_S: Final = 2.0  # silence after the clip in its window
MIN_WINDOW_S: Final = 10  # ... and a window never shorter than this
LOOP_WORDS: Final = 3  # a phrase this long said twice is a loop (`looped`)
# with `Decoding.cut_loops`: no n-gram of this many tokens generated twice (a held sound's
# decode after its prompt: `python -m bench.hold_words`, p95 149 -> 104 ms, the same words)
NO_REPEAT_TOKENS: Final = 2
MAX_WINDOW_S: Final = 30.0  # Whisper's window: longer clips take faster-whisper's path
FRAMES_PER_S: Final = 100  # Whisper's features
NO_SPEECH_PROB: Final = 0.6  # faster-whisper's defaults for "this window is silence"
LOG_PROB_FLOOR: Final = -1.0
_PREPEND: Final = "\"'\u201c\u00bf([{-"  # faster-whisper's punctuation merged into words
_APPEND: Final = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"
END_MARKS: Final = (".", "?", "!")  # a sentence's end, as Whisper writes it (`Heard.end_mark`)


class Unwanted(Exception):
    """The clip's text was no longer wanted once its encoder had run (`Decoding.wanted`): its
    decoder was not run."""


@dataclass(frozen=True, slots=True)
class Heard:
    """A decode's text, and for a decode asked for it (`Decoding.end_mark`) the probability
    that the sentence ends where the clip does: Whisper's for an end mark (`END_MARKS`) right
    after the last word, whether or not it wrote one. None: not asked, no words, or not known
    (a clip decoded in 30 s windows, or by a beam search)."""

    text: str
    end_mark: float | None = None


def fits(audio: npt.NDArray[np.float32], rate_hz: int) -> bool:
    """Whether `audio` and its padding fit one window."""
    return len(audio) / rate_hz + PAD_S <= MAX_WINDOW_S


@functools.lru_cache(maxsize=4)
def _tokenizer(model: Any, language: str | None) -> Any:
    from faster_whisper.tokenizer import Tokenizer

    return Tokenizer(
        model.hf_tokenizer,
        model.model.is_multilingual,
        task="transcribe",
        language=language if model.model.is_multilingual else "en",
    )


@functools.lru_cache(maxsize=4)
def _end_mark_ids(tokenizer: Any) -> tuple[int, ...]:
    ids = [tokenizer.encode(mark) for mark in END_MARKS]
    return tuple(i[0] for i in ids if len(i) == 1)


def _window_frames(frames: int) -> int:
    """The cut window for a clip of `frames` feature frames, in frames (whole seconds with
    its padding, at least `MIN_WINDOW_S`, at most Whisper's: few shapes recur)."""
    seconds = max(MIN_WINDOW_S, math.ceil(frames / FRAMES_PER_S + PAD_S))
    return int(FRAMES_PER_S * min(MAX_WINDOW_S, seconds))


def window_s(samples: int, rate_hz: int) -> float:
    """The length of the window cut to a clip of `samples` (`_window_frames`)."""
    frames = min(math.ceil(samples * FRAMES_PER_S / rate_hz), int(MAX_WINDOW_S * FRAMES_PER_S))
    return _window_frames(frames) / FRAMES_PER_S


def _features(
    model: Any, audio: npt.NDArray[np.float32], *, whole: bool
) -> tuple[npt.NDArray[np.float32], int]:
    """`audio`'s features padded to its window (`whole`: Whisper's 30 s), and the clip's
    length in frames."""
    features = model.feature_extractor(audio)
    frames = min(features.shape[-1], int(MAX_WINDOW_S * FRAMES_PER_S))
    window = int(FRAMES_PER_S * MAX_WINDOW_S) if whole else _window_frames(frames)
    padded = np.zeros((features.shape[0], window), dtype=features.dtype)  # as `pad_or_trim`
    padded[:, :frames] = features[:, :frames]
    return padded, frames


def _encode(model: Any, audio: npt.NDArray[np.float32], *, whole: bool) -> tuple[Any, int]:
    """The encoder's output for `audio` in its window (`whole`: Whisper's 30 s), and the
    clip's length in frames."""
    padded, frames = _features(model, audio, whole=whole)
    return model.encode(padded), frames


def _sequence(tokenizer: Any, max_length: int, how: Decoding) -> list[int]:
    """The decoder's prompt: the text before the clip, then the start of a transcript."""
    sequence: list[int] = []
    if how.prompt:
        sequence.append(tokenizer.sot_prev)
        sequence.extend(tokenizer.encode(" " + how.prompt.strip())[-(max_length // 2 - 1) :])
    sequence.extend(tokenizer.sot_sequence)
    sequence.append(tokenizer.no_timestamps)
    return sequence


def _generate(
    model: Any, encoded: Any, tokenizer: Any, how: Decoding
) -> tuple[list[int], float | None]:
    """Greedy (or beam) text tokens of one window ([] when the window is silence), and with
    `how.end_mark` the probability of an end mark after them (`_end_mark`; else None, and for
    a beam search, whose steps' probabilities CTranslate2 does not give per step)."""
    return _generate_all(model, encoded, tokenizer, [how])[0]


def _generate_all(
    model: Any, encoded: Any, tokenizer: Any, hows: list[Decoding]
) -> list[tuple[list[int], float | None]]:
    """`_generate` for a batch of windows in one call (`batch_key`: decoded alike but for
    their prompts, end marks and bounds); each one's tokens end at its own bound."""
    from faster_whisper.transcribe import get_suppressed_tokens

    max_length = model.max_length
    first = hows[0]
    sequences = [_sequence(tokenizer, max_length, how) for how in hows]
    bounds = [
        min(max_length, len(q) + how.max_new_tokens) for q, how in zip(sequences, hows, strict=True)
    ]
    results = model.model.generate(
        encoded,
        sequences,
        max_length=max(bounds),
        no_repeat_ngram_size=NO_REPEAT_TOKENS if first.cut_loops else 0,
        return_scores=True,
        return_logits_vocab=(marked := any(how.end_mark for how in hows) and first.beam_size == 1),
        return_no_speech_prob=True,
        suppress_blank=True,
        suppress_tokens=list(get_suppressed_tokens(tokenizer, [-1])),
        beam_size=first.beam_size,
    )
    out: list[tuple[list[int], float | None]] = []
    for result, q, bound, how in zip(results, sequences, bounds, hows, strict=True):
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot][: bound - len(q)]
        avg_log_prob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_PROB and avg_log_prob < LOG_PROB_FLOOR:
            out.append(([], None))
            continue
        mark = _end_mark(result.logits[0], tokens, tokenizer) if marked and how.end_mark else None
        out.append((tokens, mark))
    return out


def _end_mark(steps: Any, tokens: list[int], tokenizer: Any) -> float | None:
    """The probability of an end mark at the step after the last word of `tokens` (the step
    that wrote the end mark, or what came instead: the end of text, a comma, more words).
    `steps`: the decoder's log-probabilities, one vector a generated token."""
    marks = _end_mark_ids(tokenizer)
    step = len(tokens) - (1 if tokens[-1:] and tokens[-1] in marks else 0)
    if not tokens or step >= len(steps):
        return None
    logp = np.asarray(steps[step], dtype=np.float64)
    p = np.exp(logp - logp.max())  # (normalized again: the log-probabilities as given)
    return float(p[list(marks)].sum() / p.sum())


_LOOP_WORD: Final = re.compile(r"[a-z0-9']+", re.IGNORECASE | re.ASCII)


def _loop_at(text: str) -> int | None:
    """Where in `text` its first repetition (as `looped` has it) begins, None if none."""
    found = list(_LOOP_WORD.finditer(text))
    words = [m.group().lower() for m in found]
    repeats: list[int] = []
    for n in range(1, LOOP_WORDS):
        repeats.extend(
            i + n
            for i in range(len(words) - 2 * n + 1)
            if words[i : i + n] == words[i + n : i + 2 * n]
        )
    first: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - LOOP_WORDS + 1):
        if first.setdefault(tuple(words[i : i + LOOP_WORDS]), i) <= i - LOOP_WORDS:
            repeats.append(i)
            break
    return found[min(repeats)].start() if repeats else None


def looped(text: str) -> bool:
    """Whether `text` says a word or two twice in a row ("today? Today."), or a phrase of
    `LOOP_WORDS` or more twice anywhere ("she loves it there. And she loves it there."): what
    a Whisper stuck in a loop writes (and, rarely, a speaker: the 30 s window then says it
    again). Linear in the words: any longer repetition repeats a phrase of `LOOP_WORDS`."""
    return _loop_at(text) is not None


def unlooped(text: str) -> str:
    """`text` up to its first repetition ("Hold on. Hold on. Hold on." -> "Hold on."; a
    speaker's own "no, no" -> "no"): a looped decode, cut where the loop began."""
    at = _loop_at(text)
    return text if at is None else text[:at].rstrip(" ,;:-")


@dataclass(frozen=True, slots=True)
class Decoding:
    """How one clip is decoded: the text before it (Whisper's prompt), its language, the
    beam, and the bound on its tokens. `cut_loops`: no pair of tokens is generated twice
    (`NO_REPEAT_TOKENS`), and a text that loops anyway is cut where the loop began
    (`unlooped`) instead of decoded again in the 30 s window (about four times the work):
    for a short sound whose words matter more than their transcript (a held one)."""

    prompt: str | None
    language: str | None
    beam_size: int
    max_new_tokens: int
    cut_loops: bool = False
    end_mark: bool = False  # also how sure Whisper is that the sentence ends there (`Heard`)
    # asked between the encoder and the decoder (in the decode's thread): False, the text is
    # no longer wanted and the decoder, ~40 % of a decode, is not run (`Unwanted`)
    wanted: Callable[[], bool] | None = field(default=None, compare=False)


def still_wanted(how: Decoding) -> bool:
    """Whether the clip's text is still wanted (`Decoding.wanted`; none: always)."""
    wanted = how.wanted
    return wanted is None or wanted()


def _decode(
    model: Any, audio: npt.NDArray[np.float32], how: Decoding
) -> tuple[list[int], float | None, Any, int]:
    """Text tokens of `audio`, their end mark's probability (`_generate`), the encoder output
    they came from and the clip's frames: in a
    window cut to it, or (unless `how.cut_loops`) again in Whisper's 30 s one if that text
    `looped`."""
    tokenizer = _tokenizer(model, how.language)
    for whole in (False,) if how.cut_loops else (False, True):
        encoded, frames = _encode(model, audio, whole=whole)
        if not still_wanted(how):
            raise Unwanted
        tokens, end_mark = _generate(model, encoded, tokenizer, how)
        if not looped(tokenizer.decode(tokens)):
            break
    return tokens, end_mark, encoded, frames


def decode_text(model: Any, audio: npt.NDArray[np.float32], how: Decoding) -> Heard:
    """The text of `audio` (16 kHz; `fits`), decoded in a window cut to it. Raises
    `Unwanted` if `how.wanted` says so once the encoder has run."""
    tokens, end_mark, _encoded, _frames = _decode(model, audio, how)
    text: str = _tokenizer(model, how.language).decode(tokens).strip()
    if how.cut_loops and (cut := unlooped(text)) != text:
        return Heard(cut)  # (where the loop began, no mark is known)
    return Heard(text, end_mark)


def batch_key(
    audio: npt.NDArray[np.float32], rate_hz: int, how: Decoding
) -> tuple[Any, ...] | None:
    """What clips decoded together in one call (`decode_texts`) must share: the window's
    length, the language, how loops are handled and the prompt (CTranslate2 wants a batch's
    transcripts to start at one position); None for a clip that is not decoded in a cut
    window (`fits`) or by a beam search."""
    if not fits(audio, rate_hz) or how.beam_size != 1:
        return None
    return (window_s(len(audio), rate_hz), how.language, how.cut_loops, how.prompt or None)


def decode_texts(
    model: Any, audios: list[npt.NDArray[np.float32]], hows: list[Decoding]
) -> list[Heard | None]:
    """`decode_text` of several clips of one `batch_key` in one encoder call and one decoder
    call (`python -m bench.asr_batch`: on two cores 155 ms a clip alone, 76 ms in fours, the
    same texts); a text that `looped` is decoded again alone, as `decode_text` does. A clip
    no longer wanted once the encoder has run (`Decoding.wanted`) is None; the decoder runs
    for a group of clips unless none of them is wanted."""
    tokenizer = _tokenizer(model, hows[0].language)
    features = [_features(model, audio, whole=False)[0] for audio in audios]
    shapes: dict[tuple[int, ...], list[int]] = {}  # (`window_s` is the window's length: but
    for i, f in enumerate(features):  # a clip at a whole second's edge may come out one over)
        shapes.setdefault(f.shape, []).append(i)
    found: dict[int, tuple[list[int], float | None]] = {}
    unwanted: set[int] = set()
    for group in shapes.values():
        encoded = model.encode(np.stack([features[i] for i in group]))
        unwanted.update(i for i in group if not still_wanted(hows[i]))
        if unwanted.issuperset(group):
            continue
        decoded = _generate_all(model, encoded, tokenizer, [hows[i] for i in group])
        found.update(zip(group, decoded, strict=True))
    out: list[Heard | None] = []
    for i, (audio, how) in enumerate(zip(audios, hows, strict=True)):
        if i in unwanted:
            out.append(None)
            continue
        tokens, mark = found[i]
        text: str = tokenizer.decode(tokens).strip()
        if not looped(text):
            out.append(Heard(text, mark))
        elif how.cut_loops:
            out.append(Heard(unlooped(text)))  # (where the loop began, no mark is known)
        else:  # in Whisper's 30 s window
            encoded_whole, _frames = _encode(model, audio, whole=True)
            tokens, mark = _generate(model, encoded_whole, tokenizer, how)
            out.append(Heard(tokenizer.decode(tokens).strip(), mark))
    return out


def decode_words(
    model: Any, audio: npt.NDArray[np.float32], how: Decoding
) -> list[tuple[str, float, float]]:
    """The words of `audio` (16 kHz; `fits`) with their (start, end) in seconds from its
    start, as faster-whisper's word timestamps align them."""
    from faster_whisper.transcribe import merge_punctuations

    tokens, _mark, encoded, frames = _decode(model, audio, how)
    if not tokens:
        return []
    (alignment,) = model.find_alignment(_tokenizer(model, how.language), [tokens], encoded, frames)
    merge_punctuations(alignment, _PREPEND, _APPEND)
    return [(a["word"], float(a["start"]), float(a["end"])) for a in alignment if a["word"]]
