"""The user starting to talk over the agent's echo: heard from the microphone's level.

While the agent's voice may be echoing back, a VAD window must score `echo_threshold`, not
`threshold`, to count toward a barge-in: the margin for what AEC3 lets through of the echo. But
AEC3's suppressor also takes the first tens of ms of a user who starts talking over the echo
for echo (it ducks that onset), and the onset then has to clear the higher threshold too. What
the suppressor cannot hide is the microphone's own level: a voice louder than the echo raises
it over what the reference explains. `NearEndOnset` keeps, per 10 ms frame, the microphone's
energy against the reference's over the room's tail (the loudest reference frame of the last
`TAIL_MS`: the echo of any of them may still arrive) and the ratio it has had lately
(`RATIO_QUANTILE` % of its last `HISTORY_S` of frames judged, those found louder and digital
silence left out: the echo's return loss, with room for the loudest syllables); a frame
`MARGIN_DB` over that is the near end talking. So is a frame over the return loss itself whose
spectrum is `MARGIN_DB` over the same per band (`BAND_EDGES_HZ`, each band's own return loss of
the loudest reference band over the tail) in `BANDS_OVER` bands, each also `FLOOR_MARGIN_DB`
over the microphone's quiet in it, `BAND_RUN` frames in a row: a user's "Wait" that is not 6 dB
over a loud syllable of the agent, broadband, stands out where the agent's voice is quiet (the
broadband check alone missed three or four of `bench.aec_rooms`' 32 onsets in each of three
rooms until the next word). For `HOLD_MS` after such a frame the session's barge-in needs only
`threshold`, as it would without an echo (uplink.py); once `SURE_FRAMES` of the last
`SURE_SPAN` frames judged were so (`sure_over`: those frames, from the first of them found
louder), the barge-in also hears the microphone itself, which AEC3's suppressor has not ducked
(micvoice.py): "Wait" said just as the agent resumes is ducked by AEC3 for its whole length,
and found in bands alone (bench/results/README.md, "Sure in bands, judged sooner"). It lowers
nothing below `threshold`, so a noise over the echo barges in no more easily than one without an
echo. Nothing is judged while the reference is under -50 dBFS over the tail (the agent between
sentences), nor in the first `GUARD_MS` after it comes back: live, an utterance's first syllable
can echo back before its reference is handed on, and that echo over a reference just begun read as
the near end (false barge-ins; 300 ms at first, 150 since ten live runs had none with it). Not
where a PLAYED report on its run's first frame placed the reference where the player played it
(`add`'s `placed`, placed.py): its echo then comes after it (with the guard, a user who starts as
the agent resumes was heard only once it ended: 66-111 ms after their onset, live). Frames
are judged once `_MIN_RATIOS` of the echo are known (half a second: a user who starts talking in
the reply's second second is not learned as its echo). An echo that comes back after none is
learned afresh (`reset`), and so is any echo once most frames judged over the last half second were
flagged (a louder path: the loudspeaker turned up, another device; a user heard that long would
have stopped the agent). A realignment keeps what was learned: the tail's loudest reference frame
hardly moves with the path's delay. What it bought and cost: bench/results/README.md, "The near end
over the echo".

One per echo canceller; fed by it (`add`) the frames AEC3 gets, in the uplink worker's thread.
"""

from __future__ import annotations

import collections
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

TAIL_MS: Final = 300.0  # the reference's loudest frame over this long drives the echo
GUARD_MS: Final = 150.0  # nothing judged this long after the reference comes back
HISTORY_S: Final = 2.0  # the microphone-to-reference ratios the echo's return loss is taken of
RATIO_QUANTILE: Final = 95.0  # ... this percentile of them
MARGIN_DB: Final = 6.0  # a frame this far over it: the near end talking
HOLD_MS: Final = 80.0  # ... and for this long after it
# ... or over the return loss itself, and `MARGIN_DB` over each band's own in BANDS_OVER of
# these bands (where the agent's voice is quiet), BAND_RUN frames in a row
BAND_EDGES_HZ: Final = (100, 300, 600, 1000, 1500, 2200, 3000, 4000, 8000)
BANDS_OVER: Final = 2
BAND_RUN: Final = 2
# ... each such band FLOOR_MARGIN_DB over the microphone's quiet in it (FLOOR_QUANTILE % of
# its energies held): the room's noise where the echo is faint is not the user
FLOOR_QUANTILE: Final = 10.0
FLOOR_MARGIN_DB: Final = 10.0
# ... and once SURE_FRAMES of the last SURE_SPAN frames judged were so, the microphone itself
# is heard too (`sure_over`, micvoice.py): one stray frame (an echo path that changed) is not
SURE_FRAMES: Final = 3
SURE_SPAN: Final = 5
_MIN_RATIOS: Final = 50  # (0.5 s of them before any frame is judged)
_SPAN_MASK: Final = (1 << SURE_SPAN) - 1
_REFRESH_FRAMES: Final = 10  # the return loss worked out again every 100 ms of echo
# over half the frames judged lately flagged (a running share, ~0.5 s): a louder echo (`reset`)
_MOST_FLAGGED: Final = 0.5
_SHARE_WEIGHT: Final = 0.02
_FAR_FLOOR: Final = 1e-5  # (-50 dBFS) a quieter reference explains nothing: no frame judged
_NEAR_FLOOR: Final = 1e-7  # (-70 dBFS) nor a quieter microphone frame
_BAND_FLOOR: Final = 5e-8  # (-73 dBFS) nor a quieter band, over a floor of digital silence


