"""The trio side of the soft barge-in: the hold the session keeps while the worker decides.

A soft barge-in (`vad.barge_in_mode: "soft"`) asks the session to hold its audio (`hold`),
and the uplink worker's `soft.SoftBargeIn` follows the sound until it decides (`Settled`, which
`settle` hands the session: resume where it paused, or commit the interruption). `Holds`
keeps which onset the session holds for, lets the transcripts know a held sound's words are
wanted, and decides a hold the worker has not decided `HOLD_GRACE_S` after its window (the
client stopped sending audio: `watch`). What it tells the worker (the session is not holding:
forget the sound) goes through `unheld`, in its place among the frames.

One per session with soft barge-ins, owned by its `Uplink`; called from the trio thread only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from ..protocol import frames as fr
from .counters import UplinkCounters
from .soft import Settled
from .transcripts import HoldCheck, Transcripts

HOLD_GRACE_S: Final = 1.0  # a hold still undecided this long after its window is decided here


class Holds:
    """Which barge-in's sound the session holds its audio for (`held`: its onset, 16 kHz)."""

    def __init__(
        self,
        *,
        window_ms: float,
        scale: int,
        counters: UplinkCounters,
        hold: Callable[[float, int], bool],
        settle: Callable[[Settled, int], None],
        unheld: Callable[[], None],
    ) -> None:
        self._window_s = window_ms / 1000 + HOLD_GRACE_S
        self._scale = scale  # uplink samples per 16 kHz sample
        self._counters = counters
        self._hold: Callable[[float, int], bool] | None = hold
        self._settle: Callable[[Settled, int], None] | None = settle
        self._unheld: Callable[[], None] | None = unheld
        self.transcripts: Transcripts | None = None  # (told while a sound is held)
        self.held: int | None = None
        self._lot = trio.lowlevel.ParkingLot()

    def forget_session(self) -> None:
        """The session has ended: let go of its callbacks (each refers back to it)."""
        self._hold = self._settle = self._unheld = None
        self.transcripts = None

    def begin(self, delay_s: float, onset: int) -> None:
        """A barge-in at 16 kHz sample `onset`, decided `delay_s` after its frame arrived: the
        session holds its audio if anything plays (else the worker forgets the sound)."""
        if self.held is not None or self._hold is None:
            return  # (a sound held goes on: the same)
        if self._hold(delay_s, onset * self._scale):
            self._counters.holds += 1
            self.held = onset
            if self.transcripts is not None:
                self.transcripts.holding = True
            self._lot.unpark_all()
        elif self._unheld is not None:  # nothing was playing: nothing to decide
            self._unheld()

    def check_words(self, check: HoldCheck) -> None:
        """The worker wants the held sound's words (`HoldCheck`)."""
        if self.held is not None and self.transcripts is not None:
            self.transcripts.check_words(check)

    def settled(self, settled: Settled) -> None:
        """The worker decided the held sound (if the session still holds for it)."""
        if self.held is not None:
            self._end(settled)

    def ended(self) -> None:
        """The session stopped holding (the client interrupted meanwhile): the soft barge-in
        in progress, if any, decides nothing more."""
        if self.held is not None:
            self.held = None
            if self.transcripts is not None:
                self.transcripts.check_words(None)
                self.transcripts.holding = False
            self._lot.unpark_all()
            if self._unheld is not None:
                self._unheld()

    def _end(self, settled: Settled) -> None:
        self.held = None
        if self.transcripts is not None:
            self.transcripts.holding = False
        self._lot.unpark_all()
        self._counters.holds_resumed += settled.resume
        self._counters.holds_committed += not settled.resume
        if self._settle is not None:
            self._settle(settled, settled.onset * self._scale)

    async def watch(self) -> None:
        """Session task: a hold the worker has not decided `HOLD_GRACE_S` after its window
        (the client stopped sending audio) is an interruption. Cancelling leaves nothing."""
        while True:
            while (onset := self.held) is None:
                await self._lot.park()
            with trio.move_on_after(self._window_s):
                while self.held == onset:
                    await self._lot.park()
            if self.held == onset:
                if self._unheld is not None:
                    self._unheld()
                self._end(Settled(onset, False, fr.BargeInReason.TIMEOUT))
