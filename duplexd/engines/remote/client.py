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
up to the model process's drain timeout, plus its load) instead of failing.

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
import socket
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, Final

import numpy as np

from ..base import EngineError, EngineUnavailableError, FloatAudio, UnknownVoiceError, WordMark
from . import wire

log = logging.getLogger("duplexd.engines.remote")
REPLY_TIMEOUT_S: Final = 30.0  # a request the model process does not answer this long fails
SEND_TIMEOUT_S: Final = 30.0  # a model process that reads nothing this long is gone
CHECK_TIMEOUT_S: Final = 1.0  # `check_model_process`: connecting, and its answer
RECONNECT_INTERVAL_S: Final = 0.05  # no model process to connect to: try again this often
MODEL_WAIT_S: Final = 60.0  # ... for up to this long (`[engine] model_wait_s`)
# a request lost before any answer is asked once more, of the next link: not again, so a text
# that itself kills the model process (a crash in its native code) takes down two at most
_FIRST_ANSWER_TRIES: Final = 2


class ModelGoneError(EngineUnavailableError):
    """The model process cannot be reached or went away (one line: what to do)."""


class _LinkLost(ModelGoneError):
    """The link failed as a request began on it: nothing of the request was sent."""


class _NoAnswer(ModelGoneError):
    """The link is up but the model process did not answer a request in time."""


