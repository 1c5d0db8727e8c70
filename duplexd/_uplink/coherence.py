"""Whether a sound in the microphone is the agent's own echo: its coherence with the reference.

The near-end check (nearend.py) hears the user over the echo by the microphone's level: louder
than the echo it learned. An echo that gets louder (the loudspeaker turned up, the echo path
changed) is louder too, and then the barge-in's threshold drops and the microphone itself is
heard (micvoice.py): the agent's own voice, which silero scores 0.97, barged in on it (live,
bench/results/README.md, "Coherent with the reference"). This asks whether that louder sound *is*
the reference: the magnitude-squared coherence of the raw microphone with the reference AEC3 is
handed, shifted by the echo's delay (where the presence check last found its direct path:
`EchoCanceller`), over the last `SPAN_MS` up to a VAD window's end but not before the stretch
found louder began (`since`: the echo before a user's onset is coherent, and counted, it made
the user's first windows read as the echo), at least `MIN_SPAN_MS` of it, in `SEGMENT` sample
segments `HOP` apart, per bin from `LOW_HZ` to `HIGH_HZ`, weighed by the microphone's power in
each bin. Echo alone is a filtered copy of the reference: coherent where it is loud (0.9-1.0
where the path is a delay; less in a reverberant room, whose tail outlasts a segment); a user's
voice over it is not. It is the raw microphone's, so AEC3's state does not change it.
`ECHO_COHERENCE` is set where no user's onset over the echo in `bench.aec_rooms`' rooms reaches
(0.86 at most, measured): it misses most of a reverberant room's louder echo (0.65-0.89).

One per echo canceller; fed (`add`) the frames AEC3 gets, in the uplink worker's thread.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

SPAN_MS: Final = 96.0  # the microphone judged, up to a window's end
MIN_SPAN_MS: Final = 32.0  # ... and no shorter
SEGMENT: Final = 256  # samples a segment (16 ms at 16 kHz), Hann-windowed ...
HOP: Final = 64  # ... this far apart
LOW_HZ: Final = 300.0  # the band judged (speech's, where the echo is loud)
HIGH_HZ: Final = 3400.0
ECHO_COHERENCE: Final = 0.9  # at least this coherent: the agent's echo (`is_echo`)
_HISTORY: Final = 1 << 14  # samples held (1 s at 16 kHz: the span and the echo's delay)
_FAR_FLOOR: Final = 1e-5  # (-50 dBFS) a quieter reference over the span explains nothing


class EchoCoherence:
    """The raw microphone's coherence with the reference, at a delay (`of`)."""

    def __init__(self, rate_hz: int = 16_000) -> None:
        self._span = round(SPAN_MS * rate_hz / 1000)
        self._near = np.zeros(_HISTORY, dtype=np.float32)  # by uplink sample, a ring
        self._far = np.zeros(_HISTORY, dtype=np.float32)
        self._end = 0  # held up to this uplink sample
        self._start = 0  # ... from this one (a gap starts over)
        self._window = np.hanning(SEGMENT).astype(np.float32)
        freqs = np.fft.rfftfreq(SEGMENT, 1 / rate_hz)
        self._band = (freqs >= LOW_HZ) & (freqs <= HIGH_HZ)
        self._min_span = round(MIN_SPAN_MS * rate_hz / 1000)
        self.delay = 0  # samples the reference leads the echo by (as `add` was told)
        self.judged = 0  # spans judged (observability)
        self._echo_since = -1  # the start of the last stretch found to be the echo

    def is_echo(self, end: int, since: int) -> bool:
        """Whether the stretch of microphone that began at uplink sample `since` is the agent's
        echo, by its last `SPAN_MS` up to `end`: `ECHO_COHERENCE` coherent with the reference
        at the echo's delay, there or at an earlier end (a stretch found to be the echo stays
        so: a coherence that hovers about the line would take it for the user and back, window
        by window, and each time the user's barge-in could start again)."""
        if since == self._echo_since:
            return True
        coherence = self.of(end, self.delay, since)
        if coherence is None or coherence < ECHO_COHERENCE:
            return False
        self._echo_since = since
        return True

    def add(self, near: FloatArray, far: FloatArray, pos: int, delay: int) -> None:
        """The microphone's `near` and the reference `far` AEC3 is handed with it, from
        uplink sample `pos` on; `delay`: how far the reference leads the echo now."""
        self.delay = delay
        n = min(len(near), len(far))
        if pos != self._end:
            self._start = pos  # (not the continuation: what was held does not line up)
        i = np.arange(pos, pos + n) & (_HISTORY - 1)
        self._near[i] = near[:n]
        self._far[i] = far[:n]
        self._end = pos + n
        self._start = max(self._start, self._end - _HISTORY)

    def of(self, end: int, delay: int, since: int = 0) -> float | None:
        """The coherence of the microphone's last `SPAN_MS` up to uplink sample `end`, from
        `since` on at the earliest, with the reference `delay` samples before it (None: not
        held, under `MIN_SPAN_MS`, or a reference too quiet to explain anything)."""
        start = max(end - self._span, since)
        if end > self._end or start - delay < self._start or delay < 0:
            return None
        if end - start < self._min_span:
            return None
        near = self._near[np.arange(start, end) & (_HISTORY - 1)]
        far = self._far[np.arange(start - delay, end - delay) & (_HISTORY - 1)]
        if float(np.mean(np.square(far, dtype=np.float64))) < _FAR_FLOOR:
            return None
        self.judged += 1
        x = np.fft.rfft(self._frames(near), axis=1)[:, self._band]
        y = np.fft.rfft(self._frames(far), axis=1)[:, self._band]
        cross = np.abs(np.mean(x * np.conj(y), axis=0)) ** 2
        p_near = np.mean(np.abs(x) ** 2, axis=0)
        p_far = np.mean(np.abs(y) ** 2, axis=0)
        bins = cross / np.maximum(p_near * p_far, 1e-30)  # (each bin's, 0..1)
        weight = float(np.sum(p_near))
        if weight <= 0.0:
            return None
        return float(np.sum(bins * p_near) / weight)

    def _frames(self, x: FloatArray) -> FloatArray:
        segments = (len(x) - SEGMENT) // HOP + 1
        idx = np.arange(SEGMENT)[None, :] + HOP * np.arange(segments)[:, None]
        out: FloatArray = x[idx] * self._window
        return out
