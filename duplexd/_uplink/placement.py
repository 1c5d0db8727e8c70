"""A frame the client's player may have played either of two ways: AEC3 run on both.

The echo reference places each frame where the client's player plays it (echo.py): a frame sent
up to `PLAYER_BUFFER_MS` after where the previous one ended continues it (at the edge, a tick
more: `RunRule`), a later one starts a new run after a gap. The server cannot see the player,
only model it: its buffer is the client's (the browser client's holds 50 ms, the bench's 40,
WebRTC's 20-80), and how full it is when a late frame comes depends on when the client received
the run's first frame (its own loop late or not). When synthesis falls behind and the pacer
skips a few ticks, the frame after them comes 25-120 ms late, and the player may have played it
either way; placed the other way, its echo comes 20-120 ms off its reference, and AEC3 follows
such a jump in seconds, not milliseconds (measured, `tests/test_echo.py`: 2.5 dB taken out over
the second after a 60 ms stall that a 60 ms player played on and the reference put after a gap,
0-12 dB in each 100 ms of it, against 28.7 with both placements tried; the other way round, a 40
ms stall a 30 ms player played after a gap, 24.9 against 30.8, under 5 dB in two of its 100 ms).
A client that does not report PLAYED leaves the server one more guess: a new run (after a gap)
starts a buffer after its first frame reached the client, which may have been sooner than the
run before's first did; then its echo comes before where AEC3's filter expects it (`SOONER_MS`).

So `Placement`: from the frame's place on (`boundary`), two more AEC3s run, one per placement,
both brought up alike on the last second of uplink (the reference before the boundary is the
same either way), next to the session's own. A 10 ms frame goes on from the other placement's
AEC3 where it left far less than both the session's and the judge as placed (`_QUIETER`: the
echo of the player's placement cancelled, the other's let through), else from the session's
own. Once `DECIDE_MS` of reference with sound past the boundary has been handed on, the two
judges' leftovers over it are compared: if the other placement left at most half the energy of
the reference's, it stays, as the reference (`EchoCanceller` rewrites its ring) and as AEC3.

Not thread-safe: the session's uplink worker runs it, inside `EchoCanceller.process`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt
import pywebrtc_audio

from .ring import SENT_LOUD

FloatArray = npt.NDArray[np.float32]

# A frame this late (cumulatively, within its run) may have been played either way ...
UNSURE_FROM_MS: Final = 25.0  # (one pacer tick late plays on in any buffer of 40 ms or more)
UNSURE_TO_MS: Final = 120.0  # (any player's buffer, 20-80 ms, and the client's loop 40 ms late)
# A new run (after a gap) of a client that does not report PLAYED may have been played up to this
# much sooner than the run before it, against its sends: its player starts each run a buffer
# after the run's first frame arrives, and that frame came sooner (the network's jitter, the
# client's loop). An echo up to ~30 ms later than the one before it AEC3's filter takes; one
# that comes sooner falls before it, and AEC3 let it through for seconds (`bench.aec_runs`:
# runs played 10-30 ms sooner, false triggers in 7-8 of 8 scenarios). So that run is also tried
# placed this much sooner: an echo 0-30 ms sooner than expected is then 0-30 ms later than that.
SOONER_MS: Final = 30.0
DECIDE_MS: Final = 300.0  # ... until this much reference with sound past it was handed on
# ... and tried at most once in this much reference (its AEC3s brought up cost the uplink's
# thread ~24 ms; a client that reads its frames late on purpose must not make it run on)
TRY_EVERY_MS: Final = 1000.0
_BETTER: Final = 0.5  # the other placement stays if it left at most this share of the energy
# A frame goes on from the other placement's AEC3 if it left at most this share of what the
# session's and the judge of the reference's placement did (an echo one placement cancels and
# the other lets through: 10-30 dB apart); not for its AEC3 being younger: a fresh AEC3 ducks
# a user's onset harder (replayed live: a barge-in a window later, against the session's AEC3
# alone; the judge as placed, as young, ducks it as much)
_QUIETER: Final = 0.25
_GIVE_UP_MS: Final = 1500.0  # decided by what there is once this much reference went by

Segment = Callable[[int, int], FloatArray]


class RunRule:
    """Where the client's player plays a frame, as the reference models it: a frame sent up to
    `buffer_ms` (the player's buffer) after the run's last one ended continues the run, a
    later one starts a new run after a gap. `late`: samples between the run's end and when
    the frame was sent.

    At the buffer's edge the rule leans to "continues": a frame up to a tick past it that is
    no more than a tick later than the run's last frame was (the frame before it, as late,
    continued the run) continues it too. Where the player stands against its buffer, the server
    cannot see to a tick (the network's delay of the run's first frame sets it), and the two
    ways to be wrong are not alike: the reference on where the player ran dry is an echo after
    its reference, which AEC3's filter takes and the run's PLAYED report moves (`move_run`,
    before its echo comes), while a gap the player never played is an echo before its
    reference, which nothing moves back (a report moves a run later, never sooner within its
    run). Live (rt60-300, seed 196 of `bench/results/aec-edge/`): a frame sent 39.9 ms late
    continued its run, the next one, 0.5 ms later still, was put after a gap, the player played
    both on, and the 280 ms of echo after it leaked a false barge-in."""

    def __init__(self, rate_hz: int, buffer_ms: float) -> None:
        self.contiguous = round(buffer_ms * rate_hz / 1000)
        self._allowed = self.contiguous  # this late, a frame continues the run ...
        self._run_late = 0  # (... as late as its last frame was: the buffer it has used)
        self._unsure = (
            round(UNSURE_FROM_MS * rate_hz / 1000),
            round(UNSURE_TO_MS * rate_hz / 1000),
        )
        self._tick = rate_hz // 100  # (a frame later than the last by less: the send's jitter)
        self._sooner = round(SOONER_MS * rate_hz / 1000)

    def continues(self, late: int) -> bool:
        """Whether a frame sent `late` samples after the run's end continues it (the class doc)."""
        tick = self._tick
        return late <= self._allowed or (
            late <= self._allowed + tick and late <= self._run_late + tick
        )

    def unsure(self, late: int) -> int | None:
        """The other placement's shift if the player may have played it either way (a frame
        later than the run's were, by more than jitter), else None."""
        if not (self._unsure[0] < late <= self._unsure[1] and late > self._run_late + self._tick):
            return None
        return late if self.continues(late) else -late

    def other(self, late: int, *, reported: bool) -> tuple[int, int] | None:
        """Where else the player may have played a frame sent `late` samples after the run's
        end: (the boundary, from the run's end; the shift from there), or None. A frame late
        within its run: after a gap, or on where the rule put one (`unsure`); a new run of a
        client that does not report PLAYED (`reported`): up to `SOONER_MS` sooner, never
        before the run's end."""
        shift = self.unsure(late)
        if shift is not None:
            return 0, shift
        if reported or self.continues(late):
            return None
        shift = -min(self._sooner, late)
        return late + shift, shift

    def place(self, late: int) -> bool:
        """Whether the frame continues the run (else: a new run, where it was sent)."""
        if self.continues(late):
            self._run_late = max(0, late)
            return True
        self._run_late, self._allowed = 0, self.contiguous
        return False

    def played(self, shift: int) -> None:
        """The other placement, `shift`, was the player's (from the frame it was tried at)."""
        if shift < 0:  # the player played on: its buffer holds that much, for the run's rest
            self._allowed, self._run_late = max(self._allowed, self._tick - shift), -shift
        else:
            self._run_late, self._allowed = 0, self.contiguous


