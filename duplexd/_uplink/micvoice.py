"""The microphone itself, heard while the user is surely talking over the agent's echo.

AEC3's suppressor takes the first syllables of a user who starts talking over the echo for echo and
ducks them, 15-30 dB for 30-70 ms and more (measured in the generated rooms), so silero, fed AEC3's
output, hears the onset one or more 32 ms windows late: the barge-in over an echo came 40-120 ms
after one over headphones. The microphone's own signal is not ducked. While the near-end check is
sure that the user is louder than the echo explains (`NearEndOnset.sure_over`: 3 of the last 5 10
ms frames louder, broadband or band by band, and those since), the echo in the microphone is under
the user's voice by at least the check's margin (in those bands, at least), and a window that holds
such frames counts toward a barge-in when silero hears a voice in either signal (uplink.py). A lone
frame found louder (an echo path that changed, a loud syllable) does not make it sure: listening to
the microphone on one such frame let the echo barge in (bench.aec_jitter, the changed path).

`MicVoice` keeps the microphone's last samples (16 kHz, the positions the uplink's windows
have: AEC3's output sample k is its input sample k) and a silero stream of its own over them,
run on every window while AEC3 runs and the near-end check judges (its return loss learned),
so its state follows the signal (started afresh after a window it skipped): ~0.45 % of a core
a session while the agent's echo comes back (bench.uplink_cpu), nothing with headphones. One
per session, in the uplink worker's thread.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from .vad import WINDOW, SileroVad, VadModel

FloatArray = npt.NDArray[np.float32]

CAPACITY: Final = 1 << 13  # samples kept (512 ms): the input leads the output by < 40 ms


class MicVoice:
    """The microphone's voice probability at the uplink's windows."""

    def __init__(self, model: VadModel) -> None:
        self._model = model
        # a stream per phase: the VAD's windows', and the half-step's between them (halfstep.py)
        self._vads: dict[int, SileroVad] = {}
        self._next: dict[int, int] = {}  # per phase: the window after the last one scored
        self._ring = np.zeros(CAPACITY, dtype=np.float32)
        self._end = 0  # 16 kHz samples of microphone received so far

    def add(self, samples: FloatArray) -> None:
        """The microphone's next 16 kHz samples (before the echo canceller)."""
        n = len(samples)
        if n >= CAPACITY:
            samples, self._end = samples[-CAPACITY:], self._end + n - CAPACITY
            n = CAPACITY
        i = self._end & (CAPACITY - 1)
        first = min(n, CAPACITY - i)
        self._ring[i : i + first] = samples[:first]
        self._ring[: n - first] = samples[first:]
        self._end += n

    def prob(self, pos: int) -> float:
        """Silero's probability of a voice in the microphone's window [pos, pos + WINDOW) (the
        uplink's windows, or the half-step stream's between them); 0.0 for a window not (or no
        longer) held. After a window not scored, the stream starts afresh."""
        if not self._end - CAPACITY <= pos <= self._end - WINDOW:
            return 0.0
        phase = pos % WINDOW
        if (vad := self._vads.get(phase)) is None:
            vad = self._vads[phase] = SileroVad(self._model)
        if pos != self._next.get(phase):
            vad.reset()  # (its state and context were another stretch's)
        self._next[phase] = pos + WINDOW
        i = pos & (CAPACITY - 1)
        if i + WINDOW <= CAPACITY:
            return vad.prob(self._ring[i : i + WINDOW])
        return vad.prob(np.concatenate((self._ring[i:], self._ring[: i + WINDOW - CAPACITY])))
