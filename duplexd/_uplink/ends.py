"""The smart end of turn's questions: the turn model asked about a silence, and the words' veto.

The detector (vad.py) asks whether the turn is complete once the user has been silent
`min_silence_ms` (an `EndCandidate`); the uplink's worker sends the question here as an
`EndCheck` with the turn's last 8 s (`turn.WINDOW_SAMPLES`). A silence the turn may end at is
also asked about ahead (`AHEAD`: a `padded` `Speculate`, once it has lasted the turn's pad:
the model hears that much silence; Whisper's speculative transcript, asked at 64 ms, is done
by then or nearly, so the two no longer share the cores), so that the answer is ready when
the question comes: the model takes 70-140 ms on a 2-core box. It is
asked ahead only while it is idle: under load that would be a run more per pause, ahead of
other sessions' end checks. A "complete" also waits for the speculative transcript of the
same silence (in English): if it stops mid-sentence ("I'd like a table for", unfinished.py),
or Whisper, which hears the voice too, is not sure the sentence ends there (its end mark's
probability under `end_mark_threshold`: "Can you remind me to call? | my mother", window.py),
the turn is not complete after all, and the questions the detector asks again about the same
silence (`smart_reask_ms`) are answered so without the model: the words are the same. The other
way round, an "incomplete" is overruled when Whisper is sure of its end mark (`end_mark_sure`)
and the words may end there: the model scored some sentences' ends 0.13-0.47 that Whisper heard
end at 0.93-0.97 (`python -m bench.end_marks`); the transcript is not waited for then, only
taken if it is ready (made at 64 ms of silence, it is, but under load).
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

from .counters import UplinkCounters
from .services import Offload
from .transcripts import Transcripts
from .turn import TurnModel
from .unfinished import sounds_unfinished
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


class EndOfTurn:
    """One session's questions to the daemon's turn model. `ask` from the trio thread; `run`
    as a session task; each verdict goes to `answer(candidate id, complete)`."""

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
        answer: Callable[[int, bool], None],
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
        """Answer the latest question, one at a time, until cancelled. Cancelling waits for a
        question in progress (tens of ms)."""
        c = self.counters
        ahead: tuple[int, float] | None = None  # (silence, probability) answered ahead
        vetoed = -1  # the silence whose transcript stops mid-sentence: its questions are moot
        while True:
            while self._end_check is None and self._ahead_check is None:
                await self._lot.park()
            if (check := self._end_check) is None:
                assert self._ahead_check is not None
                check, self._ahead_check = self._ahead_check, None
                if ahead is not None and ahead[0] == check.stop:
                    continue  # silero heard the silence the level found: answered
                if self._busy():  # other sessions' questions first: ask when it comes
                    c.end_checks_ahead_skipped += 1
                    continue
                ahead = (check.stop, await self._judge(check))
                continue
            self._end_check = None
            if self._ahead_check is not None and self._ahead_check.stop == check.stop:
                self._ahead_check = None  # asked again now: moot
            if check.stop == vetoed:  # asked again: the same words, still unfinished
                self._answer(check.id, False)
                continue
            if ahead is not None and ahead[0] == check.stop and not check.again:
                prob, ahead = ahead[1], None
                c.end_checks_ahead += 1
            else:
                prob = await self._judge(check)
            complete = prob >= self._threshold
            c.end_checks_complete += complete
            if (words := self._transcripts) is not None:
                # the speculative transcript of this silence (ready, or nearly: asked for with
                # the question ahead; the final is that text, so waiting for it delays none);
                # for an "incomplete" only if it is ready (under load a decode waits its turn,
                # and this session's next questions would wait on it)
                if complete:
                    heard = await words.speculated(check.stop)
                else:
                    heard = words.speculated_now(check.stop) if self._sure < 1 else None
                if heard is not None:
                    complete, moot = self._with_words(complete, heard)
                    vetoed = check.stop if moot else vetoed
            log.debug("end of turn?", extra={"probability": round(prob, 3)})
            self._answer(check.id, complete)

    def _with_words(self, complete: bool, heard: Heard) -> tuple[bool, bool]:
        """The model's verdict with the silence's transcript: (complete, whether the silence's
        later questions are moot: the words are the same)."""
        complete, why = with_words(complete, heard, self._end_mark_threshold, self._sure)
        c = self.counters
        c.end_checks_unfinished += why == UNFINISHED
        c.end_checks_unsure += why == UNSURE
        c.end_checks_sure += why == SURE
        return complete, why in (UNFINISHED, UNSURE)

    async def _judge(self, check: EndCheck) -> float:
        t0 = time.perf_counter()
        prob: float = await self._offload(self._model.probability, check.audio)
        self.counters.end_checks += 1
        self.counters.end_check_s += time.perf_counter() - t0
        return prob
