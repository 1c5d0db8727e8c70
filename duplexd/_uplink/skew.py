"""How fast the echo slides against the reference: a capture clock off the playing one.

The echo canceller pairs the uplink's samples with the server's clock once and hands AEC3 the
reference on that pairing (`echo.EchoCanceller._server`). The echo stays put on it only while
whatever plays the agent's voice and the microphone that hears it keep the same time. They do
not when they are two devices (a USB microphone beside a laptop's speakers, a headset's
microphone beside a TV), nor when the speaker follows the network's clock: each crystal is tens
of ppm off on good hardware and a few hundred on poor, so the echo slides against the
reference, 6 ms a minute at 100 ppm, 18 at 300. AEC3 follows a path that moves that slowly,
but only so far: once the echo has slid past its filter (or before its reference), the glue
must realign, and each realignment starts AEC3 over (measured: false barge-ins every few
minutes at 300 ppm, `bench.aec_drift`).

Nor, on one device, while its player lets its buffer run: the player takes the server's
frames at the sound card's rate, and the echo slides with what the buffer gained or lost.

`EchoSkew` learns the slide from the presence check's verdicts, whatever its cause: each clear
one says where the echo's direct path was (`observe`: the reference index whose echo the uplink
heard at a sample, less that sample, to a fraction of a sample). A straight line through the
last `SPAN_S` of them is the slide (fitted robustly: a verdict may have found a reflection
instead); once they span `MIN_SPAN_S` and fit it within `FIT_SAMPLES`, the reference is handed
on along it (`shift`: how many samples later than the pairing says), so the path AEC3 sees
stays where it was, to a sample. A verdict off the line by `JUMP_MS` is a reflection or a jump
of the path (a player that refilled its buffer, another device): kept out of the line, and
`JUMPED` of them in a row, near each other, start it afresh from them (the slope followed
stays: the clocks did not change). A client's PLAYED reports drift with its clock too; the
canceller moves the reference by what they say less what the slide already moved it
(`EchoCanceller.note_played`). What it bought: bench/results/README.md, "An echo that slides".

One per echo canceller; not thread-safe (the session's uplink worker calls it).
"""

from __future__ import annotations

import collections
from typing import Final

import numpy as np

SPAN_S: Final = 30.0  # the verdicts the slide is fitted to: the last this long of uplink
MIN_SPAN_S: Final = 8.0  # ... and none is followed before they span this long
MIN_POINTS: Final = 12
FIT_SAMPLES: Final = 6.0  # the verdicts' RMS off the line, at most (16 kHz samples)
JUMP_MS: Final = 2.0  # a verdict this far off the line is not on it
JUMPED: Final = 3  # ... this many in a row, within `JUMP_MS` of each other: the path jumped
MAX_PPM: Final = 1000.0  # a slide faster than this is no clock's: not followed


class EchoSkew:
    """The echo's slide against the reference, and the shift that follows it."""

    def __init__(self, rate_hz: int = 16_000) -> None:
        self._span = SPAN_S * rate_hz
        self._min_span = MIN_SPAN_S * rate_hz
        self._jump = JUMP_MS * rate_hz / 1000
        self._points: collections.deque[tuple[float, float]] = collections.deque()
        self._off: list[tuple[float, float]] = []  # verdicts off the line, in a row
        self._line: tuple[float, float] | None = None  # (slope, offset at 0) once fitted
        self.slope = 0.0  # followed: reference samples per uplink sample, less one
        self._anchor = 0  # `shift` is `_base` at uplink sample `_anchor`, then `slope` on
        self._base = 0.0
        self.restarts = 0  # times the path jumped and the line started afresh (observability)

    def shift(self, pos: int) -> float:
        """How much later (samples, fractional) to hand the reference at uplink sample `pos`
        than the pairing alone says."""
        return self._base + self.slope * (pos - self._anchor)

    def observe(self, at: float, offset: float, now: int) -> None:
        """A verdict: the echo heard around uplink sample `at` came from reference index
        `at + offset` (its direct path); `now`: the uplink sample the caller is at (where a
        new slope takes over, so the shift never jumps)."""
        line = self._line
        if line is not None and abs(offset - (line[0] * at + line[1])) > self._jump:
            self._off.append((at, offset))
            near = [o for _, o in self._off]
            if len(self._off) < JUMPED:
                return
            if max(near) - min(near) > self._jump:  # (scattered: reflections, not a jump)
                self._off = self._off[1:]
                return
            self._points.clear()  # the path jumped: the line starts over from here
            self._points.extend(self._off)
            self._line = None  # (the slope followed stays: the clocks did not change)
            self.restarts += 1
        else:
            self._points.append((at, offset))
        self._off = []
        while self._points and at - self._points[0][0] > self._span:
            self._points.popleft()
        self._fit(now)

    def _fit(self, now: int) -> None:
        """A line through the verdicts held: the median of their pairwise slopes (a few
        reflections move it little), then least squares over those within half `JUMP_MS` of
        it (live, a verdict 1.5 ms off now and then, from a player that ran late for a
        moment, held the line back for 25 s when let in)."""
        pts = self._points
        if len(pts) < MIN_POINTS or pts[-1][0] - pts[0][0] < self._min_span:
            return
        x = np.array([p[0] for p in pts])
        y = np.array([p[1] for p in pts])
        i, j = np.triu_indices(len(x), 1)
        apart = x[j] - x[i]
        far = apart > self._min_span / 4  # (pairs close together say little of a slope)
        if not far.any():
            return
        rough = float(np.median((y[j] - y[i])[far] / apart[far]))
        inner = np.abs(y - rough * x - float(np.median(y - rough * x))) <= self._jump / 2
        if np.count_nonzero(inner) < max(MIN_POINTS, 2 * len(x) // 3):
            return  # (no line most of them are on)
        x, y = x[inner], y[inner]
        xc = x - x.mean()
        slope = float(np.dot(xc, y - y.mean()) / np.dot(xc, xc))
        fitted = y.mean() + slope * xc
        if float(np.sqrt(np.mean(np.square(y - fitted)))) > FIT_SAMPLES:
            return  # (not a line: the path wanders; nothing new followed)
        self._line = (slope, float(y.mean() - slope * x.mean()))
        if abs(slope) <= MAX_PPM * 1e-6:
            self._follow(slope, now)

    def _follow(self, slope: float, now: int) -> None:
        self._base, self._anchor = self.shift(now), now
        self.slope = slope

    @property
    def ppm(self) -> float:
        """The slide followed, as how fast the capturing clock runs against the playing one,
        in ppm (0: none, or not known yet): a microphone whose clock runs slow reads
        negative."""
        return -self.slope / (1.0 + self.slope) * 1e6
