"""The echo reference's last seconds, by server-clock sample index (echo.py)."""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

SENT_LOUD: Final = 1e-4  # a reference sample above this is not silence


class SampleRing:
    """The last `cap` samples written (a power of two): index `i` lives at `i & (cap - 1)`."""

    def __init__(self, cap: int) -> None:
        assert cap > 0 and cap & (cap - 1) == 0
        self.cap = cap
        self._buf = np.zeros(cap, dtype=np.float32)

    def write(self, idx: int, samples: FloatArray) -> None:
        """Samples [idx, idx + len(samples)) (only the last `cap` of them, if longer)."""
        n, cap = len(samples), self.cap
        if n > cap:
            samples, idx, n = samples[-cap:], idx + n - cap, cap
        i = idx & (cap - 1)
        first = min(n, cap - i)
        self._buf[i : i + first] = samples[:first]
        if first < n:
            self._buf[: n - first] = samples[first:]

    def read(self, start: int, length: int, end: int | None) -> FloatArray:
        """Samples [start, start + length), of those written before `end` (None: nothing yet);
        zeros where none is held."""
        out = np.zeros(length, dtype=np.float32)
        if end is None:
            return out
        cap = self.cap
        lo, hi = max(start, end - cap), min(start + length, end)
        if hi <= lo:
            return out
        i, j = lo & (cap - 1), hi & (cap - 1)
        if i < j:
            out[lo - start : hi - start] = self._buf[i:j]
        else:
            k = cap - i
            out[lo - start : lo - start + k] = self._buf[i:]
            out[lo - start + k : hi - start] = self._buf[:j]
        return out

    def move(self, start: int, end: int, shift: int) -> int:
        """Samples [start, end) moved `shift` later (earlier if negative), silence where they
        were and are no longer; returns where they end now."""
        if end <= start:
            return end
        held = self.read(start, end - start, end)
        k = min(abs(shift), self.cap)  # (more would be written over again: the ring holds cap)
        if shift > 0:
            self.write(start + shift - k, np.zeros(k, dtype=np.float32))
        elif shift < 0:
            self.write(end - k, np.zeros(k, dtype=np.float32))
        self.write(start + shift, held)
        return end + shift
