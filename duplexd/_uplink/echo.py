"""Echo suppression for the uplink: the server knows what it sent, so it can find it again.

A client that plays the downlink through a speaker hears the agent's own voice back in its
microphone, late by the network round trip, the client's playout buffer and the room, and
quieter. Fed to the VAD unchanged, that echo would make the agent barge in on itself.

`EchoCanceller` keeps the last `history_s` of the audio actually sent (16 kHz, laid out on the
server's clock) and, for each 32 ms uplink window, looks for it in a 64 ms stretch of uplink by
normalized cross-correlation (NCC):

- Finding the echo path: a search over every delay in `[-min_lead_ms, max_delay_ms]` (a
  4 kHz FFT correlation, then the 3 best delays exactly: about 0.25 ms). Only a credible
  match locks on: NCC >= 0.9 (a pure echo scores 0.97-1.0; the user's voice against the best
  of ~9,000 delays of the agent's 0.28 median, 0.84 at most), or >= 0.6 at the same delay three
  windows in a row. Until then nothing is taken out, so a chance likeness never eats into the
  user's voice (the uplink passes bit for bit).
- Following it: while locked, a narrow search (+-`track_ms`, ~0.05 ms); the full search only
  when that finds no strong match (the user talks over the echo, the player paused or
  restarted: the path jumps). A strong match elsewhere moves the path at once only if the
  path no longer matches (< 0.5); otherwise (periodic audio matches at more than one delay)
  only if it wins twice in a row. The lock goes after ~2 s without any match near it.
- Taking it out, per 16 ms block: a block that is (mostly) echo is fitted on its own within the
  tracking range (a player pausing mid-window shifts the echo); any other block loses the echo
  at the locked delay with the level learned while the echo was alone (so the user's voice does
  not bias it), unless that would make the block louder (the path moved).
- Windows no louder than twice the room's noise (measured in windows that cannot hold echo)
  are left alone: nothing worth removing, and no CPU spent.

`ncc` is the match at the delay used (1 for a pure delayed echo; about 0.5 for a -10 dB echo
under speech of the user); `last_removed` the energy taken out, for the session's double-talk
check. Measured (tests/test_echo.py): a pure echo leaves >= 25 dB quieter; under the user's
voice >= 15 dB quieter, the user's voice within 0.5 dB. Not handled: a reverberant room (an
echo spread over tens of ms of reflections is not one delay: that needs an adaptive filter) and
a non-linear loudspeaker; the session's higher barge-in threshold while echo is possible is the
second line of defence there, and clients should keep their own echo cancellation on.

Clock mapping: uplink sample `u` is placed on the server clock with the smallest
`arrival_time - u / rate` seen over the last 2 s of frames (the least delayed frame is the best
estimate of when the audio was captured); errors in that mapping only shift the delay found.

One instance per session; not thread-safe (the session's uplink worker calls it).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

_CONTIGUOUS_S: Final = 0.015  # a frame sent within this of where the last ended continues it
_OFFSET_FRAMES: Final = 100  # uplink frames over which the clock offset is the minimum
# Locking on to the echo path. Measured with VITS speech and tones as the reference: a pure
# delayed echo (-10..-20 dB, noise at -55 dBFS) scores NCC >= 0.97 at its delay; the user's
# speech alone, against the best of the ~9,000 delays searched, 0.28 median, 0.6 p95, 0.84 max.
_STRONG_NCC: Final = 0.9  # a full-search match this good is echo: lock on at once
_ALONE_NCC: Final = 0.97  # ... this good: the echo alone (no user): learn its level from it
_CANDIDATE_NCC: Final = 0.6  # ... this good, at the same delay in a row, locks on too
_CANDIDATE_RUNS: Final = 3  # windows in a row (their 64 ms spans overlap by half)
_TRACK_NCC: Final = 0.5  # a match this good on the locked path: the echo is still there
_LOCK_QUIET_WINDOWS: Final = 64  # full searches (~2 s) without a match near it: unlock
_DIRECT_MAX_LAGS: Final = 1024  # narrower searches multiply directly; wider ones go coarse
_DECIMATE: Final = 4  # the coarse search runs at 4 kHz (sums of 4 samples; written out) ...
_CANDIDATES: Final = 3  # ... and its best 3 delays are searched exactly (+-4 samples)
_BLOCKS: Final = 2  # a window's echo is fitted in this many blocks (16 ms each)
_MAX_GAIN: Final = 2.0  # an echo is not louder than twice what was sent
_GAIN_SLACK: Final = 0.5  # a block fitted on its own keeps the echo's level within +-50 %
# Windows no louder than this times the room's noise (the quietest of the last `_ROOM_WINDOWS`
# windows that could not hold echo) are left alone: an echo there would be below the noise.
_ABOVE_ROOM: Final = 2.0
_ROOM_WINDOWS: Final = 64


@dataclass(frozen=True, slots=True)
class _Match:
    delay: int  # samples: uplink x[i] echoes reference sample (p0 + i - delay)
    ncc: float
    gain: float


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class _RunningMin:
    """The smallest of the last `count` values added (a monotonic queue: O(1) amortized)."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._seen = 0
        self._queue: collections.deque[tuple[int, float]] = collections.deque()
        self.value: float | None = None  # None until a value was added

    def add(self, value: float) -> float:
        q = self._queue
        self._seen += 1
        while q and q[-1][1] >= value:
            q.pop()
        q.append((self._seen, value))
        while q[0][0] <= self._seen - self._count:
            q.popleft()
        self.value = q[0][1]
        return self.value