class NearEndOnset:
    """Whether the user is talking over the echo, frame by frame (`until`)."""

    def __init__(self, rate_hz: int = 16_000) -> None:
        self._frame = rate_hz // 100
        self._far = np.zeros(round(TAIL_MS / 10), dtype=np.float64)  # reference energy, ring
        self._i = 0
        self._ratios = np.zeros(round(HISTORY_S * 100), dtype=np.float64)  # ring
        self._j = 0
        self._known = 0
        self._sounding = 0  # frames since the reference came up from the floor
        self._guard = round(GUARD_MS / 10)
        self._margin = 10 ** (MARGIN_DB / 10)
        self._hold = round(HOLD_MS * rate_hz / 1000)
        self._limit: float | None = None  # a ratio over this: the near end (`_return_losses`)
        self._limit_at = 0  # (`_known` when it was last worked out)
        # the same per band of BAND_EDGES_HZ (rows: frames, as `_far` and `_ratios`)
        edges = np.asarray(BAND_EDGES_HZ, dtype=np.float64)
        band_of = np.searchsorted(edges, np.fft.rfftfreq(self._frame, 1 / rate_hz), "right") - 1
        bands = len(edges) - 1
        self._window = np.hanning(self._frame + 2)[1:-1]
        scale = 2.0 / (self._frame * float(np.sum(self._window**2)))  # (mean-square units)
        self._to_bands = scale * (band_of[:, None] == np.arange(bands)[None, :])  # bin -> band
        self._far_bands = np.zeros((len(self._far), bands), dtype=np.float64)
        self._band_ratios = np.zeros((len(self._ratios), bands), dtype=np.float64)
        self._near_bands = np.zeros_like(self._band_ratios)  # (the microphone's, for its quiet)
        self._band_limit: npt.NDArray[np.float64] | None = None
        self._band_floor: npt.NDArray[np.float64] | None = None
        self._band_run = 0  # frames in a row over in `BANDS_OVER` bands
        self.until = -1  # the uplink sample up to which the near end is talking ...
        self.onset = -1  # ... since this one (the stretch's first frame found louder)
        self._sure = (-1, -1)  # the span [from, to) of frames it is sure of (`sure_over`)
        self._recent = 0  # the last `SURE_SPAN` frames judged, a bit each (1: louder)
        self._louder: collections.deque[int] = collections.deque(maxlen=SURE_SPAN)  # (starts)
        self.frames = 0  # frames found louder than the echo (observability)
        self._flag_share = 0.0  # ... the share of the frames judged lately
        self.resets = 0  # times the echo was learned afresh (observability)

    @property
    def judging(self) -> bool:
        """Whether frames are judged (the echo's return loss is learned): `until` and
        `sure_over` can change."""
        return self._known >= _MIN_RATIOS

    @property
    def guarding(self) -> bool:
        """Whether the next frame may fall in `GUARD_MS` (the reference quiet, or back for
        less than that): only then does `add`'s `placed` matter."""
        return self._sounding < self._guard

    def sure_over(self, start: int, end: int) -> bool:
        """Whether the uplink samples [start, end) hold frames it was sure were the near end
        (`SURE_FRAMES` of `SURE_SPAN` found louder: the span from the first of them to the last
        frame found louder since, without `HOLD_MS`: a window after the user stops, or before
        they start, is the echo's)."""
        first, last = self._sure
        return start < last and first < end

    def reset(self) -> None:
        """Forget the echo's return loss and the reference's recent level (an echo came back
        after none, or most frames lately were flagged: a louder path): judged again once
        `_MIN_RATIOS` frames of the echo are known."""
        self.resets += 1
        self._far[:] = 0.0
        self._far_bands[:] = 0.0
        self._sounding = self._known = self._j = self._recent = self._band_run = 0
        self._limit, self._band_limit, self._band_floor = None, None, None
        self._flag_share = 0.0
        self._sure = (-1, -1)  # (what made it sure was the echo, louder)

    def add(self, near: FloatArray, far: FloatArray, pos: int, *, placed: bool = False) -> None:
        """The microphone's `near` and the reference `far` AEC3 is handed with it, whole
        10 ms frames, the first at uplink sample `pos` (`placed`: `far` is where the client's
        player reported playing it, from its run's first frame: no `GUARD_MS`)."""
        f = self._frame
        n = min(len(near), len(far)) // f
        if not n:
            return
        e_near = np.mean(np.square(near[: n * f].reshape(n, f), dtype=np.float64), axis=1)
        e_far = np.mean(np.square(far[: n * f].reshape(n, f), dtype=np.float64), axis=1)
        b_near = self._band_energy(near[: n * f].reshape(n, f))
        b_far = self._band_energy(far[: n * f].reshape(n, f))
        for k in range(n):
            self._far[self._i] = e_far[k]
            self._far_bands[self._i] = b_far[k]
            self._i = (self._i + 1) % len(self._far)
            drive = float(self._far.max())
            if drive < _FAR_FLOOR:
                self._sounding = self._recent = self._band_run = 0
                continue
            self._sounding += 1
            if self._sounding <= self._guard and not placed:  # (`GUARD_MS`: below)
                continue
            if e_near[k] <= _NEAR_FLOOR:  # (digital silence, a gap filled with zeros: no
                continue  # ratio of an echo, and a history of zeros would flag every echo)
            ratio = float(e_near[k]) / drive
            band_ratios = b_near[k] / np.maximum(self._far_bands.max(axis=0), 1e-20)
            if self._known >= _MIN_RATIOS:
                if self._limit is None or self._known - self._limit_at >= _REFRESH_FRAMES:
                    self._return_losses()
                assert self._band_limit is not None and self._band_floor is not None
                assert self._limit is not None
                banded = (
                    ratio * self._margin > self._limit
                    and np.count_nonzero(
                        (band_ratios > self._band_limit) & (b_near[k] > self._band_floor)
                    )
                    >= BANDS_OVER
                )
                self._band_run = self._band_run + 1 if banded else 0
                broad = ratio > self._limit
                louder = broad or self._band_run >= BAND_RUN
                self._flag_share += (float(louder) - self._flag_share) * _SHARE_WEIGHT
                self._recent = ((self._recent << 1) | louder) & _SPAN_MASK
                if louder:
                    start = pos + k * f
                    if self.until <= start:  # (a stretch of frames found louder begins)
                        self.onset = start
                    self.until = start + f + self._hold
                    self._louder.append(start)
                    if self._recent.bit_count() >= SURE_FRAMES:
                        first = min(p for p in self._louder if p > start - SURE_SPAN * f)
                        if first > self._sure[1]:  # (else the span it is sure of goes on)
                            self._sure = (first, self._sure[1])
                        self._sure = (self._sure[0], start + f)
                    self.frames += 1
                    if self._flag_share > _MOST_FLAGGED:  # (a user heard that long would have
                        self.reset()  # stopped the agent: the echo itself got louder)
                    continue  # (not the echo's ratio: kept out of its history)
            self._ratios[self._j] = ratio
            self._band_ratios[self._j] = band_ratios
            self._near_bands[self._j] = b_near[k]
            self._j = (self._j + 1) % len(self._ratios)
            self._known += 1

    def _band_energy(self, frames: FloatArray) -> npt.NDArray[np.float64]:
        """Each 10 ms frame's energy in each band of `BAND_EDGES_HZ` (mean square: the bands
        of a frame add up to about its `np.mean(np.square(...))`), one row per frame."""
        spectrum = np.fft.rfft(frames * self._window, axis=1)
        power = np.square(spectrum.real) + np.square(spectrum.imag)
        out: npt.NDArray[np.float64] = power @ self._to_bands
        return out

    def _return_losses(self) -> None:
        """`_limit` and `_band_limit` from the ratios held: `RATIO_QUANTILE` % of them (the
        echo's return loss, as energy, broadband and per band), `MARGIN_DB` over it."""
        held = min(self._known, len(self._ratios))
        k = min(held - 1, round(RATIO_QUANTILE / 100 * (held - 1)))
        loss = float(np.partition(self._ratios[:held], k)[k])
        band_loss = np.partition(self._band_ratios[:held], k, axis=0)[k]
        self._limit = loss * self._margin
        q = min(held - 1, round(FLOOR_QUANTILE / 100 * (held - 1)))
        floor = np.partition(self._near_bands[:held], q, axis=0)[q]
        self._band_floor = np.maximum(floor * 10 ** (FLOOR_MARGIN_DB / 10), _BAND_FLOOR)
        self._band_limit = band_loss * self._margin
        self._limit_at = self._known
