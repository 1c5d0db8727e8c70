"""The agent's own voice in what AEC3 let through: a window that would barge in, held back.

AEC3 cancels the echo on the path it has learned. When the path jumps (the phone moved, another
output device, a player that restarted 90 ms later), AEC3 lets the echo through nearly whole until
the presence check finds the new path and realigns (echo.py: a verdict every 0.3 s on the last
second of uplink, so 0.3-0.6 s later), and silero scores that echo as speech: `bench.aec_jitter`'s
path-change room barged in on the agent there in a draw with 10 ms of jitter and one with 45.
What AEC3 lets through then *is* the reference, delayed, and most of its output: the GCC-PHAT of
the output over the last `SPAN_MS` against the reference it was handed peaks sharply (12-16 in
the traced draw's windows that barged in, at the new path), and the output correlates with the
reference at that lag (normalized, the "share": 0.27-0.58 there), where a user talking over the
echo that AEC3 cancels peaks at 4-9.4 (traced: four rooms, the user 0 and +10 dB over the echo).
So a window that would count toward a barge-in (it scores the VAD's `threshold`) while the
agent's voice may be echoing, the near-end check does not hear the user over the echo, and no
barge-in fired for its sound yet (after one the session stops what it says, and the windows are
the user's: a voice near the agent's pitch scored 14.8 with a share of 0.74 against what the
agent had said 345 ms before, with headphones, and its turn went silent for 256 ms), is
asked here: a peak of `LEAK_SCORE` and a share of `LEAK_SHARE` or more make it, and every such
window for `HOLD_MS` after it, silence to the session, as while AEC3 converges (the leak's onsets
after a pause, with little of them in the span, score lower: the hold covers them until the
canceller has followed the path).

Each guard was a false leak first (`bench.aec_onsets`, a user 10 dB over the echo): without
them, 9 of its 240 onsets were heard later, 6 by 500 ms or more. Like the presence check, it
says nothing unless `SENT_SHARE` of the reference it searches was sent with sound, and nothing
of a peak at either end of its range: in a reply's first few hundred ms after a pause, the few
lags where the reference overlaps the output at all stood out of the RMS of all the others
(peaks of 12-27 on the user's voice). And the share: what AEC3 leaves of a delay's echo under
the user's voice is a sharp copy too (a peak of 16.2, a share of 0.19), but little of the output.

Asked only of such windows (none while nobody talks, and a user's barge-in is decided within a
few), one GCC-PHAT of 256 ms against 856 ms of reference at 8 kHz: ~0.6-0.9 ms each on the
2-core box. In the uplink worker's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from .phat import phat
from .presence import SENT_SHARE
from .ring import SENT_LOUD

FloatArray = npt.NDArray[np.float32]

SPAN_MS: Final = 256.0  # what AEC3 let through, judged up to the window's end
LEAK_SCORE: Final = 12.0  # a GCC-PHAT peak this clear ...
LEAK_SHARE: Final = 0.25  # ... correlating this well with the output: the agent's own voice ...
SHARE_SLACK: Final = 8  # (samples either side of the peak's lag: 0.5 ms)
HOLD_MS: Final = 500.0  # ... and the windows that would barge in this long after it, too


class LeakHold:
    """Whether a window that would barge in is the agent's voice AEC3 let through (`held`)."""

    def __init__(self, rate_hz: int) -> None:
        self._span = round(SPAN_MS * rate_hz / 1000)
        self._hold = round(HOLD_MS * rate_hz / 1000)
        self._until = -1  # uplink sample: windows ending up to here are held
        self.found = 0  # leaks found (a hold begun or prolonged)

    def held(
        self,
        end: int,
        out: Callable[[int, int], FloatArray],
        reference: Callable[[int, int], FloatArray | None],
    ) -> bool:
        """Whether the window ending at uplink sample `end` is held: within `HOLD_MS` of a leak,
        or one itself (`out(start, end)`: AEC3's output; `reference(start, end)`: what it was
        handed with it, and `PRESENCE_LAG_S` of it before; None: nothing handed yet)."""
        if end <= self._until:
            return True
        start = max(0, end - self._span)
        far = reference(start, end)
        if far is None:
            return False
        score, share = leak_score(out(start, end), far)
        if score < LEAK_SCORE or share < LEAK_SHARE:
            return False
        self._until = end + self._hold
        self.found += 1
        return True


def leak_score(out: FloatArray, far: FloatArray) -> tuple[float, float]:
    """How clearly `out` (AEC3's output) holds a delayed copy of `far` (the reference handed
    to AEC3 with it, starting `len(far) - len(out)` samples earlier): the GCC-PHAT's peak over
    its RMS (at 8 kHz), and how much of `out` that copy is: the largest normalized correlation
    of `out` with `far` within `SHARE_SLACK` samples of the peak's lag. (0, 0): too little
    sent to tell."""
    if len(out) < 16 or np.count_nonzero(np.abs(far) > SENT_LOUD) < SENT_SHARE * len(far):
        return 0.0, 0.0  # (too little sent to tell: a peak over few lags' RMS says nothing)
    n = len(out) - len(out) % 2
    m = len(far) - len(far) % 2
    near, ref = out[len(out) - n :], far[len(far) - m :]
    corr = phat(near[0::2] + near[1::2], ref[0::2] + ref[1::2])
    peak = 2 + int(np.argmax(corr[2:-2]))  # (a peak at either end of the range: cut off there)
    lag = 2 * (len(corr) - 1 - peak)  # samples from the reference handed to the copy in `out`
    share = 0.0
    energy = float(np.dot(out, out))
    for d in range(max(0, lag - SHARE_SLACK), lag + SHARE_SLACK + 1):
        seg = far[len(far) - len(out) - d : len(far) - d]
        if len(seg) == len(out):
            e = float(np.dot(seg, seg)) * energy
            if e > 0.0:
                share = max(share, abs(float(np.dot(out, seg))) / np.sqrt(e))
    return float(corr[peak]), share
