"""Neural TTS engine: Piper VITS voices run by a torch implementation of VITS inference."""

from __future__ import annotations

from .engine import VitsEngine, VitsVoice
from .load import VoiceLoadError, load_vits
from .model import Scales, Vits
from .voices import VoiceCatalog, VoiceSpec

__all__ = [
    "Scales",
    "Vits",
    "VitsEngine",
    "VitsVoice",
    "VoiceCatalog",
    "VoiceLoadError",
    "VoiceSpec",
    "load_vits",
]
