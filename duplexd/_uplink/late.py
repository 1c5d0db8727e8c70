"""The late echo AEC3 leaves: the room's reverberation past its filter, suppressed for listeners
that can wait ~110 ms (the turn's audio: transcripts, the turn model, a held sound's words).

AEC3's linear filter models the first ~50 ms of the echo path; its suppressor models the rest
as a reverberation that dies away by a fixed factor a block (as we read WebRTC's default
`ep_strength.default_len`, 0.83 of the power every 4 ms: an RT60 of about 300 ms, which the
rooms agree with; `pywebrtc_audio` does not let it be set). In a livelier room the tail
outlasts that model, and where the agent's voice pauses (between words, at a sentence's end)
AEC3 lets the room's tail through untouched: over the RT60 600 ms room of `bench/rooms.py` the
echo came out only 18.9 dB quieter, against 26-36 dB in the others.

`LateEcho` models that tail from what AEC3 is handed, per 10 ms hop and frequency band, in
power: the microphone's power ~ `d` x the reference's over the last `EARLY_HOPS` (the direct
path and what AEC3's filter covers) + `c` x an exponentially decaying sum of the reference's
before that (the late tail), for each of `RT60_MS` decays, `c` and `d` fitted by least squares
per band over the last `FIT_S`. The late echo in each frequency bin is the largest of those
estimates (a decay shorter than the room's fits best where the voice is loud, and would let
the tail through where it pauses), and the bin keeps `1 - estimate / its power` of AEC3's
output (at least `FLOOR`).

The near end is left whole: wherever the VAD may have heard the user (a window scoring
`NEAR_PROB`, from `HANGOVER` after it back to `LOOKAHEAD` before it: silero hears a voice's
first ~100 ms late) nothing is taken out and nothing learned. Taking out `1 - estimate / power`
there too kept the user's level (within 0.15 dB) but not their words: Whisper lost up to 15
points of WER on the user's first syllables, which the VAD had not heard yet (scratch, before
`LOOKAHEAD`). Measured (`python -m bench.aec_rooms`, `python -m bench.aec_words`; bench/results/
README.md "The late echo AEC3 leaves"): RT60 600 ms 18.9 -> 33 dB, the other rooms 1-9 dB more;
the user's level under double talk as with AEC3 alone; Whisper's words on the user within a
few points either way (chance: a changed echo in the pads alone changes them).

It works on 20 ms windows every 10 ms (square-root Hann, which sums back to the input exactly
where nothing is taken out), decided `LOOKAHEAD` after they end: the uplink writes each window
into the turn's ring as the VAD hears it, and overwrites it with this output as it comes
(`process`). The VAD itself hears AEC3's output as before (a barge-in would come 110 ms later),
and does not need this: the tail's leaks never set it off (0 false barge-ins in every room,
without it). Where AEC3 did not run (nothing sent lately, no echo found: `add` was not called
for the hop), the turn's audio is left as it is.

One per echo canceller; fed by it (`add`) the frames AEC3 gets, and by the uplink (`process`)
the windows the VAD hears, in the uplink worker's thread.
"""

from __future__ import annotations

import collections
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

