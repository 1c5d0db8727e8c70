"""Echo suppression for the uplink: the server knows what it sent, so it can find it again.

A client that plays the downlink through a speaker hears the agent's own voice back in its
microphone, late by the network round trip, the client's playout buffer and the room, and
quieter. Fed to the VAD unchanged, that echo would make the agent barge in on itself.

`EchoCanceller` keeps the last `history_s` of the audio actually sent (16 kHz, laid out on the
server's clock) and, for each 32 ms uplink window, searches the recently sent audio for it by
normalized cross-correlation over a 64 ms stretch of uplink at every delay in
`[-min_lead_ms, max_delay_ms]` (one FFT correlation: 0.4 ms idle, about 1 ms on a loaded
machine; only while audio was sent within the last `max_delay_ms`). At the best delay it
removes the least-squares projection of the uplink on the reference: the echo goes, speech that
does not correlate with what was sent (the user's) stays. `ncc` is the correlation found (1 for
a pure delayed echo; about 0.3 for a -10 dB echo under speech of the user).

Clock mapping: uplink sample `u` is placed on the server clock with the smallest
`arrival_time - u / rate` seen over the last 2 s of frames (the least delayed frame is the best
estimate of when the audio was captured); errors in that mapping only shift the delay found.

One instance per session; not thread-safe. Everything is on the trio thread.
"""

from __future__ import annotations

import collections
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

_CONTIGUOUS_S: Final = 0.015  # a frame sent within this of where the last ended continues it
_OFFSET_FRAMES: Final = 100  # uplink frames over which the clock offset is the minimum


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class EchoCanceller:
    def __init__(
        self,
        *,
        t0: float,
        rate_hz: int = 16_000,
        window: int = 512,
        max_delay_ms: float = 500.0,
        min_lead_ms: float = 40.0,
        history_s: float = 2.0,
    ) -> None:
        self.rate_hz = rate_hz
        self._t0 = t0
        self._window = window
        self._span = 2 * window  # uplink samples correlated per decision
        self._dmax = round(max_delay_ms * rate_hz / 1000)
        self._dmin = -round(min_lead_ms * rate_hz / 1000)
        self._cap = _pow2(int(history_s * rate_hz) + self._dmax + self._span)
        self._ref = np.zeros(self._cap, dtype=np.float32)
        self._ref_end: int | None = None  # server-clock sample index after the last reference
        self._active_until = -(1 << 62)  # index after the last non-silent reference sample
        self._offsets: collections.deque[tuple[int, float]] = collections.deque()
        self._frames_seen = 0
        self._offset: float | None = None  # server-clock index of uplink sample 0
        self._prev = np.zeros(window, dtype=np.float32)  # the previous uplink window
        m = self._span + self._dmax - self._dmin
        self._seg_len = m
        self._nfft = _pow2(m + self._span)
        self.windows = 0  # windows that were correlated
        self.last_delay_ms = 0.0
        self.last_ncc = 0.0

    # ------------------------------------------------------------------ inputs

    def add_reference(self, now: float, samples: FloatArray) -> None:
        """Audio sent at server time `now` (16 kHz float, as the client will play it)."""
        n = len(samples)
        if not n:
            return
        idx = round((now - self._t0) * self.rate_hz)
        end = self._ref_end
        if end is not None and (abs(idx - end) <= _CONTIGUOUS_S * self.rate_hz or idx < end):
            idx = end  # the next frame of the same paced run
        if end is not None and idx > end:
            self._write(end, np.zeros(min(idx - end, self._cap), dtype=np.float32))
        self._write(idx, samples)
        self._ref_end = idx + n
        if float(np.max(np.abs(samples))) > 1e-4:
            self._active_until = idx + n

    def _write(self, idx: int, samples: FloatArray) -> None:
        n = len(samples)
        if n > self._cap:
            samples, idx, n = samples[-self._cap :], idx + n - self._cap, self._cap
        i = idx & (self._cap - 1)
        first = min(n, self._cap - i)
        self._ref[i : i + first] = samples[:first]
        if first < n:
            self._ref[: n - first] = samples[first:]

    def note_uplink(self, now: float, end_sample: int) -> None:
        """An uplink frame ending at 16 kHz sample `end_sample` arrived at server time `now`."""
        offset = (now - self._t0) * self.rate_hz - end_sample
        q = self._offsets
        self._frames_seen += 1
        while q and q[-1][1] >= offset:
            q.pop()
        q.append((self._frames_seen, offset))
        while q[0][0] <= self._frames_seen - _OFFSET_FRAMES:
            q.popleft()
        self._offset = q[0][1]

    # ------------------------------------------------------------------ cancelling

    def _segment(self, start: int) -> FloatArray:
        """Reference samples [start, start + seg_len); zeros where nothing (known) was sent."""
        out = np.zeros(self._seg_len, dtype=np.float32)
        end = self._ref_end
        if end is None:
            return out
        lo = max(start, end - self._cap + self._span)
        hi = min(start + self._seg_len, end)
        if hi <= lo:
            return out
        i, j = lo & (self._cap - 1), hi & (self._cap - 1)
        if i < j:
            out[lo - start : hi - start] = self._ref[i:j]
        else:
            k = self._cap - i
            out[lo - start : lo - start + k] = self._ref[i:]
            out[lo - start + k : hi - start] = self._ref[:j]
        return out

    def active(self, start: int) -> bool:
        """Whether the window at uplink sample `start` may hold echo of what was sent."""
        if self._offset is None or self._ref_end is None:
            return False
        p0 = round(self._offset) + start - self._window
        return self._active_until > p0 - self._dmax

    def cancel(self, start: int, window: FloatArray) -> tuple[FloatArray, float]:
        """The uplink window at 16 kHz sample `start` with the echo removed, and the NCC."""
        prev, self._prev = self._prev, window
        if not self.active(start):
            self.last_ncc = 0.0
            return window, 0.0
        assert self._offset is not None
        x = np.concatenate((prev, window))
        p0 = round(self._offset) + start - self._window  # server index of x[0] at lag 0
        seg = self._segment(p0 - self._dmax)  # seg[k + i] is x[i]'s sample at lag dmax - k
        n = self._nfft
        corr = np.fft.irfft(np.fft.rfft(seg, n) * np.conj(np.fft.rfft(x, n)), n)
        lags = self._seg_len - self._span + 1
        corr = corr[:lags]
        sq = np.concatenate(([0.0], np.cumsum(seg.astype(np.float64) ** 2)))
        e_ref = sq[self._span : self._span + lags] - sq[:lags]
        e_x = float(np.dot(x, x))
        self.windows += 1
        if e_x <= 1e-9:
            return window, 0.0
        ncc = np.abs(corr) / np.sqrt(e_x * e_ref + 1e-12)
        ncc[e_ref < 1e-6 * e_x] = 0.0  # (near) silence in the reference explains nothing
        k = int(np.argmax(ncc))
        best = float(ncc[k])
        self.last_ncc = best
        self.last_delay_ms = (self._dmax - k) * 1000 / self.rate_hz
        if best <= 0.0:
            return window, 0.0
        gain = float(np.clip(corr[k] / e_ref[k], -2.0, 2.0))  # echo is not louder than 2x
        echo = seg[k + self._window : k + self._span]
        residual = (window - gain * echo).astype(np.float32)
        return residual, best
