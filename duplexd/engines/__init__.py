"""Text-to-speech engines, and the plugin API a third-party engine implements.

Public. An `Engine` (one per daemon, shared by every session) hands out `Voice` objects whose
blocking `synthesize(text)` returns float32 audio at the voice's own rate (a `StreamingVoice`
may yield it in chunks, a `WordTimedVoice` also says where each word is spoken); the daemon
resamples, frames and paces it.

- `base`: the plugin API (`Engine`, `Voice`, `StreamingVoice`, `WordTimedVoice`, `WordMark`,
  `text_words`, `EngineError`, `EngineUnavailableError` for "not now, not a bug"...).
- `tone`: a deterministic test engine (sine tones, one frame per character).
- `vits`: the neural engine (torch, CUDA or CPU), with the bundled joe voice.
- `registry`: `load_engine(name)` (built-ins and plugins), `EngineSet` (a daemon's engines).
- `plugins`: the `duplexd.engines` entry-point group.
- `remote`: `RemoteEngine`, a daemon's engine whose model runs in a model process
  (`duplexd serve-model`, `remote.server.serve_model`) that several daemons share.

May import: nothing of duplexd. Importing this package does not import torch (`vits` does).
"""

from __future__ import annotations

from .base import Engine as Engine
from .base import EngineError as EngineError
from .base import EngineUnavailableError as EngineUnavailableError
from .base import FloatAudio as FloatAudio
from .base import StreamingVoice as StreamingVoice
from .base import UnknownVoiceError as UnknownVoiceError
from .base import Voice as Voice
from .base import WordMark as WordMark
from .base import WordTimedVoice as WordTimedVoice
from .base import text_words as text_words
from .plugins import PluginError as PluginError
from .registry import EngineSet as EngineSet
from .registry import available_engines as available_engines
from .registry import load_engine as load_engine

__all__ = [
    "Engine",
    "EngineError",
    "EngineSet",
    "EngineUnavailableError",
    "FloatAudio",
    "PluginError",
    "StreamingVoice",
    "UnknownVoiceError",
    "Voice",
    "WordMark",
    "WordTimedVoice",
    "available_engines",
    "load_engine",
    "text_words",
]
