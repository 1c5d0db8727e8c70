"""LiveKit's WebRTC audio processing as the uplink's echo canceller, for `bench.aec_rooms`.

Issue 15 named two maintained wheels with WebRTC's AEC3: `pywebrtc-audio` (what the daemon
runs) and `livekit`'s `rtc.AudioProcessingModule` (10 ms int16 frames, changed in place, over
LiveKit's FFI library). `python -m bench.aec_rooms --canceller livekit` runs the rooms with the
second in place of the first: `use_livekit()` swaps the class the uplink's echo module builds
for `LiveKitCanceller`, which takes and gives what `pywebrtc_audio.EchoCanceller` does (float32
at 16 kHz, whole 10 ms frames, the microphone and the far end's reference side by side), so
the rest of the glue (reference placement, presence check, near-end onset) is the same.

`livekit` is not a dependency of duplexd: `pip install livekit` (Apache-2.0; ~30 MB of FFI
library, protobuf with it) to run this.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


def _rtc() -> Any:
    try:
        from livekit import rtc
    except ImportError:
        sys.exit("bench.aec_rooms: --canceller livekit needs LiveKit's SDK: pip install livekit")
    return rtc


class LiveKitCanceller:
    """`livekit.rtc.AudioProcessingModule` with echo cancellation alone (no noise suppression,
    high-pass filter or gain control: what `pywebrtc_audio.EchoCanceller` runs), fed and read
    as `pywebrtc_audio.EchoCanceller` is. Its output is as late as that one's (128 samples at
    16 kHz, measured: white noise through either, no far end, cross-correlated)."""

    def __init__(self, rate_hz: int = 16_000) -> None:
        self._rtc = _rtc()
        self._rate = rate_hz
        self._frame = rate_hz // 100
        self._apm = self._rtc.AudioProcessingModule(echo_cancellation=True)

    def _frame_of(self, samples: FloatArray) -> Any:
        frame = self._rtc.AudioFrame.create(self._rate, 1, self._frame)
        pcm = np.frombuffer(frame.data, dtype=np.int16)
        np.copyto(pcm, (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16))
        return frame

    def process(self, near: FloatArray, far: FloatArray) -> FloatArray:
        """The microphone's `near` with the echo of `far` taken out (whole 10 ms frames)."""
        f = self._frame
        out = np.empty(len(near) - len(near) % f, dtype=np.float32)
        for start in range(0, len(out), f):
            self._apm.process_reverse_stream(self._frame_of(far[start : start + f]))
            frame = self._frame_of(near[start : start + f])
            self._apm.process_stream(frame)
            pcm = np.frombuffer(frame.data, dtype=np.int16)
            out[start : start + f] = pcm.astype(np.float32) / 32767.0
        return out

    def reset(self) -> None:
        self._apm = self._rtc.AudioProcessingModule(echo_cancellation=True)


def use_livekit() -> None:
    """From now on the uplink's echo module builds `LiveKitCanceller`s (this process only)."""
    _rtc()  # (fails here, in one line, if the SDK is missing)
    from duplexd._uplink import echo

    echo.pywebrtc_audio = types.SimpleNamespace(EchoCanceller=LiveKitCanceller)  # type: ignore[assignment]
