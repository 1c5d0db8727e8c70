"""The engine interface: text in, PCM at the engine's native rate out.

An `Engine` is shared by every session of a process (one model per process); it hands out
`Voice` objects. `Voice.synthesize` is blocking and thread-safe: the daemon calls it from worker
threads, one text piece (a clause or sentence) at a time, so a barge-in stops synthesis at the
next piece boundary at the latest. An engine may batch concurrent calls from several threads
(the CUDA path does).

A voice may also offer `for_utterance()`: the daemon then speaks each utterance through the
voice it returns, and calls that one's `release()` when the utterance ends (never blocking: a
model process's voice keeps an utterance's pieces on one connection, so that a model process
restarting finishes the utterances it began: `remote/client.py`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatAudio = npt.NDArray[np.float32]
_TOKEN_RE: Final = re.compile(r"\S+")
_SPOKEN_MARKS: Final = frozenset("&%@#")  # punctuation by Unicode's book, but read out


class EngineError(Exception):
    """Base class of engine errors."""


class UnknownVoiceError(EngineError, LookupError):
    """The requested voice is not installed or configured."""


class EngineUnavailableError(EngineError):
    """The engine cannot synthesize for now (its model process restarting or not answering):
    not a bug. The session whose utterance it was making ends with INTERNAL and what to do,
    with no traceback in the log; the others stay."""


@runtime_checkable
class Voice(Protocol):
    """One loaded voice of an engine."""

    @property
    def name(self) -> str: ...

    @property
    def sample_rate_hz(self) -> int:
        """Native output rate; the daemon resamples to the session's rate."""
        ...

    def synthesize(self, text: str) -> FloatAudio:
        """Speak `text`; returns mono float32 samples in [-1, 1] at `sample_rate_hz`.

        Blocking; called from a worker thread, never from the event loop. Thread-safe.
        Returns an empty array for text with nothing to say (punctuation only).
        """
        ...


@runtime_checkable
class StreamingVoice(Voice, Protocol):
    """A `Voice` that can also hand out a piece's audio while it is still being synthesized."""

    def synthesize_stream(self, text: str) -> Iterator[FloatAudio]:
        """Speak `text` as consecutive chunks (mono float32 at `sample_rate_hz`).

        Their concatenation equals `synthesize(text)` (up to float rounding); the first chunk
        comes early, so audio can start before the whole piece is synthesized. Blocking per
        chunk; called from a worker thread; thread-safe as `synthesize`. A consumer may stop
        early: it closes the iterator (or drops it), which releases what it holds. Yields
        nothing for text with nothing to say.
        """
        ...


def text_words(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of `text`, as word timing counts them: runs of
    non-whitespace that hold a letter, a digit, a symbol or one of ``& % @ #``, with any
    punctuation attached ("there," "(really?)"); a run of punctuation alone, such as "--",
    is not a word."""
    return list(iter_text_words(text))


def iter_text_words(text: str) -> Iterator[tuple[int, int]]:
    """`text_words(text)`, one span at a time: a caller that needs only the words up to some
    character stops there and pays for no more (the tone voice, chunk by chunk)."""
    for m in _TOKEN_RE.finditer(text):
        if any(unicodedata.category(ch)[0] in "LNS" or ch in _SPOKEN_MARKS for ch in m.group()):
            yield m.span()


@dataclass(frozen=True, slots=True)
class WordMark:
    """Where one word of a piece is spoken: characters [`start_char`, `end_char`) of the text
    given to the voice (the word with any punctuation attached to it, no whitespace), and
    samples [`start_sample`, `end_sample`) of that text's audio at the voice's rate."""

    start_char: int
    end_char: int
    start_sample: int
    end_sample: int


@runtime_checkable
class WordTimedVoice(Voice, Protocol):
    """A `Voice` that also says where each word of a piece is spoken (word timing)."""

    def synthesize_words(self, text: str) -> Iterator[tuple[FloatAudio, Sequence[WordMark]]]:
        """`synthesize_stream(text)`'s chunks, each with the marks of the words that became
        known with it: every word of `text` once, in text order, its mark given with or
        before the chunk where its audio starts; samples count from the start of the
        piece's audio, never decrease from one mark to the next, and lie within it.
        Blocking per chunk, thread-safe, closed early as `synthesize_stream`."""
        ...


@dataclass(frozen=True, slots=True)
class VoiceKind:
    """What a voice can do beyond `synthesize`: `streaming` (a `StreamingVoice`), `timed` (a
    `WordTimedVoice`)."""

    streaming: bool
    timed: bool


def voice_kind(voice: Voice) -> VoiceKind:
    """`voice`'s `VoiceKind`, looked up once per class: an `isinstance` against a runtime
    protocol checks every member by name (17-19 µs on CPython 3.11, measured), and the
    producer asked twice per utterance, on the path to its first audio. A voice's methods are
    its class's, so the answer holds for every instance."""
    kind = _KINDS.get(type(voice))
    if kind is None:
        kind = VoiceKind(
            streaming=isinstance(voice, StreamingVoice), timed=isinstance(voice, WordTimedVoice)
        )
        _KINDS[type(voice)] = kind
    return kind


_KINDS: dict[type, VoiceKind] = {}  # one entry per voice class (classes are few)


@runtime_checkable
class Engine(Protocol):
    """A TTS engine: a named factory of voices, shared by all sessions of a process.

    Optional attribute `synthesis_threads: int | None`: how many of its synthesize calls
    (one chunk each) the daemon runs at once across sessions. Absent: one per CPU the daemon
    may use (an engine that computes in the calling thread holds the GIL; more threads only
    hold the event loop back). None: no limit, for an engine whose calls only wait for work
    done elsewhere (its own inference thread, a GPU batcher), so their batches are not split."""

    @property
    def name(self) -> str: ...

    @property
    def device(self) -> str:
        """Where inference runs: "cpu", "cuda", "cuda:1"..."""
        ...

    def voices(self) -> list[str]:
        """Names of the voices this engine can load."""
        ...

    @property
    def default_voice(self) -> str: ...

    def open_voice(self, name: str) -> Voice:
        """Load (or reuse) a voice. Blocking: call from a worker thread.

        Raises `UnknownVoiceError` for a voice that is not available.
        """
        ...

    def close(self) -> None:
        """Release models and threads. Idempotent."""
        ...
