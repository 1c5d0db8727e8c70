"""The barge-in's windows half a window after the VAD's: a user's onset heard 16 ms sooner.

silero scores 32 ms windows (`vad.WINDOW`); the uplink cuts them back to back, so a voice that
starts just after a window's start is first scored at the end of the next one, and the
client's 20 ms frames complete a window only every 1.6 frames: a barge-in waited up to a
window (and a frame) past the moment silero could have heard it. `HalfStep` scores a second
stream of windows over the same audio (what AEC3 and the noise suppressor put out), each
starting half a window after one of the VAD's (its first half the end of that window, its
second half the start of the next: `prob`), with a silero state of its own, so the audio is
scored every 16 ms and every frame that arrives completes a window. Its windows decide only a
barge-in (`SpeechDetector.barge_in_between`): speech, silences, turns and the soft barge-in's
following are the VAD's own windows' (the same figures, the same decisions, as without it).

It runs while a barge-in can stop something (the session's audio may still be echoing back:
`EchoCanceller.active`; always, when the session has no echo canceller), so a quiet agent
costs nothing. Where AEC3 may be letting the echo through (an echo is found, or not known yet)
it runs only while the near-end check hears the user over the echo (nearend.py): scored
throughout, its windows were twice the chances for AEC3's leaks to score `echo_threshold`
(`bench.aec_jitter`: the changed echo path barged in on itself twice more), and cost 0.9 % of
a core a session over an echo (two silero streams: the microphone's own, micvoice.py, has a
window between too) for a frame gained in 22 of 96 replayed onsets over three rooms' echo,
against 0.05-0.2 % and 18 of 96 this way. With headphones (no echo found) it runs while the
agent talks: 0.5 % of a core. After a window it did not score its state starts afresh, and it
is refreshed in quiet as the VAD's stream is (without that, over the long stretches of room
noise while the agent talks on, its state drifted and its onsets came later than the VAD's:
measured live). Its cost and what it bought: bench/results/README.md, "The barge-in's windows
between the VAD's". One per session, in the uplink worker's thread.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from .vad import WINDOW, SileroVad, VadModel

FloatArray = npt.NDArray[np.float32]

HALF: Final = WINDOW // 2  # (256 samples, 16 ms at 16 kHz)


class HalfStep:
    """The windows [pos - HALF, pos + HALF) between the VAD's, scored by silero."""

    def __init__(self, model: VadModel) -> None:
        # (refreshed in quiet as the VAD's stream is: over a long stretch of room noise, while
        # the agent talks on, its state drifts and its onsets come late)
        self._vad = SileroVad(model)
        self._tail = np.zeros(HALF, dtype=np.float32)  # the last VAD window's second half
        self._tail_end = -1  # ... and where it ended (-1: none kept)
        self._next = -1  # the window after the last one scored (-1: none)

    def keep(self, pos: int, window: FloatArray) -> None:
        """The VAD's window [pos, pos + WINDOW), as it is processed (its second half begins the
        next window between)."""
        self._tail[:] = window[HALF:]
        self._tail_end = pos + WINDOW

    def due(self, pos: int) -> bool:
        """Whether the window between ending at `pos + HALF` can be made (the VAD's window
        before `pos` was kept): `pos` is the VAD's next window."""
        return self._tail_end == pos

    def prob(self, pos: int, head: FloatArray) -> float:
        """Silero's probability for the window [pos - HALF, pos + HALF): the kept tail and
        `head`, the first HALF samples from `pos` (`due(pos)` must hold)."""
        start = pos - HALF
        self._tail_end = -1  # (scored: not again)
        if start != self._next:
            self._vad.reset()  # (its state was another stretch's)
        self._next = start + WINDOW
        return self._vad.prob(np.concatenate((self._tail, head[:HALF])))
