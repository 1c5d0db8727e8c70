"""`RemoteEngine`: a daemon's engine whose model runs in a model process (`duplexd serve-model`).

Several daemons (workers, one event loop each) on one GPU host share one model process, so
the GPU's batches are not split N ways and the model is in memory once. To the daemon it is an
engine like any other: `open_voice` and the voices' blocking `synthesize*` calls, made from
worker threads. Each call sends its request on the one connection and waits for its answer;
a reader thread hands the answers to the calls by request id. The calls only wait
(`synthesis_threads = None`), as for the local VITS engine.

A model process that stops gracefully (a SIGTERM: `systemctl restart duplexd-model`) says
`wire.Leaving` and goes on serving this connection: each utterance keeps, for all its pieces,
the connection its first piece went on (`RemoteVoice.for_utterance`, which the daemon's
producer takes), so the utterances in progress finish there, while new ones go on a new
connection; the old one is closed once no utterance holds it and no request waits on it, and
the model process exits when its daemons have all closed theirs. A new connection is tried
again every `RECONNECT_INTERVAL_S` for up to `reconnect_wait_s` (`[engine] model_wait_s`, 60 s):
the next model process comes up only once the last one has gone (systemd's restart), so a new
utterance waits through a restart that fits in that time (the longest utterance in progress,
up to the model process's drain timeout, plus its load) instead of failing; a voice opened
before is handed out at once meanwhile (a new session is welcomed). The connection itself,
and an utterance's hold on one: link.py.

When the model process goes away at once (a crash, its drain time up), a request that had no
answer yet is asked again, once, of the next model process (nothing of it was used; an
utterance whose link was lost goes on with the next one), and one that was part way through
(a piece some of whose chunks came) fails with `ModelGoneError` (an `EngineError`; the daemon
ends the session whose utterance it was, with INTERNAL and what to do: `_server/ending.py`;
the others stay).
A request the model process does not answer within `reply_timeout_s` fails alone, with
`ModelGoneError`, and is stopped there; the connection stays.

Cancellation: the calls block their worker thread (the daemon runs them with
`trio.to_thread.run_sync`, which waits for them), for at most `reply_timeout_s` per chunk, and
`reconnect_wait_s` for a model process to connect to. Closing a piece's iterator early (a
barge-in) never blocks: its `Stop` is sent at once if the socket can take it, else by a
short-lived thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Final

import numpy as np

from ..base import EngineError, FloatAudio, UnknownVoiceError, WordMark
from . import wire
from .link import Link, ModelGoneError, NoAnswer, Pin

log = logging.getLogger("duplexd.engines.remote")
REPLY_TIMEOUT_S: Final = 30.0  # a request the model process does not answer this long fails
CHECK_TIMEOUT_S: Final = 1.0  # `check_model_process`: connecting, and its answer
RECONNECT_INTERVAL_S: Final = 0.05  # no model process to connect to: try again this often
MODEL_WAIT_S: Final = 60.0  # ... for up to this long (`[engine] model_wait_s`)
# a request lost before any answer is asked once more, of the next link: not again, so a text
# that itself kills the model process (a crash in its native code) takes down two at most
_FIRST_ANSWER_TRIES: Final = 2


class _LinkLost(ModelGoneError):
    """The link failed as a request began on it: nothing of the request was sent."""


class RemoteVoice:
    """A voice of the model process. Blocking calls; thread-safe."""

    def __init__(self, engine: RemoteEngine, info: dict[str, Any], pin: Pin | None = None) -> None:
        self._engine = engine
        self._info = info
        self._name = str(info["name"])
        self._rate = int(info["sample_rate_hz"])
        self._pin = pin

    def for_utterance(self) -> RemoteVoice:
        """This voice for one utterance: its pieces all go to the model process its first
        piece went to (one that is leaving finishes it). `release` it when the utterance
        ends. Never blocks (it connects, if it must, at the first piece)."""
        return type(self)(self._engine, self._info, Pin())

    def release(self) -> None:
        """The utterance ended (`for_utterance`): its connection may close. Idempotent."""
        if self._pin is not None:
            self._pin.release()

    @property
    def name(self) -> str:
        return self._name

    @property
    def sample_rate_hz(self) -> int:
        return self._rate

    def synthesize(self, text: str) -> FloatAudio:
        chunks = [audio for audio, _ in self._engine.speak(self._name, text, self._pin)]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def synthesize_stream(self, text: str) -> Iterator[FloatAudio]:
        with contextlib.closing(self._engine.speak(self._name, text, self._pin)) as chunks:
            for audio, _ in chunks:  # (closed early: the request stops in the model process)
                yield audio


class RemoteTimedVoice(RemoteVoice):
    """A `RemoteVoice` whose model-process voice says where each word is spoken."""

    def synthesize_words(self, text: str) -> Iterator[tuple[FloatAudio, tuple[WordMark, ...]]]:
        return self._engine.speak(self._name, text, self._pin)


class RemoteEngine:
    """The engine of the model process listening on the Unix socket `path`. Blocking to make
    (it connects and reads the model process's hello): call from a worker thread or before
    serving. ModelGoneError if no model process answers there."""

    synthesis_threads = None  # the calls only wait; the model process batches them

    def __init__(
        self,
        path: str,
        *,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        reconnect_wait_s: float = MODEL_WAIT_S,
    ) -> None:
        """`reconnect_wait_s`: how long a call waits for a model process to connect to when
        the last one has gone; connecting here, the first time, is tried once."""
        self.path = path
        self._timeout_s = reply_timeout_s
        self._reconnect_wait_s = reconnect_wait_s
        self._ids = itertools.count(1)
        self._link_lock = threading.Lock()
        self._connect_lock = threading.Lock()  # one connect at a time (`_current`)
        self._link: Link | None = Link(path, reply_timeout_s)
        self._info = self._link.hello
        self._closed = False
        self._opened: dict[str, dict[str, Any]] = {}  # voice name -> its VoiceInfo, once opened

    @property
    def name(self) -> str:
        return str(self._info["name"])

    @property
    def device(self) -> str:
        return str(self._info["device"])

    @property
    def default_voice(self) -> str:
        return str(self._info["default_voice"])

    def voices(self) -> list[str]:
        return [str(v) for v in self._info["voices"]]

    def check_model_process(self, timeout_s: float = CHECK_TIMEOUT_S) -> bool:
        """Whether the model process answers within `timeout_s`: a voice opened (its default,
        a cached handle there) on the link, connecting again first if the link failed (so
        after a restart the daemon is connected before a session asks). Blocking, at most
        about twice `timeout_s`; it holds no lock the synthesis calls need while it waits."""
        try:
            link = self._link_for_check(timeout_s)
            request = self._request()
            box = link.begin(request)
            try:
                link.send(wire.Open(request, self.default_voice))
                return isinstance(link.receive(box, request, timeout_s), wire.VoiceInfo)
            finally:
                link.end(request)
        except EngineError:
            return False

    def _link_for_check(self, timeout_s: float) -> Link:
        with self._link_lock:
            if (link := self._usable()) is not None:
                return link
        fresh = Link(self.path, self._timeout_s, connect_timeout_s=timeout_s)  # unlocked
        if fresh.leaving:
            fresh.close(lost=False)
            raise ModelGoneError("the model process is stopping")
        return self._take(fresh)

    def _take(self, fresh: Link) -> Link:
        """`fresh` becomes the link for new work, unless another thread connected one
        meanwhile (then `fresh` is closed and that one returned). A link it replaces that is
        leaving closes itself once its utterances end."""
        with self._link_lock:
            try:
                link = self._usable()
            except ModelGoneError:
                fresh.close(lost=False)
                raise
            if link is not None:
                fresh.close(lost=False)
                return link
            self._adopt(fresh)
            return fresh

    def _adopt(self, link: Link) -> None:
        """`link` becomes the link (under `_link_lock`); a model process that changed is told,
        and the voices opened before are forgotten (asked of it again)."""
        last, self._link = self._link, link
        if last is not None and _identity(link.hello) != _identity(last.hello):
            self._opened.clear()
        if _identity(link.hello) != _identity(self._info):
            log.warning(
                "the model process changed: its engine or voices differ from those"
                " the daemon started with; restart the daemon to take them",
                extra={"socket": self.path},
            )

    def _usable(self) -> Link | None:
        """The link for new work, if there is one (under `_link_lock`)."""
        if self._closed:
            raise ModelGoneError("the engine is closed")
        link = self._link
        return link if link is not None and link.alive and not link.leaving else None

    def _current(self) -> Link:
        """The link for new work, connecting again if it failed or its model process is
        leaving (`_connect`: callers wait for it, one connect at a time)."""
        with self._connect_lock:
            with self._link_lock:
                if (link := self._usable()) is not None:
                    return link
            # (no `_link_lock` held while connecting: the readiness check goes on)
            return self._take(self._connect())

    def _connect(self) -> Link:
        """A new link to a model process that is not leaving, tried again every
        `RECONNECT_INTERVAL_S` for up to `reconnect_wait_s` (a restart: the next model
        process listens once the last one has gone). ModelGoneError if none comes."""
        deadline = time.monotonic() + self._reconnect_wait_s
        while True:
            if self._closed:  # (the daemon is stopping: `close` ends the wait)
                raise ModelGoneError("the engine is closed")
            wait_s = min(self._timeout_s, max(deadline - time.monotonic(), RECONNECT_INTERVAL_S))
            try:
                link = Link(self.path, self._timeout_s, connect_timeout_s=wait_s)
            except ModelGoneError:
                if time.monotonic() >= deadline:
                    raise
            else:
                if not link.leaving:
                    return link
                link.close(lost=False)
                if time.monotonic() >= deadline:
                    raise ModelGoneError(
                        f"the model process at {self.path} is stopping and no other came up"
                        f" in {self._reconnect_wait_s:g} s"
                    )
            time.sleep(RECONNECT_INTERVAL_S)

    def _pinned(self, pin: Pin) -> Link:
        """The link of the utterance `pin` is for: the one its first piece took (or, if that
        one was lost, the next)."""
        while True:
            link = pin.link
            if link is not None and link.alive:
                return link
            if link is not None:
                pin.drop(link)
            link = self._current()
            if pin.released or pin.hold(link):
                return link  # (released: the utterance is over, a late call goes unpinned)

    def _request(self) -> int:
        while not (request := next(self._ids) & 0xFFFFFFFF):
            pass  # (0 is the hello's)
        return request

    def _begin(self, pin: Pin | None) -> tuple[Link, int, queue.SimpleQueue[Any]]:
        """A request begun on the link for it (`pin`'s utterance's, or the current one). A
        link told `Leaving` between `_current` and `begin` may have closed, idle: then on the
        next one. `_LinkLost` if the link failed meanwhile."""
        while True:
            link = self._pinned(pin) if pin is not None else self._current()
            request = self._request()
            try:
                return link, request, link.begin(request)
            except ModelGoneError as exc:
                if not link.leaving:
                    raise _LinkLost(str(exc)) from None

    def _first_answer(
        self, pin: Pin | None, make: Callable[[int], wire.Message]
    ) -> tuple[Link, int, queue.SimpleQueue[Any], wire.Message]:
        """Begin the request `make(request)` and wait for its first answer. One whose link is
        lost before any answer came (its model process died, or the link closed as it began)
        is asked again, once, of the next model process (`_current` waits for it): nothing of
        it has been used. One not answered in time (the link alive) fails. The caller `end`s
        it."""
        for attempt in range(1, _FIRST_ANSWER_TRIES + 1):
            try:
                link, request, box = self._begin(pin)
            except _LinkLost:  # (failed as it began: this counts as an attempt too)
                if attempt == _FIRST_ANSWER_TRIES:
                    raise
                continue
            try:
                link.send(make(request))
                return link, request, box, link.receive(box, request)
            except NoAnswer:  # the link is up: the request alone fails, stopped there
                link.send_soon(wire.Stop(request))
                link.end(request)  # (a leaving link may close here)
                raise
            except ModelGoneError:  # the link was lost (or the engine closed)
                link.end(request)
                if attempt == _FIRST_ANSWER_TRIES:
                    raise
                log.info("model request asked again", extra={"socket": self.path})
            except BaseException:  # (a text the wire cannot take: no request is left waiting)
                link.end(request)
                raise
        raise AssertionError("unreachable")

    def open_voice(self, name: str) -> RemoteVoice:
        """The voice `name`, opened in the model process (its answer: the voice's rate, and
        whether it times words). While no model process is connected (a restart), a voice
        opened before is handed out as it was at once (a new session is welcomed; its first
        piece waits for the next model process, as every new piece does); a voice never
        opened waits for one (up to `reconnect_wait_s`)."""
        with self._link_lock:
            known = self._opened.get(name) if self._usable() is None else None
        if known is not None:
            return _voice(self, known)
        link, request, _, answer = self._first_answer(None, lambda r: wire.Open(r, name))
        link.end(request)
        if isinstance(answer, wire.VoiceInfo):
            with self._link_lock:
                self._opened[name] = answer.info
            return _voice(self, answer.info)
        with self._link_lock:
            self._opened.pop(name, None)  # (a voice the model process no longer has)
        raise _failure(answer)

    def speak(
        self, voice: str, text: str, pin: Pin | None = None
    ) -> Generator[tuple[FloatAudio, tuple[WordMark, ...]]]:
        """`text` in `voice`, chunk by chunk as the model process makes them, each with its
        word marks; on the link of `pin`'s utterance if given. Blocking per chunk (at most the
        reply timeout: ModelGoneError). Closing the iterator early stops the request there,
        without blocking."""
        link, request, box, answer = self._first_answer(pin, lambda r: wire.Speak(r, voice, text))
        finished = False
        try:
            while True:
                if isinstance(answer, wire.Done):
                    finished = True
                    return
                if not isinstance(answer, wire.Chunk):
                    finished = True
                    raise _failure(answer)
                yield answer.audio, answer.marks
                link.send(wire.Next(request))
                answer = link.receive(box, request)
        finally:
            link.end(request)
            if not finished and link.alive:
                link.send_soon(wire.Stop(request))

    def close(self) -> None:
        """Close the link; calls waiting on it, or waiting for a model process to connect to,
        fail with ModelGoneError (within `RECONNECT_INTERVAL_S`). Idempotent."""
        with self._link_lock:
            self._closed = True
            link, self._link = self._link, None
        if link is not None:
            link.close("the engine was closed", lost=False)


def _voice(engine: RemoteEngine, info: dict[str, Any]) -> RemoteVoice:
    return (RemoteTimedVoice if info.get("timed") else RemoteVoice)(engine, info)


def _identity(hello: dict[str, Any]) -> tuple[Any, ...]:
    return hello.get("name"), hello.get("default_voice"), tuple(hello.get("voices", ()))


def _failure(answer: wire.Message) -> EngineError:
    if isinstance(answer, wire.Failed):
        if answer.reason == wire.UNKNOWN_VOICE:
            return UnknownVoiceError(answer.message)
        return EngineError(answer.message)
    return EngineError(f"the model process answered {type(answer).__name__} out of turn")