def _sliding_ncc(
    seg: FloatArray, x: FloatArray, e_x: float, *, fft: bool = False, mask_silence: bool = True
) -> tuple[Float64Array, npt.NDArray[np.floating[Any]], Float64Array]:
    """`x` (energy `e_x`) against every stretch of `seg` as long as it, lag k = seg[k:k+len(x)]:
    (ncc, corr, e_ref) per lag, ncc = |corr| / sqrt(e_x * e_ref). `corr` is the dot product
    (by one FFT with `fft`, for thousands of lags; else directly, in float32), `e_ref` the
    stretch's energy (a float64 running sum). With `mask_silence`, lags where the reference is
    (near) silence (e_ref < 1e-6 e_x) score 0: silence explains nothing."""
    n = len(x)
    lags = len(seg) - n + 1
    if fft:
        size = _pow2(len(seg) + n)
        corr = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(x, size)), size)[:lags]
    else:
        corr = np.correlate(seg, x, "valid")  # direct: ~15 us for 257 lags of 1024 samples
    sq = np.concatenate(([0.0], np.cumsum(seg.astype(np.float64) ** 2)))
    e_ref = sq[n:] - sq[: len(sq) - n]
    ncc = np.abs(corr) / np.sqrt(e_x * e_ref + 1e-12)
    if mask_silence:
        ncc[e_ref < 1e-6 * e_x] = 0.0
    return ncc, corr, e_ref


