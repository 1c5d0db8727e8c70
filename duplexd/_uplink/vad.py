"""Voice activity detection on the uplink: silero-vad, and the speech/silence state machine.

`SileroVad` scores one 32 ms window (512 samples at 16 kHz) at a time with the ONNX model the
`silero-vad` package ships (no download). The ONNX session is loaded once per process and
shared; each stream keeps its own LSTM state and 64-sample context, so streams are independent.
ONNX Runtime runs it on one intra-op thread of its own: it does not touch torch's process-wide
thread pool (the VITS engine's), and it releases the GIL while it runs. Measured on this
machine's x86-64 core: about 0.2 ms per window (0.6 % of a core per session); the session
runs it in its uplink worker, off the event loop. Without onnxruntime the TorchScript model is
used instead (about 0.3 ms, one model per stream); `import silero_vad` sets torch to one
thread process-wide, so that import is wrapped in `torch_threads_preserved()`.

`SpeechDetector` turns window probabilities into events, all positions in 16 kHz samples:
`SpeechStart` once speech lasted `min_speech_ms`, `BargeIn` once it lasted
`barge_in_min_speech_ms` (default: the first window over the threshold; silero rejects
clicks, claps, typing, beeps and noise on its own, each < 0.2 here), `SpeechStop` after
`min_silence_ms` of silence and `Turn` (the span to transcribe, padded) with it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

VAD_RATE_HZ: Final = 16_000
WINDOW: Final = 512  # samples per VAD window at 16 kHz (32 ms)
WINDOW_MS: Final = WINDOW * 1000 / VAD_RATE_HZ
_CONTEXT: Final = 64  # silero's context samples carried over between windows

FloatArray = npt.NDArray[np.float32]


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class VadOptions:
    """Per-session VAD settings: Hello.options {"vad": {...}}; every key optional."""

    threshold: float = 0.5  # speech probability that counts as speech
    min_speech_ms: float = 150.0  # speech this long before SpeechStarted
    min_silence_ms: float = 500.0  # silence this long before SpeechStopped (end of turn)
    speech_pad_ms: float = 150.0  # audio kept around a turn for the transcript
    barge_in: bool = True  # interrupt the playing utterance when the user speaks
    barge_in_min_speech_ms: float = 30.0  # speech this long before barging in (whole windows)
    echo_cancel: bool = True  # remove the downlink's echo from the uplink before the VAD
    echo_threshold: float = 0.7  # barge-in needs this probability while echo is possible
    max_turn_s: float = 30.0  # a longer turn is transcribed in pieces of this length

    @property
    def neg_threshold(self) -> float:
        """Probability under which a window counts as silence (hysteresis, as silero does)."""
        return max(0.01, self.threshold - 0.15)


@dataclass(frozen=True, slots=True)
class AsrOptions:
    """Per-session transcript settings: Hello.options {"asr": {...}}."""

    transcripts: bool = True  # send a final Transcript after each turn
    partial_ms: float = 0.0  # > 0: a partial Transcript every this often while speaking


_RANGES: Final[dict[str, tuple[float, float]]] = {
    "threshold": (0.05, 0.99),
    "echo_threshold": (0.05, 0.99),
    "min_speech_ms": (0.0, 5000.0),
    "min_silence_ms": (32.0, 10_000.0),
    "speech_pad_ms": (0.0, 1000.0),
    "barge_in_min_speech_ms": (0.0, 5000.0),
    "max_turn_s": (1.0, 30.0),
    "partial_ms": (0.0, 10_000.0),
}


def _section(cls: type[Any], raw: object, name: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ValueError(f"options.{name} must be a JSON object")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        f = known.get(key)
        if f is None:
            continue  # unknown keys are ignored (SPEC §4.1)
        if f.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"options.{name}.{key} must be true or false")
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"options.{name}.{key} must be a number")
            lo, hi = _RANGES[key]
            if not (math.isfinite(value) and lo <= value <= hi):
                raise ValueError(f"options.{name}.{key} must be in {lo:g}..{hi:g}")
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def parse_duplex_options(options: str) -> tuple[VadOptions, AsrOptions]:
    """The "vad" and "asr" sections of Hello.options; ValueError says what is wrong."""
    obj = json.loads(options) if options else {}
    if not isinstance(obj, dict):
        raise ValueError("options must be a JSON object")
    return _section(VadOptions, obj.get("vad"), "vad"), _section(AsrOptions, obj.get("asr"), "asr")


# --------------------------------------------------------------------------- the model


@contextlib.contextmanager
def torch_threads_preserved() -> Iterator[None]:
    """Restore torch's process-wide thread count after the block (`import silero_vad` sets
    it to 1, which would slow the VITS engine down)."""
    import torch

    saved = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)


def silero_data_dir() -> Path:
    """The model files of the installed `silero-vad` package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("silero-vad is not installed (pip install silero-vad)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class _Scorer(Protocol):
    def __call__(self, window: FloatArray) -> float: ...


_onnx_lock = threading.Lock()
_onnx_session: Any = None


def _shared_onnx_session() -> Any:
    global _onnx_session
    with _onnx_lock:
        if _onnx_session is None:
            import onnxruntime

            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = 1  # 0.2 ms of work: more threads only add overhead
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            _onnx_session = onnxruntime.InferenceSession(
                str(silero_data_dir() / "silero_vad.onnx"),
                sess_options=opts,
                providers=["CPUExecutionProvider"],
            )
        return _onnx_session


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class SileroVad:
    """One stream's silero-vad: `prob(window)` for consecutive 512-sample 16 kHz windows.

    `backend`: "onnx" (default when onnxruntime is installed) or "jit" (TorchScript).
    Not thread-safe per instance; instances are independent.

    State refresh: over long stretches of room noise silero's recurrent state drifts and its
    response to a speech onset slows down (replaying a bench session's uplink: the first window
    over 0.7 came 0-1 windows after the onset's with a state under a few seconds old, up to 3
    windows later after ~20 s). So once `refresh_windows` windows have passed since the last
    reset and the last `QUIET_WINDOWS` all scored under `QUIET_PROB`, the state is reset
    (0 disables it). Speech is never cut: a reset only happens in quiet.
    """

    QUIET_WINDOWS: Final = 8
    QUIET_PROB: Final = 0.2

    def __init__(self, backend: str | None = None, *, refresh_windows: int = 32) -> None:
        self.refresh_windows = refresh_windows
        self._since_reset = 0
        self._quiet = 0
        self.backend = backend or ("onnx" if onnx_available() else "jit")
        self._input = np.zeros((1, _CONTEXT + WINDOW), dtype=np.float32)
        if self.backend == "onnx":
            self._session = _shared_onnx_session()
            self._state = np.zeros((2, 1, 128), dtype=np.float32)
            self._sr = np.array(VAD_RATE_HZ, dtype=np.int64)
        elif self.backend == "jit":
            with torch_threads_preserved(), warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning
                )
                from silero_vad import load_silero_vad

                self._jit = load_silero_vad(onnx=False)
        else:
            raise ValueError(f"unknown VAD backend {backend!r}")

    def reset(self) -> None:
        self._since_reset = self._quiet = 0
        self._input[:] = 0.0
        if self.backend == "onnx":
            self._state[:] = 0.0
        else:
            self._jit.reset_states()

    def prob(self, window: FloatArray) -> float:
        """Speech probability of the next 32 ms window (512 float samples in -1..1)."""
        if len(window) != WINDOW:
            raise ValueError(f"a VAD window is {WINDOW} samples, got {len(window)}")
        if self.backend == "onnx":
            buf = self._input
            buf[0, _CONTEXT:] = window
            out, self._state = self._session.run(
                None, {"input": buf, "state": self._state, "sr": self._sr}
            )
            buf[0, :_CONTEXT] = buf[0, -_CONTEXT:]
            prob = float(out[0, 0])
        else:
            import torch

            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(window))
                prob = float(self._jit(x, VAD_RATE_HZ))
        self._since_reset += 1
        self._quiet = self._quiet + 1 if prob < self.QUIET_PROB else 0
        if (
            self.refresh_windows
            and self._since_reset >= self.refresh_windows
            and self._quiet >= self.QUIET_WINDOWS
        ):
            self.reset()
        return prob