class Placement:
    """The other placement of the reference from `boundary` on: `shift` samples later than
    the reference has it there (silence first), or earlier if negative (the frame continued
    the run in the player, not after a gap; or a new run the player started sooner)."""

    def __init__(self, rate_hz: int, boundary: int, shift: int) -> None:
        self.boundary = boundary
        self.shift = shift
        # judged between two AEC3s brought up alike, one per placement (a fresh AEC3's
        # suppressor ducks harder than one that ran on: against the session's, a wrong
        # placement won); the session's goes on meanwhile, and the other one's may replace it
        self._judges = (
            pywebrtc_audio.EchoCanceller(rate_hz),
            pywebrtc_audio.EchoCanceller(rate_hz),
        )
        self.aec = self._judges[1]
        self._frame = rate_hz // 100
        self._decide = round(DECIDE_MS * rate_hz / 1000)
        self._give_up = round(_GIVE_UP_MS * rate_hz / 1000)
        self._sounding = 0  # reference samples with sound past the boundary handed on
        self.energy = [0.0, 0.0]  # left past the boundary by the judges: as placed, the other way

    def segment(self, main: Segment, start: int, length: int) -> FloatArray:
        """Reference [start, start + length) placed the other way (`main`: as placed)."""
        b, s = self.boundary, self.shift
        if start + length <= b:
            return main(start, length)
        out = np.zeros(length, dtype=np.float32)
        if start < b:
            out[: b - start] = main(start, b - start)
        lo = max(start, b + max(0, s))  # (a later placement: silence first, as it was sent)
        if lo < start + length:
            out[lo - start :] = main(lo - s, start + length - lo)
        return out

    def bring_up(self, main: Segment, uplink: FloatArray, start: int) -> None:
        """Both judges run on the uplink before now, handed reference from index `start` on,
        placed either way (`main`: as placed)."""
        self._judges[0].process(uplink, main(start, len(uplink)))
        self._judges[1].process(uplink, self.segment(main, start, len(uplink)))

    def process(
        self, chunk: FloatArray, start: int, far: FloatArray, ours: FloatArray, out: FloatArray
    ) -> FloatArray:
        """Uplink `chunk` (whole 10 ms frames), handed with reference `far` (as placed; `ours`:
        placed the other way) from index `start`; `out`: what the session's AEC3 left. Returns
        what goes on: a frame from the other placement's AEC3 where it left at most `_QUIETER`
        of what both the session's and the judge as placed left, else from `out`."""
        f = self._frame
        k = len(chunk) // f

        def energies(x: FloatArray) -> npt.NDArray[np.float64]:
            y = x.reshape(k, f).astype(np.float64)
            return np.asarray(np.einsum("ij,ij->i", y, y))

        placed = energies(self._judges[0].process(chunk, far))
        other = self.aec.process(chunk, ours)
        theirs = energies(other)
        past = start + np.arange(k) * f >= self.boundary
        if np.any(past):
            self.energy[0] += float(np.sum(placed[past]))
            self.energy[1] += float(np.sum(theirs[past]))
            loud = np.maximum(np.abs(far), np.abs(ours)) > SENT_LOUD
            self._sounding += int(np.count_nonzero(loud.reshape(k, f)[past]))
        pick = (theirs < _QUIETER * energies(out)) & (theirs < _QUIETER * placed)
        if not np.any(pick):
            return out
        result = out.copy().reshape(k, f)
        result[pick] = other.reshape(k, f)[pick]
        return result.reshape(-1)

    def verdict(self, handed_end: int) -> bool | None:
        """Whether the other placement is the player's (None: not known yet), with the reference
        handed on up to `handed_end`."""
        if self._sounding < self._decide and handed_end < self.boundary + self._give_up:
            return None
        return self.energy[0] > 0.0 and self.energy[1] <= _BETTER * self.energy[0]
