"""Voice activity detection on the uplink: silero-vad, and the speech/silence state machine.

`SileroVad` scores one 32 ms window (512 samples at 16 kHz) at a time with the ONNX model the
`silero-vad` package ships (no download). The model (`VadModel`) is loaded once per daemon and
shared; each stream keeps its own LSTM state and 64-sample context, so streams are independent.
ONNX Runtime runs it on one intra-op thread of its own: it does not touch torch's process-wide
thread pool (the VITS engine's), and it releases the GIL while it runs; the session runs it in
its uplink worker, off the event loop (its cost per window: `python -m bench.uplink_cpu`).
Without onnxruntime the TorchScript model is used instead (one model per stream);
`import silero_vad` sets torch to one thread process-wide, so that import is wrapped in
`torch_threads_preserved()`.

`SpeechDetector` turns window probabilities into events, all positions in 16 kHz samples:
`SpeechStart` once speech lasted `min_speech_ms`, `BargeIn` once it lasted
`barge_in_min_speech_ms` (default: the first window over the threshold; silero rejects
clicks, claps, typing, beeps and noise on its own: tests/test_vad.py), `SpeechStop` when the
turn ends and `Turn` (the span to transcribe, padded) with it. A fixed end (`smart=False`)
comes after `min_silence_ms` of silence, counted from where the voice fell quiet by its
level (`quiet.py`: silero hears it 120-260 ms late; in a quiet room the level alone starts
it). A smart end asks the turn model
(`turn.py`) once the silence has lasted `min_silence_ms`: the detector emits `EndCandidate`
and the uplink answers with `verdict(id, complete)` when the model has spoken; "complete"
ends the turn where the silence began. Otherwise, with `smart_reask_ms` > 0 (off by default),
the model is asked again each time the silence has lasted that much longer (it hears a
finished sentence's end as unfinished at 200 ms of silence and as finished at 400 often
enough: "The meeting is on Tuesday afternoon." 0.45 / 0.85 on the bundled voice; but also a
mid-sentence pause, "Could you turn the lights in" 0.19 / 0.87: bench/results/turns-reask/),
and the turn ends after `max_silence_ms` regardless, unless the user speaks on (the same turn
goes on; a later silence is a new candidate).
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..protocol.frames import TurnEndBy
from ..protocol.options import VadOptions

VAD_RATE_HZ: Final = 16_000
WINDOW: Final = 512  # samples per VAD window at 16 kHz (32 ms)
WINDOW_MS: Final = WINDOW * 1000 / VAD_RATE_HZ
_CONTEXT: Final = 64  # silero's context samples carried over between windows

FloatArray = npt.NDArray[np.float32]


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


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class VadModel:
    """silero-vad's model, loaded once per daemon and shared by every stream.

    `backend`: "onnx" (the default when onnxruntime is installed: one `InferenceSession`,
    thread-safe, that every stream runs with its own state) or "jit" (TorchScript: each
    stream then loads its own copy, as the TorchScript model keeps its state inside).
    Blocking (loads a file): build it before serving.
    """

    def __init__(self, backend: str | None = None) -> None:
        self.backend = backend or ("onnx" if onnx_available() else "jit")
        if self.backend not in ("onnx", "jit"):
            raise ValueError(f"unknown VAD backend {backend!r}")
        self.session: Any = None
        if self.backend == "onnx":
            import onnxruntime

            opts = onnxruntime.SessionOptions()
            opts.intra_op_num_threads = 1  # a window is little work: more threads add overhead
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            self.session = onnxruntime.InferenceSession(
                str(silero_data_dir() / "silero_vad.onnx"),
                sess_options=opts,
                providers=["CPUExecutionProvider"],
            )

    def load_jit(self) -> Any:
        """A TorchScript model of its own, for one stream (backend "jit")."""
        with torch_threads_preserved(), warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning
            )
            from silero_vad import load_silero_vad

            return load_silero_vad(onnx=False)


class SileroVad:
    """One stream's silero-vad: `prob(window)` for consecutive 512-sample 16 kHz windows.

    `model`: the daemon's shared `VadModel` (None: a model of its own). Not thread-safe per
    instance; instances are independent (each keeps its own recurrent state).

    State refresh: over long stretches of room noise silero's recurrent state drifts and its
    response to a speech onset slows down (replaying a bench session's uplink: the first window
    over 0.7 came 0-1 windows after the onset's with a state under a few seconds old, up to 3
    windows later after ~20 s). So once `refresh_windows` windows have passed since the last
    reset and the last `QUIET_WINDOWS` all scored under `QUIET_PROB`, the state is reset
    (0 disables it). Speech is never cut: a reset only happens in quiet.
    """

    QUIET_WINDOWS: Final = 8
    QUIET_PROB: Final = 0.2

    def __init__(self, model: VadModel | None = None, *, refresh_windows: int = 32) -> None:
        model = model if model is not None else VadModel()
        self.refresh_windows = refresh_windows
        self._since_reset = 0
        self._quiet = 0
        self.backend = model.backend
        self._input = np.zeros((1, _CONTEXT + WINDOW), dtype=np.float32)
        if self.backend == "onnx":
            self._session = model.session
            self._state = np.zeros((2, 1, 128), dtype=np.float32)
            self._sr = np.array(VAD_RATE_HZ, dtype=np.int64)
        else:
            self._jit = model.load_jit()

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
    """The turn ended: `sample` is the first sample of the silence that ended it; `heard`
    where the audio heard when it was decided ended (a smart end: when it was asked about),
    and `by` what decided (a smart end: MODEL, until the uplink says which answered)."""

    sample: int
    heard: int = field(default=-1, compare=False)
    by: TurnEndBy = field(default=TurnEndBy.SILENCE, compare=False)


@dataclass(frozen=True, slots=True)
class BargeIn:
    sample: int  # speech onset


@dataclass(frozen=True, slots=True)
class Turn:
    """Samples [start, end) to transcribe; `final` False for a partial result; `stop`: where
    the silence that ended it began (-1: not ended by a silence)."""

    start: int
    end: int
    final: bool = True
    stop: int = -1


@dataclass(frozen=True, slots=True)
class Speculate:
    """The user has been silent (by silero, or by the level alone: `quiet`) since `stop` for
    `SPECULATE_MS`: the turn may end there, so its transcript [start, end) can be made now
    (`speculate`), ready if it does (`Turn.stop` == `stop`). Once the silence has lasted the
    turn's pad (`speech_pad_ms`, and `SPECULATE_MS` at least) it is `padded` (the same silence
    comes again if it came sooner): the turn model is asked about it (`smart`: the model hears
    that much silence), and a held soft barge-in's sound is transcribed from it (its words
    check hears that much too). `quiet`: made from the level's quiet line alone, before silero
    (or the floor) heard the silence, and only padded (in a noisy room that line may cut a
    word's quiet tail): worth it only while the models are idle (the same silence comes again
    as a heard one, if it is one)."""

    start: int
    end: int
    stop: int
    quiet: bool = False
    padded: bool = False


@dataclass(frozen=True, slots=True)
class EndCandidate:
    """The user has been silent `min_silence_ms`: is the turn [start, end) complete? Answer
    with `SpeechDetector.verdict(id, ...)`. `again`: the same silence asked about again, later
    (`smart_reask_ms`): an answer made ahead for this silence is not one for this question."""

    id: int
    start: int
    end: int
    stop: int = -1  # where the silence began (its `Speculate.stop`)
    again: bool = False


VadEvent = SpeechStart | SpeechStop | BargeIn | Turn | EndCandidate | Speculate

# silence this long in a turn, by silero or by the level (`quiet.py`, before silero hears
# it): transcribe it ahead of its end (and once it has lasted `speech_pad_ms`, the audio a
# final turn keeps after its silence began, judge it: the turn model hears the silence too)
SPECULATE_MS: Final = 64.0
MAX_BACKDATE_MS: Final = 250.0  # a silence starts at most this long before silero hears it
SMART_MIN_SILENCE_MS: Final = 200.0  # `min_silence_ms` unset: with a smart end ...
FIXED_MIN_SILENCE_MS: Final = 500.0  # ... and without one


class SpeechDetector:
    """Speech/silence decisions from per-window probabilities (16 kHz sample positions).

    `barge_in_threshold` is what a window must score to count toward a barge-in (the session
    raises it while its own voice may be echoing back). `smart`: end turns with the turn
    model's verdicts (when `options.smart_end` asks for it and the server has the model).
    `speculate`: the turn is transcribed ahead of its end. Either one makes `Speculate`
    events (the turn may end at this silence: prepare).
    """

    def __init__(
        self,
        options: VadOptions,
        *,
        partial_ms: float = 0.0,
        smart: bool = False,
        speculate: bool = False,
    ) -> None:
        self.options = options
        self.smart = smart and options.smart_end
        ms = VAD_RATE_HZ / 1000
        self._min_speech = max(1, round(options.min_speech_ms * ms))
        self._min_barge = max(1, round(options.barge_in_min_speech_ms * ms))
        min_silence = options.min_silence_ms
        if min_silence is None:
            min_silence = SMART_MIN_SILENCE_MS if self.smart else FIXED_MIN_SILENCE_MS
        self.min_silence_ms = min_silence
        self._min_silence = round(min_silence * ms)
        self._max_silence = max(self._min_silence, round(options.max_silence_ms * ms))
        self._candidates = 0  # EndCandidates made so far: the next one's id
        self._asked: int | None = None  # the first candidate of the silence now going on
        self._reask = round(options.smart_reask_ms * ms)
        self._next_ask = self._min_silence  # the silence at which the model is asked next
        self._ask_from = 0  # the start of the questions' turn (a `max_turn_s` cut may follow)
        self._pad = round(options.speech_pad_ms * ms)
        self._max_turn = round(options.max_turn_s * VAD_RATE_HZ)
        self._partial = round(partial_ms * ms)
        # Speculate events once a silence has lasted this long (0: none), padded ones this
        ahead = speculate or self.smart
        self._padded = max(round(SPECULATE_MS * ms), self._pad) if ahead else 0
        self._speculate = round(SPECULATE_MS * ms) if speculate else self._padded
        # quiet?: the silence last speculated on so, and whether padded yet
        self._spec_stops: dict[bool, tuple[int, bool]] = {}
        self._backdate = round(MAX_BACKDATE_MS * ms)
        self._heard_silence = 0  # where silero (or the floor) heard the silence going on begin
        self.in_speech = False
        self._run_start: int | None = None  # candidate speech onset
        self._stretch_start = 0  # in a turn: where its speech began again after a silence
        self._run = 0  # samples of speech in the candidate run
        self._barge_run = 0  # samples of the run above the barge-in threshold
        self._barged = False  # a barge-in fired for this run (in a turn: this stretch)
        # the sound a barge-in acted on before its turn began (its onset, and the end of its
        # last window of speech): a run broken by a window or two is still that sound, and
        # the turn it becomes starts where it began (`_sound_onset`)
        self._sound_start: int | None = None
        self._sound_end = 0
        self._silence_start: int | None = None
        self._turn_start = 0
        self._last_partial = 0
        self._end = 0  # end of the last window processed

    def process(
        self,
        start: int,
        prob: float,
        barge_in_threshold: float,
        quiet_since: int | None = None,
        silent_since: int | None = None,
    ) -> list[VadEvent]:
        """Feed the probability of the window [start, start + WINDOW); returns the events.
        `quiet_since`: where the voice fell quiet by its level (`quiet.QuietTracker`), if it is
        quiet at the window's end: a silence silero hears begins there (`MAX_BACKDATE_MS` back at
        most, never before the turn), not where silero's verdict came (120-260 ms later).
        `silent_since`: where the level fell to the room's floor, in a quiet room
        (`QuietTracker.silent_since`): a window wholly there in a turn is silence whatever
        silero says."""
        o = self.options
        end = start + WINDOW
        events: list[VadEvent] = []
        by_level = (
            self.in_speech and silent_since is not None and self._turn_start < silent_since <= start
        )
        if prob >= o.threshold and not by_level:
            if self._run_start is None:
                self._run_start, self._run, self._barge_run = start, 0, 0
            if self.in_speech and self._silence_start is not None:
                # the user speaks on after a silence: the same turn, but another stretch of
                # speech, which may barge in on what began playing meanwhile (a reply the app
                # started before the turn ended: it would have played on over the user)
                self._stretch_start, self._barge_run, self._barged = start, 0, False
            self._run += WINDOW
            self._barge_run = self._barge_run + WINDOW if prob >= barge_in_threshold else 0
            self._silence_start = self._asked = None  # the user speaks on: the same turn
            if o.barge_in and not self._barged and self._barge_run >= self._min_barge:
                self._barged = True
                events.append(BargeIn(self._stretch_start if self.in_speech else self._run_start))
                self._barged_sound(end)
            if not self.in_speech:
                self._sound_end = end
                if self._run >= self._min_speech:
                    self.in_speech = True
                    onset = self._sound_onset()
                    self._turn_start = self._stretch_start = onset
                    self._last_partial = end
                    events.append(SpeechStart(onset))
        elif not self.in_speech:
            self._run_start, self._run, self._barge_run, self._barged = None, 0, 0, False
            if self._sound_start is not None and end - self._sound_end >= self._min_silence:
                self._sound_start = None  # (the sound is over: the next one is another)
        elif prob < o.neg_threshold or by_level:
            if self._silence_start is None:
                self._heard_silence = began = start
                if quiet_since is not None and self._turn_start < quiet_since < start:
                    began = max(quiet_since, start - self._backdate)
                self._silence_start = began
                self._asked, self._next_ask = None, self._min_silence
                self._ask_from = max(0, self._turn_start - self._pad)
            self._barge_run = 0
            silence = end - self._silence_start
            if self._speculate and silence >= self._speculate:
                self._speculate_on(self._silence_start, end, events, quiet=False)
            if not self.smart:
                if silence >= self._min_silence:
                    self._end_turn(end, events, TurnEndBy.SILENCE)
            elif silence >= self._max_silence:
                self._end_turn(end, events, TurnEndBy.MAX_SILENCE)
            elif silence >= self._next_ask:
                again = self._asked is not None
                if not again:
                    self._asked = self._candidates
                reask = max(self._next_ask + self._reask, silence + 1)
                self._next_ask = reask if self._reask else self._max_silence
                stop = self._silence_start
                events.append(EndCandidate(self._candidates, self._ask_from, end, stop, again))
                self._candidates += 1
        if (
            self._speculate
            and self.in_speech
            and self._silence_start is None  # silero still hears speech, the level does not
            and quiet_since is not None
            and quiet_since > self._turn_start
            # (the quiet line alone may cut a word's quiet tail in a noisy room: at the pad)
            and end - quiet_since >= self._padded
        ):
            self._speculate_on(quiet_since, end, events, quiet=True)
        if self.in_speech:
            if end - self._turn_start >= self._max_turn:
                events.append(Turn(max(0, self._turn_start - self._pad), end))
                self._turn_start = self._last_partial = end
            elif (
                self._partial
                and self._silence_start is None  # not in a silence: nothing new to hear
                and end - self._last_partial >= self._partial
            ):
                self._last_partial = end
                events.append(Turn(max(0, self._turn_start - self._pad), end, final=False))
        self._end = end
        return events

    @property
    def barged(self) -> bool:
        """Whether a barge-in fired for the sound now going on (in a turn: its stretch)."""
        return self._barged

    @property
    def barges_in_one_window(self) -> bool:
        """Whether one window over the thresholds barges in (`barge_in_between` can)."""
        return self.options.barge_in and self._min_barge <= WINDOW

    def barge_in_between(
        self, start: int, prob: float, barge_in_threshold: float
    ) -> BargeIn | None:
        """The barge-in's other windows (halfstep.py): [start, start + WINDOW), half a window
        after one `process` had and half before the next, scored by a stream of its own. One
        over both thresholds barges in now, where one window is all a barge-in takes
        (`barge_in_min_speech_ms` up to a window) and none fired for this run; its start is the
        run's start (the next window goes on with it, or ends it, as `process` decides).
        Nothing else is decided here: speech, turns and silences are `process`'s."""
        o = self.options
        if (
            not self.barges_in_one_window
            or self.in_speech
            or self._barged
            or prob < max(o.threshold, barge_in_threshold)
        ):
            return None
        if self._run_start is None:
            self._run_start, self._run, self._barge_run = start, 0, 0
        self._barged = True
        self._barged_sound(start + WINDOW)
        return BargeIn(self._run_start)

    def _barged_sound(self, end: int) -> None:
        """A barge-in fired for the run now going on, by the window ending at `end`: if no
        turn is, the sound it acted on began there (unless it began before, in a run broken
        since), and was heard up to `end`."""
        if not self.in_speech:
            if self._sound_start is None:
                self._sound_start = self._run_start
            self._sound_end = max(self._sound_end, end)

    def _sound_onset(self) -> int:
        """Where the turn beginning now began: its run's start, or the start of the sound a
        barge-in acted on before it, in a run broken since by less than `min_silence_ms` (the
        soft barge-in holds from there, and the turn's transcript must hear it: a turn dated
        120 ms after it, as it was, left its transcript 30 ms before the word; offline, a
        clip that starts at the word comes out empty)."""
        assert self._run_start is not None
        onset, sound, self._sound_start = self._run_start, self._sound_start, None
        return onset if sound is None else min(onset, sound)

    def silence_began(self, heard: int) -> int:
        """Where the silence that silero heard begin at `heard` began by the level (as
        `SpeechStop` and `Speculate` date it): `heard` if that is not the silence going on
        (which the level may have heard first, `silent_since`)."""
        if self._silence_start is not None and self._heard_silence <= heard:
            return self._silence_start
        return heard

    def _speculate_on(self, stop: int, end: int, events: list[VadEvent], *, quiet: bool) -> None:
        """The turn may end at `stop`: once per silence as the level has it, once as silero
        does (the quiet silero later hears is the same silence: its start is the same); and
        once more, padded, if the first came before the silence had lasted the pad."""
        padded = end - stop >= self._padded
        last = self._spec_stops.get(quiet)
        if last is None or last[0] != stop or (padded and not last[1]):
            self._spec_stops[quiet] = (stop, padded)
            start = max(0, self._turn_start - self._pad)
            events.append(Speculate(start, end, stop, quiet, padded))

    def verdict(self, candidate: int, complete: bool) -> list[VadEvent]:
        """The turn model's answer for `EndCandidate` `candidate`: a complete turn ends now
        (SpeechStop where its silence began), if the user is still silent since it was asked
        (any question about the silence going on; otherwise the answer is stale and changes
        nothing)."""
        events: list[VadEvent] = []
        asked = self._asked
        if complete and self.in_speech and asked is not None and asked <= candidate:
            self._end_turn(self._end, events, TurnEndBy.MODEL)
        return events

    def forgive(self) -> list[VadEvent]:
        """A barge-in was forgiven (a soft barge-in found a backchannel or a noise): end the
        turn now if the user is silent (the sound is a turn of its own), and let the next
        speech barge in again."""
        events: list[VadEvent] = []
        if self.in_speech and self._silence_start is not None:
            self._end_turn(self._end, events, TurnEndBy.FORGIVEN)
        self._barged, self._sound_start = False, None  # (a sound forgiven starts no turn)
        return events

    def _end_turn(self, end: int, events: list[VadEvent], by: TurnEndBy) -> None:
        stop = self._silence_start
        assert stop is not None
        events.append(SpeechStop(stop, end, by))
        start0 = max(0, self._turn_start - self._pad)
        # the audio goes on to where silero (or the floor: `silent_since`) heard the silence
        # (a quiet end of a word stays in)
        last = min(end, max(stop, self._heard_silence) + self._pad)
        events.append(Turn(start0, last, stop=stop))
        self.in_speech = False
        self._run_start, self._run, self._barge_run, self._barged = None, 0, 0, False
        self._silence_start = self._asked = None
