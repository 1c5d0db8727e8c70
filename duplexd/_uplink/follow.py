"""How far a run's first PLAYED report must move to move the echo canceller's reference.

A client's player starts each run of frames (an utterance's first, the next after a gap) where
its buffer and its clock put it: a fraction of a millisecond or a few off where the last run
left it. The run's first report says where (echo.py, `note_played`), and the reference moves
with it at once: AEC3's filter is aligned to a sample, and a run played 0.94 ms off the
reference leaked its first syllable ~250 ms in (a false barge-in, live, `python -m bench
--uplink-echo-played`; bench/results/README.md, "A run's first report followed from a quarter
of a millisecond"). At 8 ms (earlier), runs 2-3 ms off leaked too.

What must not move it is the reports' own scatter: a client that reads its clock when its
sound card's callback runs (the chat without the card's DAC time) reports each sample up to a
millisecond or so off, and each followed scatter would be a jump AEC3 did not need. Within a
run the player cannot move without a gap (and a gap starts a run), so the steps between
consecutive reports of a run (after the echo's slide, `skew.py`) are that scatter, plus the
odd real move. A run's first report is followed from `SCATTER_TIMES` their median over the
last `SCATTER_REPORTS` steps, but never from less than `FOLLOW_LEAST_MS` nor more than
`FOLLOW_MOST_MS`; from the most until `SCATTER_LEAST` steps are known (a session's first
reply gives them: a report every 200 ms). The bench's player and the browser client, which
time their reports on the audio clock, scatter by ~0.004 ms (median) and are followed from the
least; a sound card's monotonic clock, from the most.
"""

from __future__ import annotations

import collections
from typing import Final

FOLLOW_LEAST_MS: Final = 0.25
FOLLOW_MOST_MS: Final = 1.0
SCATTER_TIMES: Final = 4.0
SCATTER_REPORTS: Final = 32
SCATTER_LEAST: Final = 3


class FollowRule:
    """The move (16 kHz samples, or the session's rate) from which a run's first PLAYED report
    moves the reference: `threshold`, learned from the steps between a run's reports (`add`)."""

    def __init__(self, rate_hz: int) -> None:
        self._least = FOLLOW_LEAST_MS * rate_hz / 1000
        self._most = FOLLOW_MOST_MS * rate_hz / 1000
        self._steps: collections.deque[float] = collections.deque(maxlen=SCATTER_REPORTS)
        self._last: float | None = None  # the last report's delay (after the echo's slide)
        self.threshold = self._most

    def add(self, delay: float, *, run_first: bool) -> None:
        """A (non-final) report whose sample played `delay` samples after it was sent, on the
        client's clock, less the echo's slide since; `run_first`: it names a run's first frame."""
        last, self._last = self._last, delay
        if last is None or run_first:
            return
        self._steps.append(abs(delay - last))
        if len(self._steps) >= SCATTER_LEAST:
            median = sorted(self._steps)[len(self._steps) // 2]
            self.threshold = min(max(SCATTER_TIMES * median, self._least), self._most)
