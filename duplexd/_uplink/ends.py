"""The smart end of turn's questions: the turn model asked about a silence, and the words' veto.

The detector (vad.py) asks whether the turn is complete once the user has been silent
`min_silence_ms` (an `EndCandidate`); the uplink's worker sends the question here as an
`EndCheck` with the turn's last 8 s (`turn.WINDOW_SAMPLES`). A silence the turn may end at is
also asked about ahead (`AHEAD`: a `padded` `Speculate`, once it has lasted the turn's pad:
the model hears that much silence), so that the answer is ready when the question comes: the
model takes 70-140 ms on a 2-core box. It is asked ahead only while it is idle: under load
that would be a run more per pause, ahead of other sessions' end checks.

The words come first. Whisper's speculative transcript of the same silence (asked for at
64 ms of it; the final transcript if the turn ends there) often decides alone, and then the
question is answered as soon as it is made, without waiting for the model's run (which goes
on beside it from the pad, in the background), and without starting one if the text was made
before the question came. The words decide when they stop mid-sentence ("I'd like a table
for", unfinished.py), or when Whisper, which hears the voice too, is not sure the sentence
ends there (its end mark's probability under `end_mark_threshold`: "Can you remind me to
call? | my mother", window.py): the turn is not complete, whatever the model says, and the
questions the detector asks again about the same silence (`smart_reask_ms`) are answered so
without the model: the words are the same. They decide the other way when Whisper is sure of
its end mark (`end_mark_sure`) and the words may end there: the model scored some sentences'
ends 0.13-0.47 that Whisper heard end at 0.93-0.97 (`python -m bench.end_marks`). Between the
two (a mark from `end_mark_threshold` to `end_mark_sure`, or none known) the model's verdict
stands, once both are in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import trio

from ..protocol import frames as fr
from ..protocol.frames import TurnEndBy
from .counters import UplinkCounters
from .services import Offload
from .transcripts import Transcripts
from .turn import TurnModel
from .unfinished import sounds_unfinished
from .vad import SpeechStop
from .window import Heard

log = logging.getLogger("duplexd.uplink")

AHEAD: Final = -1  # an `EndCheck` asked ahead of its question
# why `with_words` changed the model's verdict ("": it did not)
UNFINISHED: Final = "unfinished"  # "I'd like a table for": wait for the rest
UNSURE: Final = "unsure"  # "Can you remind me to call?" said mid-sentence: wait
SURE: Final = "sure"  # the model doubts a sentence Whisper heard end: end


def with_words(
    complete: bool, heard: Heard, end_mark_threshold: float, end_mark_sure: float
) -> tuple[bool, str]:
    """The turn model's verdict (`complete`) with the transcript of the same silence: (the
    verdict, why it changed: `UNFINISHED`, `UNSURE`, `SURE` or "")."""
    unfinished = sounds_unfinished(heard.text)
    mark = heard.end_mark  # (None: not known)
    # a mark this sure ends the turn whatever the model says (so a threshold set over it
    # never holds a "complete" that an "incomplete" would have ended); 1: never
    sure = end_mark_sure < 1 and mark is not None and mark >= end_mark_sure
    if complete and unfinished:
        return False, UNFINISHED
    if complete and not sure and mark is not None and mark < end_mark_threshold:
        return False, UNSURE
    if not complete and not unfinished and sure:
        return True, SURE
    return complete, ""


@dataclass(frozen=True, slots=True)
class EndCheck:
    """An `EndCandidate` with the audio the turn model judges (the turn's last 8 s)."""

    id: int  # AHEAD: asked ahead, when the turn may end at this silence (a `Speculate`)
    audio: npt.NDArray[np.float32]
    stop: int = -1  # where the silence began
    again: bool = False  # a later question about the same silence: not the ahead one's
    end: int = -1  # where the audio asked about ends (16 kHz samples)
    at: float = 0.0  # when the audio that made the question arrived (trio clock)


def turn_end(stop: SpeechStop, arrived: float, now: float, scale: int) -> fr.TurnEnd:
    """The TURN_END frame of `stop` (`vad.end_reports`): `arrived`, when the audio that
    decided it (a smart end: that made its question) came in; `scale` uplink samples per
    16 kHz sample."""
    silence = max(0, stop.heard - stop.sample) * scale
    decided_us = min(max(0, round((now - arrived) * 1e6)), 0xFFFF_FFFF)
    return fr.TurnEnd(stop.by, stop.sample * scale, silence, decided_us)


@dataclass(eq=False, slots=True)
class _Judgement:
    """The turn model's run about the silence that began at `stop` (done: `probability`)."""

    stop: int
    probability: float = 0.0
    done: trio.Event = field(default_factory=trio.Event)


class EndOfTurn:
    """One session's questions to the daemon's turn model. `ask` from the trio thread; `run`
    as a session task; each verdict goes to `answer(check, complete, by)`: `by` is
    `TurnEndBy.WORDS` where the transcript decided (ended the turn whatever the model said,
    or kept it open), else `TurnEndBy.MODEL`."""

    def __init__(
        self,
        model: TurnModel,
        *,
        offload: Offload,
        busy: Callable[[], bool],
        threshold: float,
        end_mark_threshold: float,
        end_mark_sure: float,
        counters: UplinkCounters,
        transcripts: Transcripts | None,
        answer: Callable[[EndCheck, bool, TurnEndBy], None],
    ) -> None:
        self._model = model
        self._offload = offload
        self._busy = busy
        self._threshold = threshold
        self._end_mark_threshold = end_mark_threshold
        self._sure = end_mark_sure
        self.counters = counters
        self._transcripts = transcripts  # (English, speculating: for the words' veto)
        self._answer = answer
        self._end_check: EndCheck | None = None  # the latest question ...
        self._ahead_check: EndCheck | None = None  # ... and the latest one asked ahead
        self._lot = trio.lowlevel.ParkingLot()

    def ask(self, check: EndCheck) -> None:
        """A question (an older one still waiting is moot)."""
        if check.id == AHEAD:
            self._ahead_check = check
        else:
            self._end_check = check
        self._lot.unpark_all()

    async def run(self) -> None:
        """Answer the latest question, one at a time, until cancelled. Cancelling waits for
        the model's run in progress, if any (tens of ms)."""
        async with trio.open_nursery() as nursery:
            await self._questions(nursery)

    async def _questions(self, nursery: trio.Nursery) -> None:
        c = self.counters
        ahead: _Judgement | None = None  # the model's run asked ahead (its silence's)
        vetoed = -1  # the silence whose transcript stops mid-sentence: its questions are moot
        words = self._transcripts
        while True:
            while self._end_check is None and self._ahead_check is None:
                await self._lot.park()
            if (check := self._end_check) is None:
                assert self._ahead_check is not None
                check, self._ahead_check = self._ahead_check, None
                if ahead is not None and ahead.stop == check.stop:
                    continue  # silero heard the silence the level found: asked
                made = None if words is None else words.speculated_now(check.stop)
                if made is not None and self._words_decide(made) is not None:
                    continue  # the words will answer the question: no run
                if self._busy() or (ahead is not None and not ahead.done.is_set()):
                    c.end_checks_ahead_skipped += 1  # other questions first: ask when it comes
                    continue
                ahead = self._judging(nursery, check)
                continue
            self._end_check = None
            if self._ahead_check is not None and self._ahead_check.stop == check.stop:
                self._ahead_check = None  # asked now: moot
            if check.stop == vetoed:  # asked again: the same words, still unfinished
                self._answer(check, False, TurnEndBy.WORDS)
                continue
            # the speculative transcript of this silence (asked for at 64 ms of it; the final
            # is that text, so waiting for it delays none): when it decides alone, the model's
            # run is not waited for, nor started if the text is at hand already
            heard = None if words is None else words.speculated_now(check.stop)
            decided = None if heard is None else self._words_decide(heard)
            judgement, asked_ahead = None, False
            if decided is None:
                if ahead is not None and ahead.stop == check.stop and not check.again:
                    judgement, ahead, asked_ahead = ahead, None, True
                else:
                    judgement = self._judging(nursery, check)
                if words is not None and heard is None:
                    heard = await words.speculated(check.stop)
                    decided = None if heard is None else self._words_decide(heard)
            prob = None
            if decided is not None:
                complete, why = decided  # the model could not change it
                c.end_checks_words += 1
            else:
                assert judgement is not None
                await judgement.done.wait()
                prob = judgement.probability
                c.end_checks_ahead += asked_ahead
                complete = prob >= self._threshold
                c.end_checks_complete += complete
                why = ""
                if heard is not None:
                    complete, why = with_words(
                        complete, heard, self._end_mark_threshold, self._sure
                    )
            self._count(why)
            vetoed = check.stop if why in (UNFINISHED, UNSURE) else vetoed
            log.debug(
                "end of turn?",
                extra={
                    "silence_began": check.stop,
                    "probability": None if prob is None else round(prob, 3),
                    "end_mark": None if heard is None else heard.end_mark,
                    "why": why,
                    "complete": complete,
                },
            )
            by = TurnEndBy.WORDS if decided is not None or why else TurnEndBy.MODEL
            self._answer(check, complete, by)

    def _judging(self, nursery: trio.Nursery, check: EndCheck) -> _Judgement:
        """The model's run for `check`, started in the background."""
        judgement = _Judgement(check.stop)

        async def judge() -> None:
            judgement.probability = await self._judge(check)
            judgement.done.set()

        nursery.start_soon(judge)
        return judgement

    def _words_decide(self, heard: Heard) -> tuple[bool, str] | None:
        """The verdict the silence's transcript gives whatever the model says (why: as
        `with_words`), or None if the model's verdict counts: the words stop mid-sentence,
        Whisper is unsure the sentence ends there, or it is sure it does."""
        complete = with_words(True, heard, self._end_mark_threshold, self._sure)
        incomplete = with_words(False, heard, self._end_mark_threshold, self._sure)
        if complete[0] != incomplete[0]:
            return None
        return incomplete if incomplete[0] else complete

    def _count(self, why: str) -> None:
        c = self.counters
        c.end_checks_unfinished += why == UNFINISHED
        c.end_checks_unsure += why == UNSURE
        c.end_checks_sure += why == SURE

    async def _judge(self, check: EndCheck) -> float:
        t0 = time.perf_counter()
        prob: float = await self._offload(self._model.probability, check.audio)
        self.counters.end_checks += 1
        self.counters.end_check_s += time.perf_counter() - t0
        return prob
