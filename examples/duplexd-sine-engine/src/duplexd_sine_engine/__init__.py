"""`sine`: an example duplexd engine plugin (see DEVELOPMENT.md, "Adding a TTS engine").

Each word becomes a 120 ms sine beep whose pitch follows the word, then 40 ms of silence.
The engine only has to satisfy `duplexd.engines.base.Engine` and `Voice` (structural
protocols: no base class to inherit); the daemon does batching, resampling to the session's
rate, framing and pacing.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

from duplexd.engines.base import UnknownVoiceError

__all__ = ["SineEngine", "SineVoice"]

RATE_HZ = 22_050  # any native rate works: the daemon resamples to the session's rate
BEEP_S = 0.120
GAP_S = 0.040
VOICES = {"a4": 440.0, "a3": 220.0}


class SineVoice:
    def __init__(self, name: str, base_hz: float) -> None:
        self._name = name
        self._base_hz = base_hz

    @property
    def name(self) -> str:
        return self._name

    @property
    def sample_rate_hz(self) -> int:
        return RATE_HZ

    def synthesize(self, text: str) -> npt.NDArray[np.float32]:
        """Blocking and thread-safe (pure numpy); empty for text without words."""
        t = np.arange(int(RATE_HZ * BEEP_S), dtype=np.float32) / RATE_HZ
        gap = np.zeros(int(RATE_HZ * GAP_S), dtype=np.float32)
        parts: list[npt.NDArray[np.float32]] = []
        for word in text.split():
            if not any(ch.isalnum() for ch in word):
                continue
            hz = self._base_hz * 2 ** ((zlib.crc32(word.lower().encode()) % 12) / 12)
            parts += [0.3 * np.sin(2 * np.pi * hz * t).astype(np.float32), gap]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class SineEngine:
    def __init__(self, *, device: str = "auto", **options: object) -> None:
        if options:
            raise TypeError(f"sine takes no options, got {sorted(options)}")
        self._voices = {name: SineVoice(name, hz) for name, hz in VOICES.items()}

    @property
    def name(self) -> str:
        return "sine"

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def default_voice(self) -> str:
        return "a4"

    def voices(self) -> list[str]:
        return list(self._voices)

    def open_voice(self, name: str) -> SineVoice:
        try:
            return self._voices[name]
        except KeyError:
            raise UnknownVoiceError(f"sine has no voice {name!r}; it has a4, a3") from None

    def close(self) -> None:
        pass
