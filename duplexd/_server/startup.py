"""Starting a daemon: its engine loaded here (`load_local_engine`), its port checked before the
model loads (`check_port_free`), and the one-line `StartupError` either raises; `DefaultVoice`
makes `[engine] voice` the voice of sessions that ask for none. Used by `duplexd serve`
(service.py) and `duplexd serve-model` (model.py)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from typing import Any

from .._ops.settings import EngineSettings
from ..engines.base import Engine, EngineError, Voice
from ..engines.registry import load_engine


class StartupError(Exception):
    """The daemon cannot start with this configuration (unknown engine or voice...)."""


def load_local_engine(e: EngineSettings, options: Mapping[str, Any] | None = None) -> Engine:
    """`[engine]`'s engine, loaded here with its default voice (loaded and warmed). Blocking:
    call from a worker thread. StartupError (one line) if it cannot load."""
    opts = dict(options or {})
    if e.name == "tone" and e.tone_compute_ms_per_char:
        opts.setdefault("compute_ms_per_char", e.tone_compute_ms_per_char)
    if e.name == "vits":
        voices = (*e.preload, e.voice) if e.voice else e.preload
        opts.setdefault("preload", tuple(dict.fromkeys(voices)))
        opts.setdefault("max_loaded_voices", e.max_loaded_voices)
        opts.setdefault("max_batch", e.max_batch or None)
        opts.setdefault("batch_window_ms", e.batch_window_ms)
        opts.setdefault("inference_threads", e.inference_threads or None)
        opts.setdefault("shape_buckets", e.shape_buckets)
        opts.setdefault("deterministic", e.deterministic)
    try:
        engine = load_engine(e.name, device=e.device, **opts)
        engine.open_voice(e.voice or engine.default_voice)  # loads and warms it
    except (LookupError, EngineError) as exc:
        raise StartupError(str(exc.args[0] if exc.args else exc)) from None
    return engine


def check_port_free(host: str, port: int) -> None:
    """StartupError (one line) if `port` on `host` cannot be bound now (in use, not allowed,
    no such address). Port 0 (any free one) is not checked."""
    if not port:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(f"--host {host}: {exc.strerror}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listener does
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"port {port} on {host} is in use (another duplexd?): stop it, or"
                        " choose another with --port"
                    ) from None
                raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class DefaultVoice:
    """An engine whose default voice is the configured one (`[engine] voice`): sessions that
    ask for no voice get it. Everything else is the wrapped engine's."""

    def __init__(self, engine: Engine, voice: str) -> None:
        self._engine = engine
        self._voice = voice

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def device(self) -> str:
        return self._engine.device

    @property
    def default_voice(self) -> str:
        return self._voice

    def voices(self) -> list[str]:
        return self._engine.voices()

    def open_voice(self, name: str) -> Voice:
        return self._engine.open_voice(name)

    def close(self) -> None:
        self._engine.close()

    def __getattr__(self, name: str) -> Any:  # engine extras (worker, models...)
        return getattr(self._engine, name)