class _Link:
    """One connection to the model process: a send lock, a reader thread, the waiting calls."""

    def __init__(
        self, path: str, timeout_s: float, *, connect_timeout_s: float | None = None
    ) -> None:
        self.path = path
        self._timeout_s = timeout_s
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout_s if connect_timeout_s is None else connect_timeout_s)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise ModelGoneError(
                f"no model process at {path} ({exc.strerror or exc}): start `duplexd"
                " serve-model` (deploy/duplexd-model.service) or fix [engine] model_socket"
            ) from None
        self._sock = sock
        self._send_lock = threading.Lock()
        self._waiting: dict[int, queue.SimpleQueue[Any]] = {}
        self._lock = threading.Lock()
        self.alive = True
        self._why = ""  # why the link closed (its errors say it)
        self.leaving = False  # the model process said `wire.Leaving`: no new utterances here
        self._pins = 0  # utterances that keep this link for their pieces (`pin`)
        self._decoder = wire.Decoder()
        self.hello = self._first_hello()
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, wire.timeval(SEND_TIMEOUT_S))
        self._reader = threading.Thread(target=self._read, name="duplexd-model-link", daemon=True)
        self._reader.start()
        if self.leaving:  # (told in its greeting: nothing will hold it)
            self._close_if_done()

    def _first_hello(self) -> dict[str, Any]:
        pending: list[wire.Message] = []
        try:
            while not pending:
                data = self._sock.recv(65536)
                if not data:
                    raise OSError("closed before its hello")
                pending = self._decoder.feed(data)
        except (OSError, wire.WireError) as exc:
            self._sock.close()
            raise ModelGoneError(f"the model process at {self.path} did not greet: {exc}") from None
        first, rest = pending[0], pending[1:]
        if not isinstance(first, wire.Hello) or any(not isinstance(m, wire.Leaving) for m in rest):
            self._sock.close()
            raise ModelGoneError(f"{self.path} is not a duplexd model process")
        self.leaving = bool(rest)  # (greeted and told at once: it was stopping as it accepted)
        return first.info

    def _read(self) -> None:
        why = "closed the connection"
        try:
            while data := self._sock.recv(1 << 18):
                for message in self._decoder.feed(data):
                    if isinstance(message, wire.Leaving):
                        self._leave()
                        continue
                    with self._lock:
                        box = self._waiting.get(getattr(message, "request", -1))
                    if box is not None:  # else: an answer to a stopped request
                        box.put(message)
        except (OSError, wire.WireError) as exc:
            why = str(exc)
        finally:  # whatever ended the reader ends the link: no call waits on a dead one
            self.close(why)
            with self._send_lock:  # (a send under way fails at once: the socket is shut down)
                self._sock.close()  # the reader's to close: nothing uses the descriptor now

    def close(self, why: str = "", *, lost: bool = True, if_idle: bool = False) -> None:
        """Drop the connection (`lost`: it failed, and the log says `why`); every waiting
        call fails with ModelGoneError. `if_idle`: only if it is leaving and nothing holds it
        or waits on it (checked in the same locked step that closes it)."""
        with self._lock:
            if not self.alive:
                return
            if if_idle and not (self.leaving and not self._pins and not self._waiting):
                return
            self.alive = False
            self._why = why or ("it is stopping" if if_idle else "the link was closed")
            waiting = list(self._waiting.values())
            self._waiting.clear()
        if lost:
            log.warning("model process link lost", extra={"socket": self.path, "why": why})
        for box in waiting:
            box.put(self._gone())
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # the reader wakes up, ends, and closes it
        # Closed here only when no reader runs: a recv() or send() that has read the
        # descriptor's number but not yet made its system call would make it on whatever
        # connection (another thread's reconnect) got that number meanwhile. The reader closes
        # it once out of recv(), holding the send lock.
        if not self._reader.is_alive():
            self._sock.close()

    def _leave(self) -> None:
        """The model process is stopping: no new utterance here; closed once idle."""
        with self._lock:
            self.leaving = True
        log.info("model process leaving", extra={"socket": self.path})
        self._close_if_done()

    def _close_if_done(self) -> None:
        """Close a leaving link that no utterance holds and no request waits on (the model
        process exits once its daemons have all closed their links)."""
        self.close(lost=False, if_idle=True)

    def _gone(self) -> ModelGoneError:
        return ModelGoneError(f"the model process at {self.path} went away: {self._why}")

    def pin(self) -> bool:
        """Hold the link for an utterance's pieces (`unpin` when it ends); False if it is
        closed or leaving (take a new one)."""
        with self._lock:
            if not self.alive or self.leaving:
                return False
            self._pins += 1
            return True

    def unpin(self) -> None:
        with self._lock:
            self._pins -= 1
        self._close_if_done()

    def begin(self, request: int) -> queue.SimpleQueue[Any]:
        box: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            if not self.alive:
                raise self._gone()
            self._waiting[request] = box
        return box

    def end(self, request: int) -> None:
        with self._lock:
            self._waiting.pop(request, None)
        if self.leaving:
            self._close_if_done()

    def send(self, message: wire.Message) -> None:
        """Send `message`, blocking (at most SEND_TIMEOUT_S). EngineError if it cannot be
        encoded (a text over the wire's limit); ModelGoneError if the link fails."""
        try:
            data = wire.encode(message)
        except (wire.WireError, struct.error) as exc:
            raise EngineError(f"cannot ask the model process: {exc}") from None
        try:
            with self._send_lock:
                self._sock.sendall(data)
        except OSError as exc:
            self.close(str(exc))  # (no-op if the reader closed it first: its reason stands)
            raise self._gone() from None

    def send_soon(self, message: wire.Message) -> None:
        """Send a small `message` without blocking the caller (a Stop from the event loop):
        at once if the socket can take it whole, else from a short-lived thread."""
        data = wire.encode(message)
        if self._send_lock.acquire(blocking=False):
            try:
                sent = self._sock.send(data, socket.MSG_DONTWAIT)
                if sent == len(data):
                    return
                if sent:  # (a few bytes of a frame: the rest must follow before any other)
                    self._sock.sendall(data[sent:])
                    return
            except BlockingIOError:
                pass
            except OSError:
                return  # the link is failing: the reader will say so
            finally:
                self._send_lock.release()
        with contextlib.suppress(RuntimeError):  # no thread: the model process times it out
            threading.Thread(target=self._send_quietly, args=(message,), daemon=True).start()

    def _send_quietly(self, message: wire.Message) -> None:
        with contextlib.suppress(EngineError):
            self.send(message)

    def receive(
        self, box: queue.SimpleQueue[Any], request: int, timeout_s: float | None = None
    ) -> wire.Message:
        """The answer to `request`. ModelGoneError if the link fails or no answer comes within
        `timeout_s` (default: the reply timeout; then `request` alone fails, the caller stops
        it)."""
        timeout_s = self._timeout_s if timeout_s is None else timeout_s
        try:
            got = box.get(timeout=timeout_s)
        except queue.Empty:
            log.warning(
                "model process did not answer",
                extra={"socket": self.path, "request": request, "timeout_s": timeout_s},
            )
            raise _NoAnswer(
                f"the model process at {self.path} did not answer in {timeout_s:g} s"
            ) from None
        if isinstance(got, Exception):
            raise got
        message: wire.Message = got
        return message


