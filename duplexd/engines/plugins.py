"""Third-party engines: the `duplexd.engines` entry-point group.

A package declares, in its pyproject.toml::

    [project.entry-points."duplexd.engines"]
    sine = "duplexd_sine_engine:SineEngine"

and `duplexd serve --engine sine` loads it. The object named by the entry point is called like
a built-in engine's class: ``factory(device=DEVICE, **options)`` (options come from the
daemon, e.g. nothing at all for a plugin), and must return an `duplexd.engines.base.Engine`.
Nothing is imported until an engine is asked for by name; listing names only reads the
installed packages' metadata.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final

from .base import Engine, EngineError

GROUP: Final = "duplexd.engines"


class PluginError(EngineError):
    """A plugin engine was found but could not be loaded or built."""


def plugin_entry_points() -> dict[str, EntryPoint]:
    """Installed plugin engines by name (the first of a duplicated name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)
    return found


def load_plugin_engine(name: str, *, device: str, **options: Any) -> Engine | None:
    """Build the plugin engine `name`, or None if no installed package declares it.

    Raises `PluginError` when the plugin's import or construction fails (the message names
    the distribution, so the operator knows whom to blame)."""
    ep = plugin_entry_points().get(name)
    if ep is None:
        return None
    dist = ep.dist.name if ep.dist is not None else "?"
    try:
        factory = ep.load()
        engine = factory(device=device, **options)
    except Exception as exc:
        raise PluginError(
            f"engine {name!r} from {dist} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(engine, Engine):
        raise PluginError(
            f"engine {name!r} from {dist} ({ep.value}) is not a duplexd Engine "
            f"(got {type(engine).__name__})"
        )
    return engine
