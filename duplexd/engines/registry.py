"""The engines a daemon serves: built-ins and plugins by name, loaded once per process.

Plugins are packages declaring a `duplexd.engines` entry point (`duplexd.engines.plugins`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Engine

BUILTIN_ENGINES = ("vits", "tone")


def available_engines() -> list[str]:
    """The engine names `load_engine` knows: the built-ins, then installed plugins."""
    from .plugins import plugin_entry_points

    return [*BUILTIN_ENGINES, *(n for n in plugin_entry_points() if n not in BUILTIN_ENGINES)]


def load_engine(name: str, *, device: str = "auto", **options: Any) -> Engine:
    """Create a built-in or plugin engine. Blocking (a neural engine loads its model): call it
    before serving or from a worker thread. Raises LookupError for an unknown name, and
    `duplexd.engines.plugins.PluginError` (an EngineError) for a plugin that fails to load."""
    if name == "tone":
        from .tone import ToneEngine

        return ToneEngine(**options)
    if name == "vits":
        from .vits import VitsEngine

        return VitsEngine(device=device, **options)
    from .plugins import load_plugin_engine

    engine = load_plugin_engine(name, device=device, **options)
    if engine is None:
        raise LookupError(f"unknown engine {name!r}; available: {', '.join(available_engines())}")
    return engine


class EngineSet:
    """The loaded engines of a daemon; the first is the default."""

    def __init__(self, engines: Mapping[str, Engine]) -> None:
        if not engines:
            raise ValueError("at least one engine is needed")
        self._engines = dict(engines)
        self.default = next(iter(self._engines))

    @classmethod
    def of(cls, *engines: Engine) -> EngineSet:
        return cls({e.name: e for e in engines})

    def get(self, name: str) -> Engine:
        """The engine called `name` ("" for the default); LookupError if not loaded."""
        try:
            return self._engines[name or self.default]
        except KeyError:
            raise LookupError(
                f"unknown engine {name!r}; this server has: {', '.join(self._engines)}"
            ) from None

    def names(self) -> list[str]:
        return list(self._engines)

    def describe(self) -> dict[str, Any]:
        return {
            name: {"voices": e.voices(), "default_voice": e.default_voice, "device": e.device}
            for name, e in self._engines.items()
        }

    def close(self) -> None:
        for e in self._engines.values():
            e.close()