class _Pin:
    """The link an utterance's pieces go on: the one its first piece took (`RemoteEngine.speak`),
    held (`_Link.pin`) until `release`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.link: _Link | None = None
        self.released = False

    def hold(self, link: _Link) -> bool:
        """Take `link` (False: it is leaving or closed, or this pin was released)."""
        with self._lock:
            if self.released or not link.pin():
                return False
            self.link = link
            return True

    def drop(self, link: _Link) -> None:
        """`link` was lost (its model process died): the utterance's next piece goes to the
        next model process."""
        with self._lock:
            if self.link is not link:
                return
            self.link = None
        link.unpin()

    def release(self) -> None:
        with self._lock:
            link, self.link, self.released = self.link, None, True
        if link is not None:
            link.unpin()


class RemoteVoice:
    """A voice of the model process. Blocking calls; thread-safe."""

    def __init__(self, engine: RemoteEngine, info: dict[str, Any], pin: _Pin | None = None) -> None:
        self._engine = engine
        self._info = info
        self._name = str(info["name"])
        self._rate = int(info["sample_rate_hz"])
        self._pin = pin

    def for_utterance(self) -> RemoteVoice:
        """This voice for one utterance: its pieces all go to the model process its first
        piece went to (one that is leaving finishes it). `release` it when the utterance
        ends. Never blocks (it connects, if it must, at the first piece)."""
        return type(self)(self._engine, self._info, _Pin())

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
        self._link: _Link | None = _Link(path, reply_timeout_s)
        self._info = self._link.hello
        self._closed = False

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

    def _link_for_check(self, timeout_s: float) -> _Link:
        with self._link_lock:
            if (link := self._usable()) is not None:
                return link
        fresh = _Link(self.path, self._timeout_s, connect_timeout_s=timeout_s)  # unlocked
        if fresh.leaving:
            fresh.close(lost=False)
            raise ModelGoneError("the model process is stopping")
        return self._take(fresh)

    def _take(self, fresh: _Link) -> _Link:
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

    def _adopt(self, link: _Link) -> None:
        """`link` becomes the link (under `_link_lock`); a model process that changed is told."""
        self._link = link
        if _identity(link.hello) != _identity(self._info):
            log.warning(
                "the model process changed: its engine or voices differ from those"
                " the daemon started with; restart the daemon to take them",
                extra={"socket": self.path},
            )

    def _usable(self) -> _Link | None:
        """The link for new work, if there is one (under `_link_lock`)."""
        if self._closed:
            raise ModelGoneError("the engine is closed")
        link = self._link
        return link if link is not None and link.alive and not link.leaving else None

    def _current(self) -> _Link:
        """The link for new work, connecting again if it failed or its model process is
        leaving (`_connect`: callers wait for it, one connect at a time)."""
        with self._connect_lock:
            with self._link_lock:
                if (link := self._usable()) is not None:
                    return link
            # (no `_link_lock` held while connecting: the readiness check goes on)
            return self._take(self._connect())

    def _connect(self) -> _Link:
        """A new link to a model process that is not leaving, tried again every
        `RECONNECT_INTERVAL_S` for up to `reconnect_wait_s` (a restart: the next model
        process listens once the last one has gone). ModelGoneError if none comes."""
        deadline = time.monotonic() + self._reconnect_wait_s
        while True:
            if self._closed:  # (the daemon is stopping: `close` ends the wait)
                raise ModelGoneError("the engine is closed")
            wait_s = min(self._timeout_s, max(deadline - time.monotonic(), RECONNECT_INTERVAL_S))
            try:
                link = _Link(self.path, self._timeout_s, connect_timeout_s=wait_s)
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

    def _pinned(self, pin: _Pin) -> _Link:
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

    def _begin(self, pin: _Pin | None) -> tuple[_Link, int, queue.SimpleQueue[Any]]:
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
        self, pin: _Pin | None, make: Callable[[int], wire.Message]
    ) -> tuple[_Link, int, queue.SimpleQueue[Any], wire.Message]:
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
            except _NoAnswer:  # the link is up: the request alone fails, stopped there
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
        link, request, _, answer = self._first_answer(None, lambda r: wire.Open(r, name))
        link.end(request)
        if isinstance(answer, wire.VoiceInfo):
            timed = bool(answer.info.get("timed"))
            return (RemoteTimedVoice if timed else RemoteVoice)(self, answer.info)
        raise _failure(answer)

    def speak(
        self, voice: str, text: str, pin: _Pin | None = None
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


def _identity(hello: dict[str, Any]) -> tuple[Any, ...]:
    return hello.get("name"), hello.get("default_voice"), tuple(hello.get("voices", ()))


def _failure(answer: wire.Message) -> EngineError:
    if isinstance(answer, wire.Failed):
        if answer.reason == wire.UNKNOWN_VOICE:
            return UnknownVoiceError(answer.message)
        return EngineError(answer.message)
    return EngineError(f"the model process answered {type(answer).__name__} out of turn")
