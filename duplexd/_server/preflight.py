"""What `duplexd serve` would fail on, found without loading a model: `duplexd config --check`.

The engine must be one `load_engine` knows; the voice and the preloaded voices must exist
(tone: its three; vits: the installed voice packages, read from their metadata, no model
loaded); a CUDA device must be there. A plugin engine's voices are its own business: they are
checked when it loads. The ports are not checked here (a running daemon holds them while its
next configuration is checked); `serve` checks them before it loads the model.
"""

from __future__ import annotations

from .._ops.settings import Settings
from ..engines.base import UnknownVoiceError
from ..engines.registry import available_engines


def startup_problems(settings: Settings) -> list[str]:
    """One line per problem; [] if `serve` should start with these settings."""
    e = settings.engine
    engines = available_engines()
    if e.name not in engines:
        return [f"engine.name: unknown engine {e.name!r}; available: {', '.join(engines)}"]
    problems: list[str] = []
    wanted = [("engine.voice", e.voice)] if e.voice else []
    wanted += [("engine.preload", name) for name in e.preload]
    if e.name == "tone":
        from ..engines.tone import VOICES

        for key, name in wanted:
            if name not in VOICES:
                problems.append(f"{key}: unknown voice {name!r}; available: {', '.join(VOICES)}")
    elif e.name == "vits":
        from ..engines.vits.voices import VoiceCatalog

        catalog = VoiceCatalog()
        for key, name in wanted:
            try:
                catalog.resolve(name)
            except UnknownVoiceError as exc:
                problems.append(f"{key}: {exc.args[0] if exc.args else exc}")
    if e.device.startswith("cuda") and e.name in ("vits",):
        import torch

        if not torch.cuda.is_available():
            problems.append(
                f"engine.device: {e.device!r} but CUDA is not available here; use auto or cpu"
            )
    return problems
