"""A session's uplink: AudioUp frames in; SpeechStarted/Stopped, barge-ins and Transcripts out.

On the trio thread, `feed()` (each AudioUp) and `on_downlink()` (each message the session
sends, the echo reference) only timestamp the data and queue it: nothing heavy touches the
event loop the pacer runs on. `process()`, a session task, hands each batch to the shared
uplink offload (`UplinkServices.offload`: one of the daemon's uplink worker threads;
onnxruntime and numpy release the GIL), where

    s16le at the uplink rate -> float -> 16 kHz (Decimator when the uplink is 48 kHz)
    -> echo removed (EchoCanceller: AEC3, when audio was sent recently)
    -> steady noise suppressed (Denoiser: WebRTC NS, with `vad.noise_suppression`)
    -> 512-sample windows
    -> silero-vad probability -> SpeechDetector -> events
       (and, while a barge-in can stop something, the windows half a window later: a barge-in
       a frame sooner, halfstep.py)
    -> the turn's ring (for transcripts and the turn model; rewritten ~110 ms later less the
       room's late echo AEC3 leaves: late.LateEcho)

and then delivers the events on the trio thread.

Smart end of turn (`vad.smart_end`, when the daemon has a `TurnModel`): once the user has been
silent `min_silence_ms` (or, ahead, the turn's pad), the detector's `EndCandidate` (or
`Speculate`) comes out of the worker with a copy of the turn's last 8 s; `ends.EndOfTurn`,
a task of `run()`, asks the turn model about it in a thread of its own
(`UplinkServices.turn_offload`) and queues the verdict on the inbox like audio, so the detector
sees it in its place among the frames: "complete" ends the turn there (unless the user spoke on
meanwhile), otherwise the turn ends after `max_silence_ms`; the words' veto is there too.

Events go out through the session's callbacks: `send(frame)` for SpeechStarted/SpeechStopped
(with `vad.end_reports`, TurnEnd before it: timed from the audio that decided, or made the
question) and Transcript (queued on the session's writer, so they are ordered with the audio) and
`barge_in(delay_s)` when the user has spoken `barge_in_min_speech_ms` (the session interrupts
the playing utterance, as for a client Interrupt; `delay_s` is how long after the deciding
frame arrived). Turns, passes over the turn in progress and turns transcribed ahead of their
end go to `transcripts.Transcripts` (its `run` is a task of `run()`). All sample positions
sent are uplink-rate samples (`AudioUp.seq x frame samples`); internally everything counts
16 kHz samples.

Soft barge-in (`vad.barge_in_mode: "soft"`): the barge-in is `hold(delay_s, onset)` instead
(the session holds its audio, if anything plays), and the worker's `soft.SoftBargeIn` follows
the sound until it decides; a sound long enough to hold words is transcribed first
(`HoldCheck`), and its text goes back to the worker like a verdict. The decision is
`settle(Settled, onset)`; a hold the worker has not decided in time (the client stopped
sending audio) is decided on the trio side (`holds.Holds`).

The echo reference is every AUDIO frame the session sends (`on_downlink`), and the client's
PLAYED reports (`on_played`) tell the canceller when what was sent was played (echo.py).
What the echo changes for each VAD window (the barge-in's threshold, the microphone's own
voice heard where the user is over the echo) is echoview.py's; a window that would barge in
on what AEC3 let through of the agent's own voice (a path that jumped, before the canceller
follows it) is silence (leak.py). With `UplinkServices.recording` (`[trace] uplink_dir`) the
worker also writes each batch it is handed to a file, to be replayed offline (record.py).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import trio

from .._downlink.resample import Decimator
from .._opus import OpusDecoder, OpusPacketError
from ..protocol import frames as fr
from ..protocol.codec import RemoteProtocolError
from ..protocol.options import SessionOptions
from .counters import UplinkCounters
from .denoise import Denoiser
from .echo import AEC_LATENCY_SAMPLES, EchoCanceller
from .echoview import EchoView, echo_view
from .ends import AHEAD, EndCheck, EndOfTurn, turn_end
from .halfstep import HALF, HalfStep
from .holds import Holds
from .leak import LeakHold
from .micvoice import MicVoice
from .quiet import QuietTracker
from .record import DOWNLINK as _DOWNLINK  # the inbox's kinds (record.py)
from .record import PLAYED as _PLAYED
from .record import UNHELD as _UNHELD
from .record import VERDICT as _VERDICT
from .record import WORDS as _WORDS
from .record import UplinkRecording, recording_header
from .reference import S16_SCALE, Reference
from .services import UplinkServices
from .soft import Settled, SoftBargeIn, WordsCheck
from .transcripts import HoldCheck, Transcripts
from .turn import WINDOW_SAMPLES
from .vad import (
    VAD_RATE_HZ,
    WINDOW,
    BargeIn,
    EndCandidate,
    SileroVad,
    Speculate,
    SpeechDetector,
    SpeechStart,
    SpeechStop,
    Turn,
)

MAX_GAP_FRAMES: Final = 250  # a seq jump up to 5 s is filled with silence; more is an error
MAX_INBOX: Final = 500  # uplink frames + downlink messages waiting for processing (~5-10 s)
_NEVER: Final = 2.0  # a barge-in threshold no probability reaches


def _ignore(*_: object) -> None:
    """A callback of a session that has ended (`Uplink.forget_session`)."""


class Uplink:
    """The uplink processing of one session. Create after the handshake; feed `feed()` every
    AudioUp and `on_downlink()` every message the session sends; run `run()` in the session's
    nursery. All methods but `run` are synchronous and called from the trio thread."""

    def __init__(
        self,
        *,
        rate_hz: int,
        downlink_rate_hz: int,
        options: SessionOptions,
        services: UplinkServices,
        send: Callable[[fr.ServerFrame], None],
        barge_in: Callable[[float], None],
        hold: Callable[[float, int], bool] | None = None,
        settle: Callable[[Settled, int], None] | None = None,
        downlink_opus: bool = False,
    ) -> None:
        vad, asr = options.vad, options.asr
        # Opus (SPEC §4.6.3): AudioUp packets decoded in the worker, as is the echo reference
        self._opus_up = OpusDecoder(rate_hz) if options.codec.uplink == fr.CODEC_OPUS else None
        self.rate_hz = rate_hz
        self.vad_options = vad
        self.asr_options = asr
        self._scale = rate_hz // VAD_RATE_HZ  # uplink samples per 16 kHz sample (1 or 3)
        self.counters = UplinkCounters()
        self._frame_samples = fr.frame_samples(rate_hz)
        self._send = send
        self._barge_in = barge_in
        self._offload = services.offload
        # (arrival time, uplink seq gap, pcm), (arrival time, _DOWNLINK, downlink message) or
        # (arrival time, _VERDICT, (EndCheck, complete, TurnEndBy))
        self._inbox: collections.deque[tuple[float, int, Any]] = collections.deque()
        self._inbox_lot = trio.lowlevel.ParkingLot()
        # (arrival time of the audio behind it, event): made in the worker, delivered on trio
        self._events: list[tuple[float, object]] = []
        transcriber = services.transcriber if asr.transcripts else None
        self._vad = SileroVad(services.vad_model)
        self._quiet = QuietTracker()  # where the voice fell quiet: a silence's true start
        smart = services.turn_model is not None
        self._speculate = transcriber is not None and asr.speculate
        self._detector = SpeechDetector(
            vad, partial_ms=asr.partial_ms, smart=smart, speculate=self._speculate
        )
        soft = vad.barge_in_mode == "soft" and hold is not None and settle is not None
        self._soft = SoftBargeIn(vad, transcripts=transcriber is not None) if soft else None
        self._holds = (  # (their trio side: holds.py)
            Holds(
                window_ms=vad.soft_window_ms,
                scale=self._scale,
                counters=self.counters,
                hold=hold,
                settle=settle,
                unheld=lambda: self._enqueue((trio.current_time(), _UNHELD, None)),
            )
            if hold is not None and settle is not None and soft
            else None
        )
        now = trio.current_time()
        self._recording = (  # (record.py: what a replay needs to make this uplink again)
            UplinkRecording(services.recording, recording_header(now, rate_hz, downlink_rate_hz,
                options, downlink_opus, services, soft=self._holds is not None))
            if services.recording
            else None
        )  # fmt: skip
        self._echo = EchoCanceller(t0=now) if vad.echo_cancel else None
        self._mic = MicVoice(services.vad_model) if self._echo is not None else None
        self._leak = LeakHold(VAD_RATE_HZ)  # (echo.py's windows AEC3 let the echo through)
        half = self._detector.barges_in_one_window
        self._half = HalfStep(services.vad_model) if half else None  # (halfstep.py)
        ns = vad.noise_suppression
        # (its frames lined up with AEC3's output; in the quiet the echo's output catches up, and
        # the denoiser holds those 8 ms instead)
        lead = AEC_LATENCY_SAMPLES if self._echo is not None else 0
        self._denoiser = Denoiser(ns, lead=lead) if ns != "off" else None
        # 48 kHz AudioUp to 16 kHz as it comes (soxr's stream held 6-37 ms back: the VAD heard
        # the user that much later); its filter's delay dropped from the stream's start, so
        # 16 kHz sample j is uplink sample j x scale
        self._up_resampler = Decimator(self._scale) if self._scale != 1 else None
        self._up_skip = self._up_resampler.delay if self._up_resampler is not None else 0
        self._reference = Reference(downlink_rate_hz, opus=downlink_opus)  # (the echo's)
        self._next_seq = 0
        self._resync = False
        self._pending = np.zeros(0, dtype=np.float32)
        self._produced = 0  # 16 kHz samples produced so far (after resampling)
        self._pos = 0  # 16 kHz position of the next window
        cap = 1 << int(np.ceil(np.log2((vad.max_turn_s + 2.0) * VAD_RATE_HZ)))
        self._turn_ring = np.zeros(cap, dtype=np.float32)  # processed audio, for transcripts
        self._transcripts = (
            Transcripts(
                transcriber,
                counters=self.counters,
                scale=self._scale,
                audio=self._audio,
                send=send,
                heard=lambda check, text: self._enqueue(
                    (trio.current_time(), _WORDS, (check, text))
                ),
            )
            if transcriber is not None
            else None
        )
        if self._holds is not None:
            self._holds.transcripts = self._transcripts
        # the words' side of the end of turn (unfinished.py) needs speculation, in English
        language = transcriber.language if transcriber is not None else None
        english = self._speculate and (language or "en") == "en"
        model = services.turn_model
        self._ends = (
            EndOfTurn(
                model,
                offload=services.turn_offload or services.offload,
                busy=services.turn_busy,
                threshold=vad.smart_threshold,
                end_mark_threshold=vad.end_mark_threshold,
                end_mark_sure=vad.end_mark_sure,
                counters=self.counters,
                transcripts=self._transcripts if english else None,
                answer=lambda check, complete, by: self._enqueue(
                    (trio.current_time(), _VERDICT, (check, complete, by))
                ),
            )
            if model is not None and self._detector.smart
            else None
        )

    def forget_session(self) -> None:
        """The session has ended (its tasks have returned): let go of its callbacks, and of
        the parts whose callbacks refer back to this uplink (the transcripts', the end of
        turn's). Either would make a reference cycle, holding the session and the turn's
        audio (megabytes), that only the garbage collector frees, and the daemon freezes what
        lives long (`duplexd/_ops/collector.py`): they would wait for a sweep."""
        self._send = self._barge_in = _ignore
        if self._recording is not None:
            self._recording.close()
        if self._holds is not None:
            self._holds.forget_session()
        self._transcripts = self._ends = None

    # ------------------------------------------------------------------ uplink audio

    def resync(self) -> None:
        """The session was resumed on a new connection: the next AudioUp's seq, whatever it
        is, continues the uplink (what the microphone said meanwhile is not replayed)."""
        self._resync = True

    def feed(self, seq: int, pcm: bytes) -> None:
        """One AudioUp frame (raises RemoteProtocolError for a seq going backwards or jumping
        more than `MAX_GAP_FRAMES`)."""
        if self._resync:
            self._resync = False
            self._next_seq = seq
        if seq < self._next_seq:
            raise RemoteProtocolError(
                fr.ErrorCode.UNEXPECTED_FRAME,
                f"AudioUp seq {seq} after {self._next_seq - 1}: seq must increase by 1",
            )
        gap = seq - self._next_seq
        if gap > MAX_GAP_FRAMES:
            raise RemoteProtocolError(
                fr.ErrorCode.UNEXPECTED_FRAME, f"AudioUp seq jumped by {gap} frames"
            )
        self._next_seq = seq + 1
        self.counters.frames += 1
        self._enqueue((trio.current_time(), gap, pcm))

    def _enqueue(self, item: tuple[float, int, Any]) -> None:
        inbox = self._inbox
        if len(inbox) >= MAX_INBOX:  # processing is this far behind: drop the oldest
            inbox.popleft()
            self.counters.inbox_dropped += 1
        inbox.append(item)
        if len(inbox) == 1:
            self._inbox_lot.unpark()

    async def process(self) -> None:
        """Session task: run queued uplink audio through echo + VAD off the event loop, then
        deliver the events. Cancelling waits for the batch in the worker thread, if any (a few
        ms, or a wait for a free shared uplink thread), and drops its events and the queue."""
        inbox = self._inbox
        while True:
            while not inbox:
                await self._inbox_lot.park()
            batch = list(inbox)
            inbox.clear()
            events = await self._offload(self._process_batch, batch)
            for arrived, ev in events:
                self._deliver(arrived, ev)

    def _process_batch(self, batch: list[tuple[float, int, Any]]) -> list[tuple[float, object]]:
        """Worker side: everything heavy. Touches only this object's processing state."""
        self._events = []
        if self._recording is not None:
            self._recording.write(batch)
        n = self._frame_samples
        for now, gap, data in batch:
            if gap == _VERDICT:
                check, complete, by = data
                for ev in self._detector.verdict(check.id, complete):
                    at = now
                    if isinstance(ev, SpeechStop):  # decided when it was asked (TURN_END)
                        ev, at = dataclasses.replace(ev, heard=check.end, by=by), check.at
                    self._events.append((at, ev))
                continue
            if gap == _WORDS:
                assert self._soft is not None
                if (settled := self._soft.answer(*data)) is not None:
                    self._settled(now, settled)
                continue
            if gap == _UNHELD:
                assert self._soft is not None
                self._soft.close()
                continue
            if gap == _PLAYED:
                if self._echo is not None:
                    self._reference.played(self._echo, now, *data)
                continue
            if gap < 0:
                if self._echo is not None:
                    self._reference.add(self._echo, now, data)
                continue
            if gap:
                self._ingest(now, np.zeros(gap * n, dtype=np.float32))
            samples = self._samples(data)[:n]
            if len(samples) < n:  # SHOULD be exactly n: the position follows seq, so pad
                samples = np.concatenate((samples, np.zeros(n - len(samples), dtype=np.float32)))
            self._ingest(now, samples)
        return self._events

    def _samples(self, body: bytes) -> npt.NDArray[np.float32]:
        """An AudioUp body as float samples (full scale 1.0): PCM scaled, an Opus packet
        decoded (a bad one is the client's fault: RemoteProtocolError, the session ends with
        MALFORMED)."""
        if self._opus_up is None:
            return np.frombuffer(body, dtype="<i2").astype(np.float32) * S16_SCALE
        try:
            return self._opus_up.decode_float(body)
        except OpusPacketError as exc:
            raise RemoteProtocolError(fr.ErrorCode.MALFORMED, f"AudioUp: {exc}") from None

    def _deliver(self, arrived: float, ev: object) -> None:
        if isinstance(ev, SpeechStart):
            self.counters.speech_segments += 1
            self._send(fr.SpeechStarted(uplink_sample=ev.sample * self._scale))
        elif isinstance(ev, SpeechStop):
            if self.vad_options.end_reports:
                self._send(turn_end(ev, arrived, trio.current_time(), self._scale))
            self._send(fr.SpeechStopped(uplink_sample=ev.sample * self._scale))
        elif isinstance(ev, BargeIn):
            c = self.counters
            c.barge_ins += 1
            delay = trio.current_time() - arrived
            c.barge_in_delay_s += delay
            c.barge_in_delay_max_s = max(c.barge_in_delay_max_s, delay)
            if self._holds is None:
                self._barge_in(delay)
            else:
                self._holds.begin(delay, ev.sample)
        elif isinstance(ev, HoldCheck):
            if self._holds is not None:
                self._holds.check_words(ev)
        elif isinstance(ev, Settled):
            if self._holds is not None:
                self._holds.settled(ev)
        elif isinstance(ev, Turn) and self._transcripts is not None:
            self._transcripts.queue_turn(ev)
        elif isinstance(ev, Speculate) and self._speculate:  # (else for the turn model)
            assert self._transcripts is not None
            held = self._holds is not None and self._holds.held is not None
            if ev.padded or not held:  # (a held sound's words: heard as its check)
                self._transcripts.speculate(ev)
        elif isinstance(ev, EndCheck) and self._ends is not None:
            self._ends.ask(ev)

    def _ingest(self, now: float, samples: np.ndarray) -> None:
        if self._up_resampler is not None:
            samples = self._up_resampler.process(samples)
            if self._up_skip:
                k = min(self._up_skip, len(samples))
                samples, self._up_skip = samples[k:], self._up_skip - k
        self._produced += len(samples)
        if self._echo is not None:
            t0 = time.thread_time()
            assert self._mic is not None
            self._mic.add(samples)  # (the user's onset as it came: micvoice.py)
            self._echo.note_uplink(now, self._produced)
            samples = self._echo.process(samples)  # (AEC3 running: 8-18 ms later)
            self.counters.vad_s += time.thread_time() - t0
        if self._denoiser is not None:
            t0 = time.thread_time()
            samples = self._denoiser.process(samples)  # (6 ms later)
            self.counters.vad_s += time.thread_time() - t0
        pending = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        i = 0
        while True:
            if self._half is not None and len(pending) - i >= HALF and self._half.due(self._pos):
                self._between(now, pending[i : i + HALF])  # (it ends before the next window)
            if len(pending) - i < WINDOW:
                break
            self._window(now, pending[i : i + WINDOW])
            i += WINDOW
        self._pending = pending[i:].copy()

    def _between(self, now: float, head: np.ndarray) -> None:
        """The half-step window ending `HALF` into the next VAD window (halfstep.py): a barge-in
        only, and only while one can stop something and no echo may be taken for the user. A
        window not scored is asked about again with the next frame, until the next VAD window
        (the near-end check hears the microphone's frames as they come)."""
        assert self._half is not None
        t0 = time.thread_time()
        pos = self._pos - HALF
        echo = self._echo
        if echo is not None and echo.echo_found is not False and echo.near_end.until <= pos:
            return  # (AEC3 may let the echo through, and the user is not heard over it)
        view = echo_view(echo, self._mic, self.vad_options, self.counters, pos)
        if echo is not None and echo.echo_found is not False and not view.over:
            return  # (... nor over it: what is louder is the echo)
        barge_threshold = view.barge_threshold
        if (view.echoing or echo is None) and not view.unjudged:
            prob = max(self._half.prob(self._pos, head), view.mic)
            self.counters.half_windows += 1
            if (ev := self._detector.barge_in_between(pos, prob, barge_threshold)) is not None:
                self.counters.barge_ins_between += 1
                if self._soft is not None and not self._soft.open:  # (followed from here on)
                    self._soft.start(ev.sample, self._pos)
                self._events.append((now, ev))
        self.counters.vad_s += time.thread_time() - t0

    def _window(self, now: float, window: np.ndarray) -> None:
        t0 = time.thread_time()
        pos = self._pos
        c = self.counters
        view = echo_view(self._echo, self._mic, self.vad_options, c, pos)
        barge_threshold, mic = view.barge_threshold, view.mic
        c.echo_windows += view.echoing  # what AEC3 let through of the echo must not barge in
        if self._half is not None:
            self._half.keep(pos, window)
        prob = self._vad.prob(window)
        if mic > prob:  # the user's onset, which AEC3's suppressor ducks (micvoice.py)
            prob = mic
            c.mic_windows += 1
        heard = prob
        cap = len(self._turn_ring)
        i = pos & (cap - 1)
        self._turn_ring[i : i + WINDOW] = window  # cap is a multiple of WINDOW
        if view.unjudged:  # the agent's first ~0.6 s: AEC3 has not converged, and with a jittery
            prob, barge_threshold = 0.0, _NEVER  # uplink it leaked (measured): silence
        elif self._leaking(view, prob, pos + WINDOW):  # ... or its path jumped, and AEC3 lets
            prob, barge_threshold = 0.0, _NEVER  # it through until the canceller follows
            c.leak_windows += 1
        if self._echo is not None:  # ... and again ~110 ms later, less the room's tail (late.py)
            at, done = self._echo.late.process(pos, window, heard)
            self._turn_ring[np.arange(at, at + len(done)) & (cap - 1)] = done
        self._pos = pos + WINDOW
        c.windows += 1
        quiet_since = self._quiet.window(pos, window)
        silent_since = self._quiet.silent_since
        events = self._detector.process(pos, prob, barge_threshold, quiet_since, silent_since)
        if (soft := self._soft) is not None:
            self._follow_hold(soft, now, pos, prob, events)
        smart = self._detector.smart
        for ev in events:
            if isinstance(ev, EndCandidate) or (isinstance(ev, Speculate) and ev.padded and smart):
                # the audio goes with the question; a turn transcribed ahead of its end is
                # judged ahead too (the question comes at min_silence_ms, the answer is ready)
                start = max(ev.start, ev.end - WINDOW_SAMPLES)
                ask, again = (ev.id, ev.again) if isinstance(ev, EndCandidate) else (AHEAD, False)
                audio = self._audio(start, ev.end)
                self._events.append((now, EndCheck(ask, audio, ev.stop, again, ev.end, now)))
            if not isinstance(ev, EndCandidate):
                self._events.append((now, ev))
        c.vad_s += time.thread_time() - t0

    def _leaking(self, view: EchoView, prob: float, end: int) -> bool:
        """Whether the window ending at uplink sample `end`, which would count toward a barge-in
        (`prob`), is the agent's own voice that AEC3 let through: a clear echo of the reference
        in what it let through, or one found lately (leak.py). Not asked where the near-end check
        hears the user over the echo (`view.over`), nor once the sound barged in: the session
        stops what it says, and the user's voice, scored as the agent's (a voice near its
        pitch peaked at 14.8 with a share of 0.74, `tests/test_uplink_echo.py`), was silence
        in the turn."""
        echo = self._echo
        if echo is None or not view.echoing or view.over or self._detector.barged:
            return False
        return prob >= self.vad_options.threshold and self._leak.held(
            end, self._audio, echo.reference
        )

    def _follow_hold(
        self, soft: SoftBargeIn, now: float, pos: int, prob: float, events: list[Any]
    ) -> None:
        """Worker side of a soft barge-in: follow the held sound window by window (a barge-in
        in this window starts one)."""
        o = self.vad_options
        got = soft.window(pos, prob >= o.threshold, prob < o.neg_threshold) if soft.open else None
        if isinstance(got, WordsCheck):  # (its silence as the detector dates it: the same one
            # the speculative transcript is keyed by, when silero heard it in the same window)
            stop = self._detector.silence_began(got.stop)
            check = HoldCheck(got.id, self._audio(got.start, got.end), stop)
            self._events.append((now, check))
        elif got is not None:
            self._settled(now, got)
        for ev in events:
            if isinstance(ev, BargeIn) and not soft.open:  # (a sound held goes on: the same)
                soft.start(ev.sample, pos + WINDOW)

    def _settled(self, now: float, settled: Settled) -> None:
        """Worker side: a held barge-in decided. A sound that did not interrupt is a turn of
        its own (ended here, so its Transcript holds it alone), and the user's next words may
        barge in again."""
        self._events.append((now, settled))
        if settled.resume:
            self._events.extend((now, ev) for ev in self._detector.forgive())

    def hold_ended(self) -> None:
        """The session stopped holding (the client interrupted meanwhile): the soft barge-in
        in progress, if any, decides nothing more."""
        if self._holds is not None:
            self._holds.ended()

    def _audio(self, start: int, end: int) -> npt.NDArray[np.float32]:
        cap = len(self._turn_ring)
        start = max(start, self._pos - cap, 0)
        idx = np.arange(start, end) & (cap - 1)
        out: npt.NDArray[np.float32] = self._turn_ring[idx]
        return out

    # ------------------------------------------------------------------ downlink reference

    def on_downlink(self, message: bytes) -> None:
        """A message the session is sending: its AUDIO frames become the echo reference."""
        if self._echo is not None:
            self._enqueue((trio.current_time(), _DOWNLINK, message))

    def on_played(self, frame: fr.Played) -> None:
        """A PLAYED report from the client: when what was sent played (the echo's delay)."""
        if self._echo is not None:
            played = (frame.utterance_id, frame.samples_played, frame.clock_us, frame.final)
            self._enqueue((trio.current_time(), _PLAYED, played))

    # ------------------------------------------------------------------ transcripts

    async def run(self) -> None:
        """Session task: transcribe finished turns and answer the detector's end-of-turn
        questions, until cancelled (see `Transcripts.run` and `EndOfTurn.run`); with soft barge-ins,
        also watch the holds (`Holds.watch`)."""
        async with trio.open_nursery() as nursery:
            if self._ends is not None:
                nursery.start_soon(self._ends.run)
            if self._transcripts is not None:
                nursery.start_soon(self._transcripts.run)
            nursery.start_soon(trio.sleep_forever)  # a session task ends only when cancelled
            if self._holds is not None:
                nursery.start_soon(self._holds.watch)

    def stats(self) -> dict[str, Any]:
        out = self.counters.summary()
        if self._echo is not None:
            out["echo_removed_db"] = round(self._echo.removed_db, 1)
            out["echo_late_removed_db"] = round(self._echo.late.removed_db, 1)
            out["echo_late_hops"] = [self._echo.late.hops_modelled, self._echo.late.hops_judged]
            out["echo_playout_ms"] = round(self._echo.playout_ms, 1)
            out["echo_found"] = self._echo.echo_found
            out["echo_realignments"] = self._echo.realignments
            out["echo_playout_moves"] = self._echo.playout_moves
            out["echo_placements"] = [self._echo.placements_tried, self._echo.placements_moved]
            out["echo_slide_ppm"] = round(self._echo.skew.ppm, 1)
            out["echo_slide_restarts"] = self._echo.skew.restarts
        return out
