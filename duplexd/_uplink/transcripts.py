"""A session's transcripts: its finished turns, passes over the turn in progress, turns
transcribed ahead of their end, and the words of a held barge-in's sound, one decode at a time
with the daemon's shared `Transcriber` (a worker thread).

Finished turns wait in a bounded channel; `run()`, a session task, transcribes them in order.
Streaming transcripts (`asr.partial_ms` > 0): while the user speaks, the detector asks for a
pass over the turn so far every `partial_ms`; only the latest one asked for is made, never
while another decode of the session runs, a final first, with word timestamps, on the turn's
buffer (`agreement.LocalAgreement`: the turn, or its last sentences once it is long; words
confirmed by two consecutive passes agreeing), and a partial Transcript of the confirmed prefix
is sent when it grows; the final decodes the buffer too and keeps the confirmed prefix, adding
what it heard after those words.

Speculative finals (`asr.speculate`, on by default): once the user has been silent
`SPECULATE_MS` in a turn, by silero or by the room's floor (vad.py: silero hears the silence
later; the level's quiet line alone speculates at the turn's pad), the turn is transcribed as
if it ended there (`Speculate`); if it does end at that silence (the smart end of turn decides
at 200 ms), its final Transcript is that one, ready, instead of a decode that only starts
then. (It was made after the pad, 150 ms, so that it heard the audio a final keeps. Whisper
tiny.en after 64 ms of quiet instead: WER 1.90 % against 1.67 % on 46 clips of the bench's
sentences, one "quit" for "quick"; of 26 backchannels and interruptions both "Uh-huh."s came
out differently, "Oh." for nothing and "Oh" for "ah"; of 8 mid-sentence heads 3, "the report
to me." as "the report to" among them: bench/results/README.md, "Transcribed at 64 ms".) If
the user speaks on, the work is wasted (one decode per silence at most) and the next silence
speculates again; a later silence of the same turn asked for while that decode runs makes it
moot (`_Flight`), and once its encoder is done its decoder is not run (~70 of ~180 ms alone:
the closure before a last "k", as in "next week", begins a silence ~100 ms before the real one,
whose decode waited for the whole moot one).

A held soft barge-in's sound (`HoldCheck`) is transcribed before anything else: the agent's
audio waits on it. While the audio is held (`holding`), the sound's decodes (its speculative
transcript, which its check takes, or the check's own) follow `HOLD_PROMPT`. All positions are
16 kHz samples; Transcripts carry uplink samples (`scale` per 16 kHz sample).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import trio

from ..protocol import frames as fr
from .agreement import LocalAgreement
from .asr import Transcriber
from .counters import UplinkCounters
from .soft import spoken_words
from .vad import VAD_RATE_HZ, Speculate, Turn
from .window import Heard, Unwanted

log = logging.getLogger("duplexd.uplink")

TURN_QUEUE: Final = 8  # finished turns waiting for ASR, per session
MIN_TAIL: Final = VAD_RATE_HZ // 10  # a final's tail shorter than this holds no word to decode
MIN_PASS: Final = VAD_RATE_HZ // 4  # a pass needs this much audio after the confirmed words
PROMPT_CHARS: Final = 200  # of the confirmed text, given to Whisper as the tail's context
# A held sound is decoded after this prompt: Whisper tiny.en then writes a hum as one, not as
# the nearest words ("in a month." for a VITS voice's "Mm-hmm.": `python -m bench.hold_words`,
# backchannels decided right 87.1 -> 94.9 %, interruptions 99.1 -> 100 %); with it a short
# sound's decode loops about half the time ("Hold on. Hold on. ..."): such a text is cut where
# the loop began, not decoded again in the 30 s window (~400 ms instead of ~85 here)
HOLD_PROMPT: Final = "Mm-hmm. Uh-huh."


@dataclass(eq=False, slots=True)
class _Flight:
    """The speculative transcript being made: the turn (its `Speculate.start`) and silence;
    `moot` once a later silence of that turn was asked for (set on the trio thread, read in
    the decode's thread between the encoder and the decoder: `window.Decoding.wanted`)."""

    start: int
    stop: int
    moot: bool = False


@dataclass(frozen=True, slots=True)
class HoldCheck:
    """A `WordsCheck` with the audio to transcribe (`stop`: where the silence after it began)."""

    id: int
    audio: npt.NDArray[np.float32]
    stop: int


class Transcripts:
    """The transcripts of one session's uplink. Call everything but `run` from the trio
    thread; run `run` in the session's nursery."""

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        counters: UplinkCounters,
        scale: int,
        audio: Callable[[int, int], npt.NDArray[np.float32]],
        send: Callable[[fr.ServerFrame], None],
        heard: Callable[[int, str], None],
    ) -> None:
        self._transcriber = transcriber
        self.counters = counters
        self._scale = scale
        self._audio = audio  # the processed uplink audio [start, end) (16 kHz)
        self._send = send
        self._heard = heard  # what a HoldCheck's sound said: (check id, text)
        self._turns_send, self._turns_recv = trio.open_memory_channel[Turn](TURN_QUEUE)
        self._pass: Turn | None = None  # the latest partial Turn not yet transcribed
        self._asr_lot = trio.lowlevel.ParkingLot()  # something to transcribe
        self._agreement: LocalAgreement | None = None  # the stable prefix of the turn so far
        self._hold_check: HoldCheck | None = None  # the latest to transcribe
        self._speculation: Speculate | None = None  # the latest end of turn to transcribe ahead
        # ((start, stop), what was heard) of the latest speculative transcript made
        self._speculated: tuple[tuple[int, int], Heard] | None = None
        self._speculating: int | None = None  # the silence (`stop`) of the one being made
        self._flight: _Flight | None = None  # ... and whether it is still wanted
        # (stop, text) of the latest final: a held sound's check of that silence comes after
        self._finished: tuple[int, str] | None = None
        self._spec_lot = trio.lowlevel.ParkingLot()  # `speculated` waiting for it
        # the agent's audio is held on the user's sound (soft barge-in, set by the uplink):
        # what is decoded meanwhile is that sound's words (`HOLD_PROMPT`)
        self.holding = False

    def check_words(self, check: HoldCheck | None) -> None:
        """Transcribe a held barge-in's sound next (None: the hold is over, forget it)."""
        self._hold_check = check
        self._asr_lot.unpark_all()

    def speculate(self, spec: Speculate) -> None:
        """Transcribe the turn ahead of its end (an older speculation still waiting is moot).
        The same silence asked for again (silero heard what the level found) is made once; one
        found by the level alone is made only while the transcriber is idle: under load it
        would be a decode more per pause inside a sentence, queued before others' finals."""
        flight = self._flight
        if flight is not None and flight.start == spec.start and spec.stop > flight.stop:
            flight.moot = True  # the user spoke on after its silence: its decoder need not run
        pending, ready = self._speculation, self._speculated
        if pending is not None and pending.stop == spec.stop:
            if pending.quiet and not spec.quiet:  # not started yet: with what silero heard too
                self._speculation = spec
            return
        # one made from the level's silence stands: what silero heard after its end was quiet
        # all along by the level (the silence's start would have moved otherwise)
        if spec.stop in (self._speculating, ready[0][1] if ready is not None else None):
            return
        if spec.quiet and self._transcriber.busy:
            self.counters.speculations_skipped += 1
            return
        self._speculation = spec
        self._asr_lot.unpark_all()
        self._spec_lot.unpark_all()  # (one waited for that older one: it will not come)

    async def speculated(self, stop: int) -> Heard | None:
        """The speculative transcript of the turn ended by the silence that began at `stop`
        (with how sure Whisper is that the sentence ends there: `Heard.end_mark`), waiting
        for it if it is asked for or being made; None if there is none and will be
        none (speculation off, superseded, or already used by the final). Cancellation leaves
        nothing behind."""
        while True:
            ready = self._speculated
            if ready is not None and ready[0][1] == stop:
                return ready[1]
            pending = self._speculation
            if self._speculating != stop and (pending is None or pending.stop != stop):
                return None
            await self._spec_lot.park()

    def speculated_now(self, stop: int) -> Heard | None:
        """`speculated`, if it is made already; else None (it does not wait)."""
        ready = self._speculated
        return ready[1] if ready is not None and ready[0][1] == stop else None

    def queue_turn(self, turn: Turn) -> None:
        """A finished turn (queued, bounded) or a pass over the turn so far (the latest)."""
        if not turn.final:  # a pass over the turn so far: only the latest one is worth it
            if self._pass is not None:
                self.counters.asr_passes_skipped += 1
            self._pass = turn
        else:
            self._pass = None  # the turn's final makes a pending pass moot
            try:
                self._turns_send.send_nowait(turn)
            except trio.WouldBlock:
                self.counters.turns_dropped += 1  # ASR is this far behind: drop, never block
        self._asr_lot.unpark_all()

    async def run(self) -> None:
        """Transcribe finished turns, in order, and the passes over the turn in progress,
        until cancelled. One decode at a time: a final waiting goes first, and of the passes
        requested meanwhile only the latest is made. Cancelling abandons a decode in progress
        (its thread finishes in the background; the text is dropped) and the turns queued."""
        transcriber = self._transcriber
        while True:
            if (check := self._hold_check) is not None:  # a held barge-in waits: first
                self._hold_check = None
                await self._check_words(transcriber, check)
                continue
            try:
                turn = self._turns_recv.receive_nowait()
            except trio.WouldBlock:
                if (spec := self._speculation) is not None:  # before a pass: it may be final
                    self._speculation = None
                    await self._speculate(transcriber, spec)
                    continue
                if self._pass is None:
                    await self._asr_lot.park()
                    continue
                turn, self._pass = self._pass, None
            if turn.final:
                await self._final(transcriber, turn)
            else:
                await self._stream(transcriber, turn)

    async def _check_words(self, transcriber: Transcriber, check: HoldCheck) -> None:
        """What the user said while the agent's audio is held: queued for the worker's
        `SoftBargeIn`, in its place among the frames. The sound is the turn so far, ended by
        the same silence that a speculative transcript (asked for before this check) is
        about: that one's text, when it has words, is the answer, and so is the final's, when
        the turn ended on that silence before the check came (the final takes the speculative
        one: it was decoded a second time). Without words the check's own audio is decoded
        (the sound with the pad on both sides): "no words" resumes the agent's audio over the
        user, and at ten sessions the speculative transcript of "Wait," came out empty in 8 of
        96 checks whose own decode heard "Wait." (its cut ends 100-130 ms sooner: the pad after
        where the level heard the silence, not silero; bench/results/README.md, "A held sound
        whose transcript at hand was empty"). Cancelling abandons the decode (its thread
        finishes in the background; nothing is answered)."""
        c = self.counters
        c.hold_checks += 1
        spec = self._speculation
        if spec is not None and spec.stop == check.stop:  # asked for, not made yet: now
            self._speculation = None
            await self._speculate(transcriber, spec)
        ready, done = self._speculated, self._finished
        at_hand, final = None, False
        if ready is not None and ready[0][1] == check.stop:
            at_hand = ready[1].text
        elif done is not None and done[0] == check.stop:
            at_hand, final = done[1], True  # (the turn ended first: its final has the words)
        if at_hand is not None and spoken_words(at_hand):
            c.hold_checks_from_final += final
            self._heard(check.id, at_hand)
            return
        c.hold_checks_again += at_hand is not None
        t0 = time.perf_counter()
        text = (await transcriber.hear(check.audio, HOLD_PROMPT, cut_loops=True)).text
        c.asr_s += time.perf_counter() - t0
        c.asr_audio_s += len(check.audio) / VAD_RATE_HZ
        self._heard(check.id, text)

    async def _stream(self, transcriber: Transcriber, turn: Turn) -> None:
        """A pass over the turn so far (its buffer's samples, with their words' spans): a
        partial Transcript of the confirmed prefix when the pass made it grow."""
        agreement = self._agreement
        if agreement is None or agreement.start != turn.start:
            agreement = self._agreement = LocalAgreement(turn.start)
        if turn.end - agreement.commit < MIN_PASS:
            return
        begin = agreement.buffer_start
        audio = self._audio(begin, turn.end)
        t0 = time.perf_counter()
        words = await transcriber.words(audio, begin, agreement.context[-PROMPT_CHARS:])
        c = self.counters
        c.asr_s += time.perf_counter() - t0
        c.asr_audio_s += len(audio) / VAD_RATE_HZ
        c.asr_passes += 1
        if agreement.update(words, turn.end):
            c.partial_transcripts += 1
            k = self._scale
            self._send(
                fr.Transcript(
                    start_sample=turn.start * k,
                    end_sample=agreement.commit * k,
                    text=agreement.text,
                    final=False,
                )
            )

    async def _final(self, transcriber: Transcriber, turn: Turn) -> None:
        """The turn's final Transcript: the speculative one if it was made for this end of
        turn (same start, same silence) and has words, else decoded now (`_decode`). An empty
        one is decoded again on the turn's own audio (its pad after where silero heard the
        silence, not after where the level did): Whisper tiny.en leaves a lone short word out
        now and then (2-8 % of the time offline, by the clip's cut: bench/results/README.md,
        "A held sound whose transcript at hand was empty"), and another cut mostly hears it."""
        agreement, self._agreement = self._agreement, None
        ready, self._speculated = self._speculated, None
        c = self.counters
        made = ready is not None and ready[0] == (turn.start, turn.stop)
        if made and ready is not None and spoken_words(ready[1].text):
            text = ready[1].text
            c.speculations_used += 1
        else:
            c.speculations_empty += made
            text = (await self._decode(transcriber, turn, agreement)).text
        self._finished = (turn.stop, text)
        c.transcripts += 1
        k = self._scale
        self._send(
            fr.Transcript(
                start_sample=turn.start * k, end_sample=turn.end * k, text=text, final=True
            )
        )

    async def _speculate(self, transcriber: Transcriber, spec: Speculate) -> None:
        """The transcript of the turn as if it ended at `spec.stop`, kept for `_final`.
        Cancelling abandons the decode (its thread finishes in the background)."""
        turn = Turn(spec.start, spec.end, stop=spec.stop)
        self._speculating = spec.stop
        flight = self._flight = _Flight(spec.start, spec.stop)
        t0 = time.perf_counter()
        try:
            heard = await self._decode(
                transcriber, turn, self._agreement, end_mark=True, wanted=lambda: not flight.moot
            )
        except Unwanted:  # moot: a later silence of the turn came first
            self.counters.speculations_moot += 1
            self.counters.asr_s += time.perf_counter() - t0  # (its encoder ran: no text)
            return
        finally:
            self._speculating, self._flight = None, None
            self._spec_lot.unpark_all()
        self.counters.speculations += 1
        log.debug(
            "speculated",
            extra={
                "silence_began": spec.stop,
                "end": spec.end,
                "words": len(heard.text.split()),  # (what the user said stays out of logs)
                "end_mark": heard.end_mark,
                "decode_ms": round(1000 * (time.perf_counter() - t0), 1),
            },
        )
        self._speculated = ((spec.start, spec.stop), heard)
        self._spec_lot.unpark_all()

    async def _decode(
        self,
        transcriber: Transcriber,
        turn: Turn,
        agreement: LocalAgreement | None,
        end_mark: bool = False,
        wanted: Callable[[], bool] | None = None,
    ) -> Heard:
        """The decode of the whole turn (`end_mark`: with how sure Whisper is that the
        sentence ends there); if passes confirmed a prefix, of the turn's buffer, the final
        text being that prefix and what the decode heard after it (`LocalAgreement.final`),
        or, when the decode heard the confirmed words otherwise, the decode of the audio
        after them alone (`asr_tails`), with the buffer's end mark. A held sound's decode
        has no end mark (it is not a sentence); nor is a tail's asked for: decoded alone or
        after the confirmed words as its prompt, it comes out with no end mark or a doubtful
        one for a sentence spoken to its end (0.20-0.49 for "... | my mother tomorrow?",
        alone and after "Can you remind me to call" as the prompt). Raises `Unwanted` when
        the text is no longer `wanted` as the decode comes to it (`Transcriber.hear`)."""
        c = self.counters
        t0 = time.perf_counter()
        if agreement is not None and agreement.start == turn.start and agreement.confirmed:
            audio = self._audio(min(agreement.buffer_start, turn.end), turn.end)
            context = agreement.context[-PROMPT_CHARS:] or None
            heard = await transcriber.hear(audio, context, end_mark=end_mark, wanted=wanted)
            c.asr_tail_audio_s += len(audio) / VAD_RATE_HZ
            text = agreement.final(heard.text)
            if text is not None:
                heard = Heard(text, heard.end_mark)
            else:  # Whisper heard the confirmed words otherwise: decode what follows them
                c.asr_tails += 1
                c.asr_audio_s += len(audio) / VAD_RATE_HZ
                audio = self._audio(min(agreement.commit, turn.end), turn.end)
                tail = ""
                if len(audio) >= MIN_TAIL:
                    tail = (await transcriber.hear(audio, agreement.text[-PROMPT_CHARS:])).text
                # (the buffer's end mark: how sure Whisper is that the turn ends there)
                heard = Heard(agreement.with_tail(tail, heard.text), heard.end_mark)
        else:
            audio = self._audio(turn.start, turn.end)
            if self.holding:  # the held sound's words, for its check and its final
                heard = await transcriber.hear(audio, HOLD_PROMPT, cut_loops=True)
            else:
                heard = await transcriber.hear(audio, end_mark=end_mark, wanted=wanted)
        c.asr_s += time.perf_counter() - t0
        c.asr_audio_s += len(audio) / VAD_RATE_HZ
        return heard
