"""How much of the echo AEC3 has learned from, and where nothing sent can echo while it learns.

A fresh AEC3 leaks echo until it has seen about `CONVERGING_S` of uplink with a sounding reference
(the session's first words, or a realignment short of history; measured, it leaks then, above all
with a jittery uplink), so the session hears silence meanwhile (echoview.py). Only 10 ms frames
handed with a sounding reference count: after a realignment to an echo 200 ms later, the history
a fresh AEC3 is brought up on begins with 0.2 s of reference handed as zeros (measured: counted
as learning, a false barge-in at the realignment in the RT60 600 ms room with a jittery uplink).

That silence made the session's first reply deaf for its first ~0.9 s: a user who spoke there was
heard 0.6-1.5 s late (`python -m bench.aec_onsets`). But where nothing audible was handed to AEC3
over the echo's whole span, the agent pausing between words, there is no echo to leak, whatever
AEC3 has learned: `quiet` says so for a window when what was handed from `TAIL_MS` before its
start (the room's tail: an RT60 of 600 ms has decayed 20 dB by then) up to its end was silent,
moved by the echo's lead: where the presence check found the echo's direct path after the
reference as it is handed now, give or take its slack (`locate`). Until it has, nothing is quiet:
the echo may even come before its reference (the clocks paired on a late frame; measured, with
200 ms of jitter the echo came while the reference handed was silent and barged in), and a
reference moved (a report, a placement kept, the clocks paired anew) is not located until
found again (`unlocate`). Such a window is judged as any other while the echo is possible
(`echo_threshold`). Both placements of a late frame being tried (placement.py) count as sent.

Measured (bench/results/README.md, "Heard while AEC3 converges"): `python -m bench.aec_onsets`,
21 of the 120 first-reply onsets heard 220-700 ms sooner (those 0.4-0.7 s in: the agent's pause),
none later, no false trigger; `python -m bench.aec_jitter` the same in all 480 draws; the 288
recorded live sessions replayed: 8 sessions' first user clip heard sooner (715 -> 11 ms, 1,849 ->
697), every new barge-in within a user's clip. A user who starts under the agent's voice in its
first 0.4 s is still heard late (0.6-1.3 s): AEC3 learns under their voice.

One per echo canceller; fed (`add`) the reference of each stretch AEC3 processes, in the uplink
worker's thread.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from .ring import SENT_LOUD

FloatArray = npt.NDArray[np.float32]

CONVERGING_S: Final = 0.6  # an AEC3 that has learned from less uplink than this may leak echo
TAIL_MS: Final = 200.0  # a window may hold the echo of what was handed this long before it
_FRAMES: Final = 128  # 10 ms frames whose sound is kept (1.28 s: the span, the echo's lead)


class Convergence:
    """What AEC3 has learned from (`converging`), and where the reference handed to it was
    silent (`quiet`)."""

    def __init__(self, rate_hz: int) -> None:
        self._frame = rate_hz // 100
        self._needed = round(CONVERGING_S * rate_hz)
        self._tail = round(TAIL_MS * rate_hz / 1000)
        self.learned = 0  # uplink samples AEC3 saw with a sounding reference
        self._loud = np.ones(_FRAMES, dtype=np.bool_)  # by uplink frame: handed with sound
        self._known = 0  # ... from this frame on (before it: unknown, so loud)
        self._end = 0  # ... up to this one
        self._lead: tuple[int, int] | None = None  # the echo's direct path after its reference

    @property
    def converging(self) -> bool:
        """Whether AEC3 has learned from less than `CONVERGING_S` of uplink."""
        return self.learned < self._needed

    def add(self, pos: int, far: FloatArray, other: FloatArray | None = None) -> None:
        """The reference `far` handed to AEC3 with the uplink from sample `pos` on (whole 10 ms
        frames, `pos` on a frame's edge), and `other`, the same stretch as a late frame's other
        placement has it."""
        loud = self._sounding(far)
        self.learned += int(np.count_nonzero(loud)) * self._frame
        if other is not None:
            loud = loud | self._sounding(other)[: len(loud)]
        first = pos // self._frame
        if first != self._end:  # (not the continuation: what lies between is not known)
            self._known = first
        self._end = first + len(loud)
        self._known = max(self._known, self._end - _FRAMES)
        self._loud[np.arange(first, self._end)[-_FRAMES:] % _FRAMES] = loud[-_FRAMES:]

    def restart(self, pos: int, history: FloatArray) -> None:
        """A fresh AEC3 brought up on `history` (whole 10 ms frames), the reference handed with
        the uplink up to sample `pos` on the new alignment (what was handed before no longer
        lines up)."""
        self.learned = 0
        self._end = -1  # (what was held is not on this alignment)
        self.add(pos - len(history), history)

    def locate(self, lead: int, slack: int) -> None:
        """The presence check found the echo's direct path `lead` samples after the reference
        as it is handed now, within `slack`."""
        self._lead = (lead - slack, lead + slack)

    def unlocate(self) -> None:
        """The reference is handed on another mapping: where the echo comes is not known (it
        may even come before its reference: clocks paired on a late frame, echo.py)."""
        self._lead = None

    def no_echo(self, start: int, end: int) -> bool:
        """Whether no echo of what was handed can reach the uplink samples [start, end): the
        echo located, and `quiet` there."""
        return self._lead is not None and self.quiet(start, end, *self._lead)

    def quiet(self, start: int, end: int, least_lead: int, most_lead: int) -> bool:
        """Whether no echo of what was handed can reach the uplink samples [start, end), its
        direct path coming `least_lead` to `most_lead` samples after its reference: nothing
        sounding was handed from `TAIL_MS` plus `most_lead` before `start` up to `least_lead`
        before `end`."""
        f = self._frame
        first = (start - most_lead - self._tail) // f
        last = -(-(end - least_lead) // f)  # (the frame after the last, rounded up)
        if first < self._known or last > self._end:
            return False
        return not self._loud[np.arange(first, last) % _FRAMES].any()

    def _sounding(self, far: FloatArray) -> npt.NDArray[np.bool_]:
        """Per whole 10 ms frame of `far`: whether it has sound."""
        f = self._frame
        k = len(far) // f
        loud: npt.NDArray[np.bool_] = (
            np.max(np.abs(far[: k * f].reshape(k, f)), axis=1, initial=0.0) > SENT_LOUD
        )
        return loud
