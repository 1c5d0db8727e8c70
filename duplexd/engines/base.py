"""The engine interface: text in, PCM at the engine's native rate out.

An `Engine` is shared by every session of a process (one model per process); it hands out
`Voice` objects. `Voice.synthesize` is blocking and thread-safe: the daemon calls it from worker
threads, one text piece (a clause or sentence) at a time, so a barge-in stops synthesis at the
next piece boundary at the latest. An engine may batch concurrent calls from several threads
(the CUDA path does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatAudio = npt.NDArray[np.float32]


class EngineError(Exception):
    """Base class of engine errors."""


class UnknownVoiceError(EngineError, LookupError):
    """The requested voice is not installed or configured."""


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
