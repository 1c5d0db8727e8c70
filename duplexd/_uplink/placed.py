"""The echo reference as the client's player played it: the sent audio, placed (echo.py).

Each frame sent is placed where the player plays it, as `RunRule` models the player
(placement.py): a frame sent up to the player's buffer after the run's last one ended (at the
edge, a tick more) continues the run, back to back; a later one starts a new run, after a gap,
where it was sent.
The last seconds of it are held in a ring by server-clock sample index, and where each frame
(utterance id, seq) was placed, and which began a run of sends, for the PLAYED reports that
name a frame. What the echo or a report shows the player did otherwise moves it: from a late
frame's other placement on (`move_from`), or one run that played later (`move_run`).

One per echo canceller; not thread-safe.
"""

from __future__ import annotations

import collections
from typing import Final

import numpy as np
import numpy.typing as npt

from .placement import RunRule
from .ring import SENT_LOUD, SampleRing

FloatArray = npt.NDArray[np.float32]
Frame = tuple[int, int]  # (utterance id, seq)

SENT_FRAMES: Final = 400  # frames whose place is remembered (8 s of 20 ms)


class PlacedAudio:
    """The sent audio at 16 kHz (`rate_hz`), the last `cap` samples (a power of two), placed
    by a player whose buffer is `buffer_ms`."""

    def __init__(self, rate_hz: int, cap: int, buffer_ms: float) -> None:
        self.cap = cap
        self._ring = SampleRing(cap)
        self.rule = RunRule(rate_hz, buffer_ms)
        self.end: int | None = None  # the index after the last sample placed (None: none yet)
        self.active_until = -(1 << 62)  # ... and after the last one with sound
        self._frames: collections.OrderedDict[Frame, int] = collections.OrderedDict()
        self._firsts: set[Frame] = set()  # (those that began a run of sends)
        self._confirmed: set[Frame] = set()  # (... and a PLAYED report placed: `confirm`)
        self._forgotten_confirmed = False  # (... the last run-first one forgotten)

    def place(self, idx: int, samples: FloatArray, frame: Frame | None) -> bool:
        """`samples` sent at index `idx` (`frame`: its id, or None): placed where the player
        plays them. Returns whether they continue the run before (at `end`, as it was)."""
        end = self.end
        continues = end is not None and self.rule.place(idx - end)
        if continues:
            assert end is not None
            idx = end  # the next frame of the same paced run ...
        if end is not None and idx > end:
            self._ring.write(end, np.zeros(min(idx - end, self.cap), dtype=np.float32))
        self._ring.write(idx, samples)
        self.end = idx + len(samples)
        if float(np.max(np.abs(samples))) > SENT_LOUD:
            self.active_until = self.end
        if frame is not None:
            self._frames[frame] = idx
            if not continues:
                self._firsts.add(frame)
            if len(self._frames) > SENT_FRAMES:
                gone = self._frames.popitem(last=False)[0]
                if gone in self._firsts:  # (its run may go on: a long reply)
                    self._forgotten_confirmed = gone in self._confirmed
                self._firsts.discard(gone)
                self._confirmed.discard(gone)
        return continues

    def segment(self, start: int, length: int) -> FloatArray:
        """Samples [start, start + length); zeros where nothing (known) was placed."""
        return self._ring.read(start, length, self.end)

    def at(self, frame: Frame) -> int | None:
        """Where the first sample of `frame` is placed (None: not known, or forgotten)."""
        return self._frames.get(frame)

    def began_run(self, frame: Frame) -> bool:
        """Whether `frame` began a run of sends (it came after a gap)."""
        return frame in self._firsts

    def confirm(self, frame: Frame) -> None:
        """A PLAYED report on `frame`, which began a run of sends, placed that run where the
        player played it (the reference followed it: echo.py)."""
        if frame in self._firsts:
            self._confirmed.add(frame)

    def confirmed(self, start: int, end: int) -> bool:
        """Whether each run of sends that samples [start, end) belong to was placed by a
        report (`confirm`): the echo of such a run cannot come before its reference."""
        runs = sorted((self._frames[f], f) for f in self._firsts)
        began = [f for i, f in runs if i <= start][-1:]  # (the run [start] belongs to)
        if not began:
            # (a run whose first frame was forgotten, a long reply: as that frame was; before
            # the frames remembered, or nothing sent yet: not known)
            oldest = next(iter(self._frames.values()), None)
            if oldest is None or start < oldest or not self._forgotten_confirmed:
                return False
        return all(f in self._confirmed for f in began + [f for i, f in runs if start < i < end])

    def other(self, idx: int, *, reported: bool) -> tuple[int, int] | None:
        """Where else the player may have played a frame sent at `idx`: (boundary, shift)."""
        end = self.end
        if end is None:
            return None
        got = self.rule.other(idx - end, reported=reported)
        return None if got is None else (end + got[0], got[1])

    def move_from(self, boundary: int, shift: int) -> None:
        """The player played all from `boundary` on `shift` samples later (sooner if negative):
        a late frame's other placement (placement.py), found the player's."""
        self.rule.played(shift)
        end = self.end
        if end is None or end <= boundary:
            return
        self.end = self._ring.move(boundary - min(0, shift), end, shift)
        if self.active_until > boundary:
            self.active_until += shift
        self._shift(boundary, end, shift, 0)

    def move_run(self, at: int, shift: int) -> bool:
        """The player played the frame placed at `at` `shift` samples later (its queue ran dry
        before it): that frame and the rest of its run move, and the runs after it with them
        where the player played the next one on from it (sent within its buffer of where the
        moved run now ends, as `rule` places a frame); else they stay where they are.

        Live, such a frame was sent 39.8 ms late: the rule played it on, but it reached the
        bench's player a little later than that, after its queue ran dry; the next frame, sent
        41 ms late, began a new run in the reference, which the player played on from the late
        one. The whole reference moved 42 ms later at the report on the late frame, and back at
        the next report: the echo leaked in between. Moved alone, the late frame would have
        left the next run 0.7 ms off, and AEC3's filter, aligned to a sample, leaks a run's
        onset from less (false barge-ins: four of the eight left in the replayed sessions;
        tests/test_dry_player.py). Returns whether it moved: not where the ring no longer
        holds the frame (a report on one played long ago)."""
        end = self.end
        if end is None or not 0 <= end - at <= self.cap:
            return False
        firsts = (i for f, i in self._frames.items() if i > at and f in self._firsts)
        nxt = min(firsts, default=end)  # (where the next run of sends begins)
        held = self._ring.read(at, nxt - at, end)
        sounding = np.flatnonzero(held)
        moved_end = at + shift + (int(sounding[-1]) + 1 if len(sounding) else 0)
        later = 0  # (how much the runs after it move)
        if nxt < end and nxt - moved_end <= self.rule.contiguous:
            later = moved_end - nxt
            self.end = self._ring.move(nxt, end, later)
        if nxt == end:
            self.end = self._ring.move(at, end, shift)
            self.rule.played(shift)
        else:
            self._ring.write(at, np.zeros(min(shift, nxt - at), dtype=np.float32))
            self._ring.write(at + shift, held[: moved_end - at - shift])
        if self.active_until > at:
            self.active_until += shift if self.active_until <= nxt else later
        self._shift(at, nxt, shift, later)
        return True

    def _shift(self, start: int, stop: int, shift: int, later: int) -> None:
        """The frames placed in [start, stop) moved `shift`; those placed after, `later`."""
        for frame, i in self._frames.items():
            if i >= start:
                self._frames[frame] = i + (shift if i < stop else later)
