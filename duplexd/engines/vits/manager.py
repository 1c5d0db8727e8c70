"""A small LRU cache of loaded voice models that never evicts a model in use."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

_LOG = logging.getLogger(__name__)

M = TypeVar("M")


class _Entry(Generic[M]):
    __slots__ = ("key", "model", "refs")

    def __init__(self, key: str, model: M) -> None:
        self.key = key
        self.model = model
        self.refs = 0


class ModelManager(Generic[M]):
    """Loads models on first use, keeps up to `max_loaded` warm, evicts least recently used.

    `acquire` pins a model (reference count) until `release`; a pinned model is never evicted,
    so the cache may exceed `max_loaded` while more than that many are in use at once.
    """

    def __init__(
        self,
        load: Callable[[str], M],
        max_loaded: int = 4,
        unload: Callable[[M], None] | None = None,
    ) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be >= 1")
        self._load = load
        self._unload = unload
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry[M]] = OrderedDict()
        self._load_locks: dict[str, threading.Lock] = {}
        self._closed = False

    def _pin(self, key: str) -> _Entry[M] | None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.refs += 1
            self._entries.move_to_end(key)
        return entry

    def acquire(self, key: str) -> M:
        """Pin (loading if needed) the model for `key`. Blocking."""
        with self._lock:
            if self._closed:
                raise RuntimeError("model manager is closed")
            entry = self._pin(key)
            if entry is not None:
                return entry.model
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one loader per key; other keys load in parallel
            with self._lock:
                entry = self._pin(key)
                if entry is not None:
                    return entry.model
            model = self._load(key)
            with self._lock:
                entry = _Entry(key, model)
                entry.refs = 1
                self._entries[key] = entry
                evicted = self._evict_locked()
        self._dispose(evicted)
        return model

    def release(self, key: str) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.refs <= 0:
                raise RuntimeError(f"release of a model that is not acquired: {key}")
            entry.refs -= 1
            evicted = self._evict_locked()
        self._dispose(evicted)

    @contextmanager
    def use(self, key: str) -> Iterator[M]:
        model = self.acquire(key)
        try:
            yield model
        finally:
            self.release(key)

    def _evict_locked(self) -> list[M]:
        evicted: list[M] = []
        while len(self._entries) > self.max_loaded:
            victim = next((e for e in self._entries.values() if e.refs == 0), None)
            if victim is None:
                break  # everything is in use: stay over the limit for now
            del self._entries[victim.key]
            _LOG.info("evicting voice model %s", victim.key)
            evicted.append(victim.model)
        return evicted

    def _dispose(self, models: list[M]) -> None:
        if self._unload is not None:
            for m in models:
                self._unload(m)

    def loaded(self) -> list[str]:
        """Keys of loaded models, least recently used first."""
        with self._lock:
            return list(self._entries)

    def in_use(self, key: str) -> int:
        with self._lock:
            entry = self._entries.get(key)
            return 0 if entry is None else entry.refs

    def close(self) -> None:
        with self._lock:
            self._closed = True
            models = [e.model for e in self._entries.values()]
            self._entries.clear()
        self._dispose(models)