HOP: Final = 160  # 10 ms at 16 kHz (AEC3's frame)
_WINDOW: Final = 2 * HOP
_BINS: Final = HOP + 1
_SQRT_HANN: Final = np.sqrt(np.hanning(_WINDOW + 1)[:_WINDOW])  # (periodic: sums back to 1)
_HEAD: Final = _SQRT_HANN[:HOP] ** 2  # a window's first half, analysed and synthesised ...
_TAIL: Final = _SQRT_HANN[HOP:] ** 2  # ... and its second: the two sum to 1
EARLY_HOPS: Final = 9  # the reference's last 90 ms: the echo's lead (40 ms), direct path, AEC3
RT60_MS: Final = (150.0, 250.0, 400.0, 600.0, 900.0, 1300.0)  # the tails fitted
# power kept of a hop by each tail: 60 dB down in RT60
_DECAYS: Final = 10.0 ** (-6.0 * (HOP / 16_000) / (np.array(RT60_MS) / 1000.0))
FIT_S: Final = 4.0  # the fits forget with this time constant
_FORGET: Final = 1.0 - HOP / 16_000 / FIT_S
# a VAD window this likely speech: the near end may talk, from `HANGOVER` before it to
# `LOOKAHEAD` after it (silero hears a voice's first ~100 ms late): nothing taken out, nor learned
NEAR_PROB: Final = 0.3
HANGOVER: Final = 3200  # (200 ms)
LOOKAHEAD: Final = 1600  # (100 ms: the turn's audio is rewritten that much later)
FLOOR: Final = 0.1  # the least a bin keeps (20 dB at most taken out)
BANDS: Final = 24  # log-spaced bands, each fitted on its own
# the fits learn while the reference sounded this recently (its echo may still be there)
_SOUNDING_HOPS: Final = EARLY_HOPS + round(max(RT60_MS) / 10)
_SOLVE_EVERY: Final = 4  # the couplings worked out again every 40 ms the fits learn
_PENDING_HOPS: Final = 64  # hops AEC3 was handed and the ring has not come to yet, at most


def _band_matrix() -> npt.NDArray[np.float64]:
    edges = np.unique(np.round(np.geomspace(1, _BINS, BANDS + 1)).astype(int))
    edges[0] = 0
    m = np.zeros((_BINS, len(edges) - 1))
    for b in range(len(edges) - 1):
        m[edges[b] : edges[b + 1], b] = 1.0
    return m