# --------------------------------------------------------------------------- state machine


@dataclass(frozen=True, slots=True)
class SpeechStart:
    sample: int  # first sample of the speech


@dataclass(frozen=True, slots=True)
class SpeechStop:
    sample: int  # first sample of the silence that ended it


@dataclass(frozen=True, slots=True)
class BargeIn:
    sample: int  # speech onset


@dataclass(frozen=True, slots=True)
class Turn:
    """Samples [start, end) to transcribe; `final` False for a partial result."""

    start: int
    end: int
    final: bool = True


VadEvent = SpeechStart | SpeechStop | BargeIn | Turn


class SpeechDetector:
    """Speech/silence decisions from per-window probabilities (16 kHz sample positions).

    `barge_in_threshold` is what a window must score to count toward a barge-in (the session
    raises it while its own voice may be echoing back).
    """

    def __init__(self, options: VadOptions, *, partial_ms: float = 0.0) -> None:
        self.options = options
        ms = VAD_RATE_HZ / 1000
        self._min_speech = max(1, round(options.min_speech_ms * ms))
        self._min_barge = max(1, round(options.barge_in_min_speech_ms * ms))
        self._min_silence = round(options.min_silence_ms * ms)
        self._pad = round(options.speech_pad_ms * ms)
        self._max_turn = round(options.max_turn_s * VAD_RATE_HZ)
        self._partial = round(partial_ms * ms)
        self.in_speech = False
        self._run_start: int | None = None  # candidate speech onset
        self._run = 0  # samples of speech in the candidate run
        self._barge_run = 0  # samples of the run above the barge-in threshold
        self._barged = False  # a barge-in fired for this run/turn
        self._silence_start: int | None = None
        self._turn_start = 0
        self._last_partial = 0

    def process(self, start: int, prob: float, barge_in_threshold: float) -> list[VadEvent]:
        """Feed the probability of the window [start, start + WINDOW); returns the events."""
        o = self.options
        end = start + WINDOW
        events: list[VadEvent] = []
        if prob >= o.threshold:
            if self._run_start is None:
                self._run_start, self._run, self._barge_run = start, 0, 0
            self._run += WINDOW
            self._barge_run = self._barge_run + WINDOW if prob >= barge_in_threshold else 0
            self._silence_start = None
            if o.barge_in and not self._barged and self._barge_run >= self._min_barge:
                self._barged = True
                events.append(BargeIn(self._run_start))
            if not self.in_speech and self._run >= self._min_speech:
                self.in_speech = True
                self._turn_start = self._run_start
                self._last_partial = end
                events.append(SpeechStart(self._run_start))
        elif not self.in_speech:
            self._run_start, self._run, self._barge_run, self._barged = None, 0, 0, False
        elif prob < o.neg_threshold:
            if self._silence_start is None:
                self._silence_start = start
            self._barge_run = 0
            if end - self._silence_start >= self._min_silence:
                stop = self._silence_start
                events.append(SpeechStop(stop))
                turn_start = max(0, self._turn_start - self._pad)
                events.append(Turn(turn_start, min(end, stop + self._pad)))
                self.in_speech = False
                self._run_start, self._run, self._barge_run, self._barged = None, 0, 0, False
                self._silence_start = None
        if self.in_speech:
            if end - self._turn_start >= self._max_turn:
                events.append(Turn(max(0, self._turn_start - self._pad), end))
                self._turn_start = self._last_partial = end
            elif self._partial and end - self._last_partial >= self._partial:
                self._last_partial = end
                events.append(Turn(max(0, self._turn_start - self._pad), end, final=False))
        return events
