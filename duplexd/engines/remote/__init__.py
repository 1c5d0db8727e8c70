"""A model process shared by several daemons: `serve_model` runs one engine for all of them,
`RemoteEngine` is how a daemon uses it (an `Engine` like any other), `wire` is what they say.

May import: `duplexd.engines.base`. Importing it does not import torch or trio (`server` does
import trio; the daemon side, `client`, uses plain sockets and threads).
"""

from __future__ import annotations

from .client import RemoteEngine as RemoteEngine
from .link import ModelGoneError as ModelGoneError

__all__ = ["ModelGoneError", "RemoteEngine"]