def _coarse_candidates(seg: FloatArray, x: FloatArray) -> npt.NDArray[np.intp]:
    """The `_CANDIDATES` best lags (in units of `_DECIMATE` samples) of `x` in `seg`, by NCC
    at a quarter of the rate (sums of 4 samples: speech below 2 kHz carries the match): one
    4096-point FFT correlation instead of a 16384-point one."""
    d = _DECIMATE
    m = len(seg) // d
    seg_d = seg[0 : m * d : d] + seg[1 : m * d : d] + seg[2 : m * d : d] + seg[3 : m * d : d]
    x_d = x[0::d] + x[1::d] + x[2::d] + x[3::d]  # (len(x) is a multiple of 4)
    ncc, _, _ = _sliding_ncc(seg_d, x_d, float(np.dot(x_d, x_d)), fft=True)
    k = min(_CANDIDATES, len(ncc))
    return np.argpartition(ncc, -k)[-k:]


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
        track_ms: float = 8.0,
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
        self._offsets = _RunningMin(_OFFSET_FRAMES)
        self._offset: float | None = None  # server-clock index of uplink sample 0
        self._prev = np.zeros(window, dtype=np.float32)  # the previous uplink window
        self._track = round(track_ms * rate_hz / 1000)  # a locked delay moves this far at most
        self._slack = round(rate_hz / 1000)  # candidates within 1 ms are the same delay
        self._lock: int | None = None  # the echo delay followed (samples)
        self._gain = 0.0  # the echo's level along it, learned while the echo was alone
        self._quiet = 0  # full searches in a row without a credible match, while locked
        self._candidate: tuple[int, int] | None = None  # (delay, full searches in a row)
        self.windows = 0  # windows that were correlated
        self.full_searches = 0
        self.last_ncc = 0.0
        # energy of the room's noise in a window: the quietest recent one that held no echo
        self._room = _RunningMin(_ROOM_WINDOWS)
        self.last_removed = 0.0  # energy the last window's cancellation took out

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
        self._offset = self._offsets.add((now - self._t0) * self.rate_hz - end_sample)

    # ------------------------------------------------------------------ cancelling

    def _segment(self, start: int, length: int) -> FloatArray:
        """Reference samples [start, start + length); zeros where nothing (known) was sent."""
        out = np.zeros(length, dtype=np.float32)
        end = self._ref_end
        if end is None:
            return out
        lo = max(start, end - self._cap + self._span)
        hi = min(start + length, end)
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

    @property
    def locked(self) -> bool:
        """Whether an echo path (a delay) has been found and is being followed."""
        return self._lock is not None

    def cancel(self, start: int, window: FloatArray) -> tuple[FloatArray, float]:
        """The uplink window at 16 kHz sample `start` with the echo removed, and the NCC at the
        delay used (0 when nothing was removed)."""
        prev, self._prev = self._prev, window
        self.last_ncc = self.last_removed = 0.0
        e_w = float(np.dot(window, window))
        if not self.active(start):
            self._room.add(e_w)  # a window that cannot hold echo: the room's noise
            return window, 0.0
        room = self._room.value
        if room is not None and e_w <= _ABOVE_ROOM * room:
            return window, 0.0  # nothing above the room's noise: no echo to take out
        assert self._offset is not None
        x = np.concatenate((prev, window))
        e_x = float(np.dot(x, x))
        if e_x <= 1e-9:
            return window, 0.0
        self.windows += 1
        p0 = round(self._offset) + start - self._window  # server index of x[0] at delay 0
        near: _Match | None = None
        if self._lock is not None:  # follow the echo path found: a cheap, narrow search
            near = self._match(p0, x, e_x, self._lock - self._track, self._lock + self._track)
        if near is not None and near.ncc >= _STRONG_NCC:
            self._lock, self._quiet, self._candidate = near.delay, 0, None
            found: _Match | None = near
        else:  # nothing found, lost, or the user talks over the echo: search everywhere
            self.full_searches += 1
            found = self._decide(self._match(p0, x, e_x, self._dmin, self._dmax), near)
        if found is None or self._lock is None:
            return window, 0.0
        self.last_ncc = found.ncc
        if found.delay == self._lock and found.ncc >= _ALONE_NCC:
            self._gain = found.gain  # the echo alone: its level, for when the user talks too
        # a strong match is taken out where it is; anything weaker along the path followed
        delay = found.delay if found.ncc >= _STRONG_NCC else self._lock
        return self._subtract(p0, window, delay), found.ncc

    @property
    def delay_ms(self) -> float | None:
        """The delay of the echo path followed, on the server clock (None: none found)."""
        return None if self._lock is None else self._lock * 1000 / self.rate_hz

    def _subtract(self, p0: int, window: FloatArray, delay: int) -> FloatArray:
        """The window minus its echo along the path at `delay`, in 16 ms blocks. A block that
        is (mostly) echo (NCC >= `_STRONG_NCC` within the tracking range, at about the level
        learned) is fitted on its own: a player that paused mid-window (a late frame, an
        underrun) shifts the echo by a few ms, which one delay for the whole window would leave
        behind. Any other block (the user
        is talking) loses the echo at `delay` with the level learned while it was alone, unless
        that makes it louder (the path moved, and what would be taken out is not there)."""
        out = np.empty_like(window)
        n = len(window) // _BLOCKS
        lo, hi = delay - self._track, delay + self._track
        removed = 0.0
        for b in range(0, len(window), n):
            xb = window[b : b + n]
            seg = self._segment(p0 + self._window + b - hi, n + hi - lo)
            e_x = float(np.dot(xb, xb))
            ncc, corr, e_ref = _sliding_ncc(seg, xb, e_x, mask_silence=False)
            k = int(np.argmax(ncc))
            gain = float(corr[k] / e_ref[k]) if e_ref[k] > 0 else 0.0
            if ncc[k] < _STRONG_NCC or abs(gain - self._gain) > _GAIN_SLACK * abs(self._gain):
                # the user talks too (a short block of voice can look like the reference at
                # some delay, at some level): the path and level learned without them
                k, gain = hi - delay, self._gain
            y = xb - np.float32(gain) * seg[k : k + n]
            if float(np.dot(y, y)) < e_x:  # never add the agent's voice where it is not
                out[b : b + n] = y
                removed += gain**2 * float(e_ref[k])
            else:
                out[b : b + n] = xb
        self.last_removed = removed
        return out

    def _decide(self, best: _Match, near: _Match | None) -> _Match | None:
        """After a full search (`near`: the locked path's match, if any): update the lock;
        the match to cancel with (None: leave the uplink as it is)."""
        if best.ncc >= _STRONG_NCC:  # only echo matches this well
            lock = self._lock
            if (
                lock is not None
                and near is not None
                and near.ncc >= _TRACK_NCC
                and abs(best.delay - lock) > self._track
            ):
                # ... but the path followed still matches too: periodic audio (a tone, a
                # sung note) matches at more than one delay. Take it out where it fits best
                # now; move the path there only if it fits best there again next window.
                moved = self._candidate is not None and abs(self._candidate[0] - best.delay) <= (
                    self._slack
                )
                self._candidate = None if moved else (best.delay, 1)
                if not moved:
                    return best
            self._lock, self._quiet, self._candidate = best.delay, 0, None
            return best
        if best.ncc >= _CANDIDATE_NCC:
            candidate = self._candidate
            runs = 1
            if candidate is not None and abs(candidate[0] - best.delay) <= self._slack:
                runs = candidate[1] + 1
            self._candidate = (best.delay, runs)
            if runs >= _CANDIDATE_RUNS:  # the same delay again: the echo path moved there
                self._lock, self._quiet, self._candidate = best.delay, 0, None
                self._gain = best.gain
                return best
        else:
            self._candidate = None
        if near is None:
            return None  # nothing credible: a spurious match must not eat the user's speech
        if near.ncc >= _TRACK_NCC:
            self._quiet = 0  # the echo is still there (under the user's voice, say)
        else:
            self._quiet += 1
            if self._quiet > _LOCK_QUIET_WINDOWS:
                self._lock = None  # the echo went away (headphones?)
                return None
        return near  # keep cancelling along the path (the user may be talking over it)

    def residue(self, start: int, residual: FloatArray) -> float:
        """How much `residual` (the window at `start`, after `cancel`) still looks like what
        was sent: the best NCC near the echo path (+-2 x `track_ms`; 0 while there is none).
        High for the leftovers of an echo that moved; low for the user's voice."""
        e_x = float(np.dot(residual, residual))
        if self._offset is None or self._lock is None or e_x <= 1e-9:
            return 0.0
        p0 = round(self._offset) + start
        lo, hi = self._lock - 2 * self._track, self._lock + 2 * self._track
        return self._match(p0, residual, e_x, lo, hi).ncc

    def _match(self, p0: int, x: FloatArray, e_x: float, d_lo: int, d_hi: int) -> _Match:
        """The best delay in [d_lo, d_hi] (samples) for the uplink span `x` (which ends with
        the current window; x[0] is at server index p0 at delay 0)."""
        d_lo, d_hi = max(d_lo, self._dmin), min(d_hi, self._dmax)
        span = len(x)
        lags = d_hi - d_lo + 1
        seg = self._segment(p0 - d_hi, span + lags - 1)  # seg[k + i]: x[i] at delay d_hi - k
        if lags > _DIRECT_MAX_LAGS:  # a coarse search, then the best few delays exactly
            ranges = [
                (max(0, _DECIMATE * c - _DECIMATE), min(lags, _DECIMATE * c + _DECIMATE + 1))
                for c in _coarse_candidates(seg, x)
            ]
        else:
            ranges = [(0, lags)]
        best: tuple[float, int, float, float] = (-1.0, 0, 0.0, 0.0)  # ncc, k, corr, e_ref
        for lo, hi in ranges:
            ncc, corr, e_ref = _sliding_ncc(seg[lo : hi + span - 1], x, e_x)
            j = int(np.argmax(ncc))
            if ncc[j] > best[0]:
                best = (float(ncc[j]), lo + j, float(corr[j]), float(e_ref[j]))
        score, k, corr_k, e_k = best
        gain = float(np.clip(corr_k / e_k, -_MAX_GAIN, _MAX_GAIN)) if e_k > 0 else 0.0
        return _Match(d_hi - k, max(score, 0.0), gain)
