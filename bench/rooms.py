"""Echo paths for the echo-cancellation tests and the bench, generated from fixed seeds.

A room turns what the client played (the agent's voice, 16 kHz) into what its microphone hears
of it: an optional loudspeaker non-linearity (`tanh` soft clipping), then an impulse response
(a direct path after `delay_ms`, then, for a reverberant room, exponentially decaying noise
with the room's RT60: the energy falls 60 dB in `rt60_ms`), scaled so the echo sits `gain_db`
below what was played. `change_at_s` switches, mid-utterance, to a second path (another delay,
another noise draw of the same room): the player restarted, or the laptop was moved.

`ROOMS` is the set tests/test_echo.py, tests/test_uplink_echo.py and `bench/aec_rooms.py`
measure (and `python -m bench --uplink-echo-room NAME` plays); every array is the same on
every run (numpy's default_rng with the room's seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

RATE_HZ: Final = 16_000
Audio = npt.NDArray[np.float32]
_LN_1000: Final = float(np.log(1000.0))  # 60 dB of energy is a factor 1000 in amplitude


@dataclass(frozen=True)
class Room:
    name: str
    delay_ms: float  # the direct path: the sound's flight plus what the player buffered
    rt60_ms: float = 0.0  # 0: no reverberation (one clean delay)
    gain_db: float = -10.0  # the echo's level against what was played
    drive: float = 0.0  # > 0: the loudspeaker soft-clips, tanh(drive x) / drive
    change_at_s: float | None = None  # the path changes here ...
    delay2_ms: float = 0.0  # ... to this direct delay (and a fresh reverberation draw)
    seed: int = 0

    def impulse_response(self, second: bool = False) -> Audio:
        """The path's impulse response (the second one with `second`), `gain_db` in energy
        against its input for white input."""
        rng = np.random.default_rng(self.seed * 2 + int(second))
        delay = round((self.delay2_ms if second else self.delay_ms) * RATE_HZ / 1000)
        tail = round(self.rt60_ms * RATE_HZ / 1000)
        ir = np.zeros(delay + tail + 1, dtype=np.float64)
        ir[delay] = 1.0
        if tail:
            t = np.arange(1, tail + 1) / RATE_HZ
            decay = np.exp(-_LN_1000 * t / (self.rt60_ms / 1000))
            reverb = rng.normal(0.0, 1.0, tail) * decay
            # direct-to-reverberant ratio: 0 dB at RT60 300 ms, less in a livelier room
            drr_db = -10 * np.log10(self.rt60_ms / 300.0)
            reverb *= np.sqrt(10 ** (-drr_db / 10) / float(np.sum(reverb**2)))
            ir[delay + 1 :] = reverb
        ir *= 10 ** (self.gain_db / 20) / np.sqrt(float(np.sum(ir**2)))
        return ir.astype(np.float32)

    def echo(self, played: Audio, total: int) -> Audio:
        """What the microphone hears of `played` (sample 0 played at uplink sample 0),
        `total` samples long."""
        x = played.astype(np.float64)
        if self.drive > 0:
            x = np.tanh(self.drive * x) / self.drive
        out = _convolve(x, self.impulse_response(), total)
        if self.change_at_s is not None:
            at = round(self.change_at_s * RATE_HZ)
            late = _convolve(x, self.impulse_response(second=True), total)
            out[at:] = late[at:]
        return out.astype(np.float32)


def _convolve(x: npt.NDArray[np.float64], ir: Audio, total: int) -> npt.NDArray[np.float64]:
    size = 1 << (len(x) + len(ir)).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir.astype(np.float64), size), size)
    out = np.zeros(total, dtype=np.float64)
    n = min(total, len(x) + len(ir) - 1)
    out[:n] = y[:n]
    return out


ROOMS: Final = (
    Room("delay", delay_ms=120.0, seed=1),
    Room("rt60-100", delay_ms=40.0, rt60_ms=100.0, seed=2),
    Room("rt60-300", delay_ms=90.0, rt60_ms=300.0, seed=3),
    Room("rt60-600", delay_ms=180.0, rt60_ms=600.0, seed=4),
    Room("nonlinear", delay_ms=70.0, rt60_ms=300.0, drive=4.0, seed=5),
    Room("path-change", delay_ms=60.0, rt60_ms=300.0, change_at_s=3.0, delay2_ms=150.0, seed=6),
)
ROOMS_BY_NAME: Final = {r.name: r for r in ROOMS}


def noise(total: int, level_db: float = -55.0, seed: int = 0) -> Audio:
    """The room's own noise, white at `level_db` dBFS."""
    rng = np.random.default_rng(1000 + seed)
    return rng.normal(0.0, 10 ** (level_db / 20), total).astype(np.float32)


def db(x: npt.ArrayLike) -> float:
    """Mean power in dB (full scale 1.0)."""
    a = np.asarray(x, dtype=np.float64)
    return float(10 * np.log10(np.mean(a**2) + 1e-20))


class StreamingEcho:
    """`Room.echo`, 20 ms at a time (overlap-add): what the microphone hears of each frame
    played, from the frame played at time 0 on; the path changes `change_at_s` in."""

    def __init__(self, room: Room, frame: int = 320) -> None:
        self.room = room
        self._frame = frame
        self._irs = [room.impulse_response()]
        if room.change_at_s is not None:
            self._irs.append(room.impulse_response(second=True))
        longest = max(len(ir) for ir in self._irs)
        self._size = 1 << (frame + longest).bit_length()
        self._spectra = [np.fft.rfft(ir.astype(np.float64), self._size) for ir in self._irs]
        self._tail = np.zeros(self._size, dtype=np.float64)
        self._played = 0  # samples played so far

    def process(self, played: Audio) -> Audio:
        """The echo of the next `frame` samples played (as long as `played`)."""
        n = len(played)
        x = played.astype(np.float64)
        if self.room.drive > 0:
            x = np.tanh(self.room.drive * x) / self.room.drive
        change = self.room.change_at_s
        second = change is not None and self._played >= change * RATE_HZ
        self._played += n
        y = np.fft.irfft(np.fft.rfft(x, self._size) * self._spectra[int(second)], self._size)
        self._tail += y
        out = self._tail[:n].copy()
        self._tail[:-n] = self._tail[n:]
        self._tail[-n:] = 0.0
        return out.astype(np.float32)
