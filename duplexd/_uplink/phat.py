"""GCC-PHAT: where a delayed copy of one signal lies in another (the echo canceller's presence
check, `echo.EchoCanceller._judge`)."""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

_FAR_FLOOR: Final = 1e-4  # (-40 dB: `phat` weighs the reference's bins above this share)


def phat(near: FloatArray, far: FloatArray) -> npt.NDArray[np.float64]:
    """GCC-PHAT peak-to-RMS of `near` against `far` (which starts `len(far) - len(near)`
    samples earlier), at lags 0 .. len(far) - len(near): every spectral bin weighs the same,
    so a delayed (filtered, reverberated) copy gives a sharp peak and other speech none: the
    correlation at every lag (`far[lag:]` lines up with `near`) over its RMS.

    Only the bins where `far` has sound (above `_FAR_FLOOR` of its loudest bin) count: no echo
    can come back where nothing was sent, and whitened to the same weight, a narrowband
    reference's empty bins (the tone engine's: the sidelobes of its characters' edges) turn it
    into a click train that the user's speech matched at scores up to 44 (measured: a false
    echo, and AEC3 then ducked a user with headphones out of their barge-in). Masked, that
    speech scores at most 6.3, the rooms' echoes of a VITS voice as before (p10 within 2.1)."""
    lags = len(far) - len(near)
    size = 1 << (len(far) + len(near)).bit_length()
    spectrum = np.fft.rfft(far, size)
    cross = spectrum * np.conj(np.fft.rfft(near, size))
    cross /= np.abs(cross) + 1e-12
    power = spectrum.real**2 + spectrum.imag**2
    cross[power < float(np.max(power)) * _FAR_FLOOR] = 0.0
    corr = np.fft.irfft(cross, size)[: lags + 1]
    out: npt.NDArray[np.float64] = corr / (np.sqrt(np.mean(corr**2)) + 1e-12)
    return out


def peak_lag(corr: npt.NDArray[np.float64], lag: int) -> float:
    """`lag` (a peak of `corr`) to a fraction of a lag: the vertex of the parabola through it
    and its neighbours (`lag` itself at either end of `corr`)."""
    if lag <= 0 or lag >= len(corr) - 1:
        return float(lag)
    a, b, c = float(corr[lag - 1]), float(corr[lag]), float(corr[lag + 1])
    bend = a - 2.0 * b + c
    if bend >= 0.0:  # (not a peak: flat or a trough)
        return float(lag)
    return lag + 0.5 * (a - c) / bend