class LateEcho:
    """The late echo's suppressor of one session (see the module)."""

    def __init__(self, rate_hz: int = 16_000) -> None:
        if rate_hz != 16_000:
            raise ValueError(f"the late echo is modelled at 16 kHz, got {rate_hz}")
        self._bands = _band_matrix()  # (bin, band) membership
        self._band_of = np.argmax(self._bands, axis=1)
        shape = (len(RT60_MS), self._bands.shape[1])
        # the fits' sums: early/late regressors against each other and the microphone's power
        self._s = np.zeros((5, *shape))  # ee, el, ll, em, lm
        self._late = np.zeros((len(RT60_MS), _BINS))  # each tail's decaying reference power
        self._early = np.zeros((EARLY_HOPS, _BINS))  # the reference's power, last hop first
        self._c = np.zeros((len(RT60_MS), _BINS))  # each tail's coupling, per bin
        self._terms = np.zeros((3 * len(RT60_MS) + 2, _BINS))  # (one hop's products, summed)
        self._fits = 0  # hops the fits learned from
        # hop's position -> (microphone power, reference power), from `add`, until `process`
        # comes to it
        self._handed: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = (
            collections.OrderedDict()
        )
        self._prev: tuple[int, Float64Array, Float64Array] | None = None  # the last hop added
        self._pos = 0  # the ring's position of `_held`'s first sample
        self._first = 0  # ... and of the stream's (nothing is given back before it)
        self._held = np.zeros(0, dtype=np.float64)  # its samples not decided yet (lookahead)
        self._last: Float64Array = np.zeros(HOP, dtype=np.float64)  # the hop before them
        self._overlap = np.zeros(HOP, dtype=np.float64)  # the last window's second half, out
        self._was_taken = False  # whether the last window took anything out
        # (start, end) of the VAD's windows that may hold the near end's voice, lately
        self._near: collections.deque[tuple[int, int]] = collections.deque(maxlen=64)
        self._sounding = _SOUNDING_HOPS  # hops since the reference sounded
        self.hops_modelled = 0  # 10 ms hops AEC3 ran for ...
        self.hops_judged = 0  # ... and, of those, the ones the near end was not heard in
        self.energy_in = 0.0  # of AEC3's output where the late echo was modelled ...
        self.energy_out = 0.0  # ... and of what this left of it

    # ------------------------------------------------------------------ AEC3's side

    def add(self, mic: FloatArray, far: FloatArray, pos: int) -> None:
        """Whole 10 ms hops AEC3 was handed: the microphone's from uplink position `pos` (a
        multiple of `HOP`), and the reference it got for them."""
        n = len(mic) // HOP
        if not n:
            return
        first = pos // HOP
        both = np.zeros((2, n + 1, HOP))  # (microphone, reference) x (the hop before, ...)
        if self._prev is not None and self._prev[0] == first - 1:
            both[:, 0] = self._prev[1], self._prev[2]
        both[0, 1:] = mic[: n * HOP].reshape(n, HOP)
        both[1, 1:] = far[: n * HOP].reshape(n, HOP)
        self._prev = (first + n - 1, both[0, n].copy(), both[1, n].copy())
        windows = np.concatenate((both[:, :-1], both[:, 1:]), axis=2)  # (2, n, 2 HOP)
        spec = np.fft.rfft(_SQRT_HANN * windows)
        power = spec.real**2 + spec.imag**2
        for k in range(n):
            self._handed[(first + k) * HOP] = (power[0, k], power[1, k])
        while len(self._handed) > _PENDING_HOPS:
            self._handed.popitem(last=False)

    # ------------------------------------------------------------------ the ring's side

    def process(self, pos: int, window: FloatArray, speech_prob: float) -> tuple[int, FloatArray]:
        """The turn's audio from `pos` on (the samples after the previous call's, as the VAD
        heard them), and the VAD's probability that they are speech: (position, samples) of
        the turn's audio with the late echo taken out, as far as it is decided (`LOOKAHEAD`
        and a hop behind; an empty array when nothing is). A position that jumps starts
        afresh from there."""
        if pos != self._pos + len(self._held):
            self._restart(pos)
        end = pos + len(window)
        near = self._near
        if speech_prob >= NEAR_PROB:
            near.append((pos, end))
        while near and near[0][1] <= self._pos - HOP - HANGOVER:  # (too early to matter now)
            near.popleft()
        pending = self._handed
        while pending and next(iter(pending)) < self._pos:  # (hops the ring went past)
            pending.popitem(last=False)
        held = np.concatenate((self._held, window.astype(np.float64)))
        whole = max(0, (end - LOOKAHEAD - self._pos) // HOP)  # (hops whose lookahead came)
        if not whole or (not self._handed and not self._was_taken):  # (AEC3 idle: as it is)
            if whole:
                self._last = held[(whole - 1) * HOP : whole * HOP]
                self._early[min(whole, EARLY_HOPS) :] = self._early[: max(0, EARLY_HOPS - whole)]
                self._early[: min(whole, EARLY_HOPS)] = 0.0
                self._late *= _DECAYS[:, None] ** whole
                self._sounding += whole
            self._pos += whole * HOP
            self._held = held[whole * HOP :]
            return self._pos, np.zeros(0, dtype=np.float32)
        hops = np.concatenate((self._last, held[: whole * HOP])).reshape(whole + 1, HOP)
        spec = np.fft.rfft(_SQRT_HANN * np.concatenate((hops[:-1], hops[1:]), axis=1))
        gains = np.ones((whole, _BINS))
        modelled = np.zeros(whole, dtype=bool)
        for k in range(whole):
            at = self._pos + k * HOP
            handed = self._handed.pop(at, None)
            if handed is None:  # AEC3 did not run: nothing modelled, the audio as it is
                self._pass_hop()
                continue
            # the window over [at - HOP, at + HOP): the near end may be speaking if the VAD
            # heard speech from `HANGOVER` before it to `LOOKAHEAD` after it
            speaking = any(s < at + HOP + LOOKAHEAD and e > at - HOP - HANGOVER for s, e in near)
            late = self._late_power(handed[1], handed[0], learn=not speaking)
            modelled[k] = True
            self.hops_modelled += 1
            if speaking:  # leave the near end whole
                continue
            self.hops_judged += 1
            power = spec[k].real ** 2 + spec[k].imag ** 2
            gains[k] = np.maximum(FLOOR, 1.0 - late / (power + 1e-12))
        frames = _SQRT_HANN * np.fft.irfft(spec * gains, _WINDOW)
        out = np.empty(whole * HOP, dtype=np.float64)
        for k in range(whole):  # each window finishes the hop before it
            previous = hops[k]
            if modelled[k]:
                # its first half over the last one's second (which, if it took nothing out,
                # is the hop as it came, windowed: the halves sum back to it)
                done = frames[k, :HOP] + (self._overlap if self._was_taken else previous * _TAIL)
                self._overlap = frames[k, HOP:]
                self.energy_in += float(np.dot(previous, previous))
                self.energy_out += float(np.dot(done, done))
            else:  # (the last window's second half, and this one's first as it came)
                done = previous * _HEAD + self._overlap if self._was_taken else previous
            self._was_taken = bool(modelled[k])
            out[k * HOP : (k + 1) * HOP] = done
        self._last = hops[-1].copy()
        self._held = held[whole * HOP :]
        start = self._pos - HOP  # (each hop finishes the one before it)
        self._pos += whole * HOP
        skip = max(0, self._first - start)  # (nothing before the stream's start)
        return start + skip, out[skip:].astype(np.float32)

    def _restart(self, pos: int) -> None:
        self._pos = self._first = pos
        self._held = np.zeros(0, dtype=np.float64)
        self._last = np.zeros(HOP, dtype=np.float64)
        self._overlap = np.zeros(HOP, dtype=np.float64)
        self._was_taken = False

    def _pass_hop(self) -> None:
        """A hop AEC3 did not run for: the reference's power taken as 0."""
        self._early[1:] = self._early[:-1]
        self._early[0] = 0.0
        self._late *= _DECAYS[:, None]
        self._sounding += 1

    def _late_power(
        self, far_power: np.ndarray, mic_power: np.ndarray, *, learn: bool
    ) -> np.ndarray:
        """The late echo's power per bin in this hop; the fits updated with it if `learn`
        (not while the near end may be speaking)."""
        leaving = self._early[-1].copy()
        self._early[1:] = self._early[:-1]
        self._early[0] = far_power
        late = self._late
        late *= _DECAYS[:, None]
        late += leaving
        self._sounding = 0 if far_power.any() else self._sounding + 1
        if learn and self._sounding < _SOUNDING_HOPS:
            early = self._early.sum(axis=0)
            n = len(RT60_MS)
            terms = self._terms
            terms[:n] = late * early
            terms[n : 2 * n] = late * late
            terms[2 * n : 3 * n] = late * mic_power
            terms[3 * n] = early * early
            terms[3 * n + 1] = early * mic_power
            sums = terms @ self._bands
            s = self._s
            s *= _FORGET
            s[1] += sums[:n]  # el
            s[2] += sums[n : 2 * n]  # ll
            s[4] += sums[2 * n : 3 * n]  # lm
            s[0] += sums[3 * n]  # ee (the same for every tail)
            s[3] += sums[3 * n + 1]  # em
            self._fits += 1
            if self._fits % _SOLVE_EVERY == 0:
                self._c = self._coupling()[:, self._band_of]
        estimate: Float64Array = np.max(self._c * late, axis=0)
        return estimate

    def _coupling(self) -> np.ndarray:
        """Each tail's coupling `c` per band: the least-squares fit of the microphone's power
        to `d` x early + `c` x late, both at least 0."""
        ee, el, ll, em, lm = self._s
        det = ee * ll - el * el
        with np.errstate(divide="ignore", invalid="ignore"):
            d = (ll * em - el * lm) / det
            c = (ee * lm - el * em) / det
            c_alone = np.where(ll > 0, lm / ll, 0.0)
        both = (det > 1e-12 * ee * ll) & (d >= 0) & (c >= 0)
        # where the two cannot both be positive: the late tail alone if it explains more than
        # the early part alone, else none
        alone_better = c_alone * lm > np.where(ee > 0, em * em / np.where(ee > 0, ee, 1), 0)
        fallback = np.where(alone_better, np.maximum(c_alone, 0.0), 0.0)
        return np.where(both, c, fallback)

    @property
    def removed_db(self) -> float:
        """How much quieter the turn's audio left this than AEC3's output came, where modelled."""
        if self.energy_out <= 0.0 or not self.energy_in:
            return 0.0
        return float(10 * np.log10(self.energy_in / self.energy_out))
