"""`serve_model`: one engine (one model in memory, one GPU's batches) serving several daemons.

Each daemon holds one connection (`RemoteEngine`), read by a thread of its own; each request
on it runs in a thread of its own (one of trio's cached idle threads when there is one) that
calls the engine as the daemon itself would, chunk by chunk, so the engine batches the chunks
of every daemon's sessions together. A request is
pulled: its next chunk is made only when the daemon asks (`wire.Next`), so a barge-in in a
daemon (`wire.Stop`) wastes at most the chunk under way. A chunk goes from the engine to the
socket in the thread that made it: no hand-off to an event loop and back (with one, a chunk
cost the model process about twice the CPU: `python -m bench.model_wire`, bench/results).

Bounds: at most `MAX_REQUESTS` requests under way per connection (more, or one no thread
can be had for, are answered `Failed(OVERLOADED)`); an engine that takes turns
(`synthesis_threads = N`) has at most N calls at once, one that only waits (`None`, VITS) has
them all; a request not pulled for `IDLE_TIMEOUT_S` is stopped (and answered `Failed`); a
send that waits `SEND_TIMEOUT_S` for a daemon that does not read drops its connection; a
frame that cannot be read, or a request id used twice, drops its connection only.

Stopping gracefully (`ModelServer.leave`, on SIGTERM): no more connections are accepted, and
each daemon is told `wire.Leaving`; a connection is still served (the requests under way, the
next pieces of the utterances its daemon began on it) until its daemon closes it, so the
utterances in progress finish while the daemons ask the next model process for new ones.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final

import outcome
import trio

from ..base import Engine, FloatAudio, UnknownVoiceError, Voice, voice_kind
from . import wire

log = logging.getLogger("duplexd.model")
MAX_REQUESTS: Final = 4096  # per connection: a daemon's sessions' utterances under way
# a request whose daemon neither pulls nor stops it this long is stopped (a paused session's
# utterance waits; a daemon that lost track of it does not hold its thread and model forever)
IDLE_TIMEOUT_S: Final = 600.0
SEND_TIMEOUT_S: Final = 30.0  # a daemon that reads nothing this long is dropped
_END: Final = object()
_NEXT, _STOP = "next", "stop"
# accept() failing for want of a resource: wait and try again (as trio.serve_listeners does)
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_RETRY_S: Final = 0.1


def engine_hello(engine: Engine) -> wire.Hello:
    return wire.Hello(
        {
            "name": engine.name,
            "device": engine.device,
            "default_voice": engine.default_voice,
            "voices": engine.voices(),
        }
    )


class _Failed(Exception):
    """An engine call raised: the request fails with `reason` and the message."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _whole(voice: Voice, text: str) -> Iterator[FloatAudio]:
    yield voice.synthesize(text)  # a voice that does not stream: one chunk, made when pulled


def _chunks(voice: Voice, text: str) -> tuple[Iterator[Any], bool]:
    """The voice's iterator of chunks for `text`, and whether they come with word marks."""
    kind = voice_kind(voice)
    if kind.timed:
        return voice.synthesize_words(text), True  # type: ignore[attr-defined]
    if kind.streaming:
        return voice.synthesize_stream(text), False  # type: ignore[attr-defined]
    return _whole(voice, text), False


@dataclass
class ModelStats:
    """What a model process has done (its /metrics): totals since it started, and now."""

    connections: int = 0  # daemons connected now
    requests_active: int = 0  # pieces being made or waiting for their next pull, now
    requests: int = 0  # pieces asked for (and voices opened)
    chunks: int = 0  # chunks sent
    audio_s: float = 0.0  # seconds of audio in them
    engine_s: float = 0.0  # seconds spent in engine calls (summed over the threads)
    failures: dict[int, int] = field(default_factory=dict)  # by `wire` reason


class ModelServer:
    """The engine's side of every connection: its voices, its turns, the open connections."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._stats = ModelStats()
        self._stats_lock = threading.Lock()
        self.hello = wire.encode(engine_hello(engine))
        turns = getattr(engine, "synthesis_threads", os.cpu_count() or 1)
        self._turns = threading.BoundedSemaphore(turns) if turns is not None else None
        self._voices: dict[str, Voice] = {}  # a handle per name; the engine loads and unloads
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._closed = False
        self.leaving = False  # `leave` was called: each connection is told so
        self.stop_accepting: Callable[[], None] = lambda: None  # (set by `serve_model`)
        self._all_gone = trio.Event()  # leaving, and no connection is left
        self._trio_token: trio.lowlevel.TrioToken | None = None  # (`leave`'s)

    def stats(self) -> ModelStats:
        """A copy of the totals, with the connections and requests of now."""
        with self._lock:
            connections = list(self._connections)
        with self._stats_lock:
            s = replace(self._stats, failures=dict(self._stats.failures))
        s.connections = len(connections)
        s.requests_active = sum(len(c.requests) for c in connections)
        return s

    def count(
        self, *, requests: int = 0, chunks: int = 0, audio_s: float = 0.0, failure: int = -1
    ) -> None:
        with self._stats_lock:
            st = self._stats
            st.requests += requests
            st.chunks += chunks
            st.audio_s += audio_s
            if failure >= 0:
                st.failures[failure] = st.failures.get(failure, 0) + 1

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the engine's turn; an exception of the engine becomes `_Failed`."""
        started = 0.0
        try:
            if self._turns is None:
                started = time.perf_counter()
                return fn(*args)
            with self._turns:
                started = time.perf_counter()  # (the wait for a turn is not the engine's)
                return fn(*args)
        except UnknownVoiceError as exc:
            raise _Failed(wire.UNKNOWN_VOICE, str(exc)) from None
        except Exception as exc:  # the engine's own failure (EngineError, or worse)
            log.warning("synthesis failed", extra={"why": repr(exc)})
            raise _Failed(wire.ENGINE_ERROR, f"synthesis failed: {exc}") from None
        finally:
            if started:
                elapsed = time.perf_counter() - started
                with self._stats_lock:
                    self._stats.engine_s += elapsed

    def voice(self, name: str) -> Voice:
        with self._lock:
            voice = self._voices.get(name)
        if voice is None:
            voice = self.call(self.engine.open_voice, name)
            with self._lock:
                self._voices[name] = voice
        return voice

    def start(self, sock: socket.socket) -> None:
        """Serve the daemon connected on `sock` (blocking mode) from a thread of its own."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, wire.timeval(SEND_TIMEOUT_S))
        connection = _Connection(self, sock)
        with self._lock:
            if self._closed:
                sock.close()
                return
            self._connections.add(connection)
        try:
            threading.Thread(target=connection.run, name="duplexd-model-conn", daemon=True).start()
        except RuntimeError as exc:  # no thread to be had: this daemon connects again later
            log.warning("model client refused", extra={"why": str(exc)})
            self.forget(connection)
            connection.close()

    def forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
            gone = self.leaving and not self._connections
        if gone and self._trio_token is not None:  # (any thread: a connection's own)
            with contextlib.suppress(trio.RunFinishedError):
                self._trio_token.run_sync_soon(self._all_gone.set)

    def leave(self) -> None:
        """Stop gracefully: accept no more connections and tell every daemon (`wire.Leaving`);
        each connection is served until its daemon closes it (`all_gone`). Trio thread; never
        blocks (a daemon that reads nothing is told by a thread)."""
        self._trio_token = trio.lowlevel.current_trio_token()
        self.stop_accepting()
        with self._lock:
            self.leaving = True
            connections = list(self._connections)
        if not connections:
            self._all_gone.set()
        for connection in connections:
            connection.leave()

    async def all_gone(self) -> None:
        """Wait, once leaving, until every daemon has closed its connection. Cancellation
        leaves nothing behind."""
        await self._all_gone.wait()

    @property
    def connected(self) -> int:
        """Daemons connected now."""
        with self._lock:
            return len(self._connections)

    def close(self) -> None:
        """Drop every connection: their requests stop after the chunk under way."""
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        for connection in connections:
            connection.close()


def _served(result: outcome.Outcome[None]) -> None:
    """(A request's thread, as it ends.) `_Connection._serve` answers its own failures; what
    escapes it (a BaseException) is only logged: the thread goes back to the cache."""
    if isinstance(result, outcome.Error):
        log.error("model request thread failed", extra={"why": repr(result.error)})


class _Connection:
    """One daemon's connection: a reader (`run`), a thread per request (reused: trio's thread
    cache), one send lock."""

    def __init__(self, server: ModelServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.requests: dict[int, queue.SimpleQueue[str]] = {}
        self.closed = False
        self.reading = False  # `run` has the socket: it closes it (see `close`)
        self._greeted = False  # the Hello is sent: a `Leaving` may follow it
        self._leaving = False  # the daemon is (or is to be, once greeted) told `Leaving`

    def send(self, message: wire.Message | bytes) -> bool:
        """Send `message` (encoded here: WireError if it cannot be). False if the daemon is
        gone: the connection is closed."""
        data = message if isinstance(message, bytes) else wire.encode(message)
        try:
            with self.send_lock:
                self.sock.sendall(data)
        except OSError:
            self.close()
            return False
        return True

    def run(self) -> None:
        """Read the daemon's requests until it closes, breaks the connection or sends a frame
        that cannot be read; then every request of it stops after its chunk under way."""
        decoder = wire.Decoder()
        self.reading = True
        try:
            if self.send(self.server.hello):
                with self.lock:
                    self._greeted = True
                    leaving = self._leaving or self.server.leaving
                    self._leaving = leaving
                if leaving:  # (`leave` came before the Hello went: said here, after it)
                    self.send(wire.Leaving())
                while data := self.sock.recv(1 << 16):
                    for message in decoder.feed(data):
                        self._dispatch(message)
        except wire.WireError as exc:
            log.warning("model client dropped", extra={"why": str(exc)})
        except OSError:
            pass
        finally:
            self.close()
            with self.send_lock:  # (no send under way: it would fail at once, shut down)
                self.sock.close()
            self.server.forget(self)

    def leave(self) -> None:
        """Tell the daemon `wire.Leaving` (once, after the Hello), from a short-lived thread:
        a daemon that reads nothing must not hold the caller."""
        with self.lock:
            if self._leaving:
                return
            self._leaving = True
            if not self._greeted:
                return  # `run` says it right after the Hello
        with contextlib.suppress(RuntimeError):  # no thread: the drain time ends it
            threading.Thread(target=self.send, args=(wire.Leaving(),), daemon=True).start()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            boxes = list(self.requests.values())
        for box in boxes:
            box.put(_STOP)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # the reader's recv returns; sends fail
        if not self.reading:  # else the reader closes it once out of recv(), under the send
            self.sock.close()  # lock (a number closed under a call could be the next link's)

    def _dispatch(self, message: wire.Message) -> None:
        if isinstance(message, (wire.Next, wire.Stop)):
            with self.lock:
                waiting = self.requests.get(message.request)
            if waiting is not None:  # else: ended already (its Done crossed this on the wire)
                waiting.put(_NEXT if isinstance(message, wire.Next) else _STOP)
            return
        if not isinstance(message, (wire.Open, wire.Speak)):
            self.server.count(failure=wire.BAD_REQUEST)
            request = getattr(message, "request", 0)
            self.send(wire.Failed(request, wire.BAD_REQUEST, "not a request"))
            return
        self.server.count(requests=1)
        box: queue.SimpleQueue[str] = queue.SimpleQueue()
        with self.lock:
            taken = message.request in self.requests
            full = len(self.requests) >= MAX_REQUESTS
            if not (taken or full or self.closed):
                self.requests[message.request] = box
        if taken:  # the daemon lost track of its own requests: not this connection's to fix
            raise wire.WireError(f"request id {message.request} is in use")
        if full:
            self.server.count(failure=wire.OVERLOADED)
            self.send(wire.Failed(message.request, wire.OVERLOADED, "too many requests"))
            return
        if self.closed:
            return
        try:  # (an idle thread of trio's cache if there is one: starting a thread waits
            # for it to run, and under load that held this reader, every request's pulls
            # behind it, for a GIL switch interval: 15-18 % of its time on the H200)
            trio.lowlevel.start_thread_soon(
                functools.partial(self._serve, message, box),
                _served,
                name="duplexd-model-request",
            )
        except RuntimeError as exc:  # no thread to be had
            with self.lock:
                self.requests.pop(message.request, None)
            self.server.count(failure=wire.OVERLOADED)
            self.send(wire.Failed(message.request, wire.OVERLOADED, f"no thread for it: {exc}"))

    def _pulled(self, box: queue.SimpleQueue[str]) -> str:
        """The daemon's word on the chunk just sent: `_NEXT` or `_STOP`; `_Failed` if it said
        nothing for `IDLE_TIMEOUT_S`."""
        try:
            return box.get(timeout=IDLE_TIMEOUT_S)
        except queue.Empty:
            raise _Failed(
                wire.ENGINE_ERROR, f"not pulled for {IDLE_TIMEOUT_S:g} s: stopped"
            ) from None

    def _serve(self, message: wire.Open | wire.Speak, box: queue.SimpleQueue[str]) -> None:
        chunks: Iterator[Any] | None = None
        try:
            voice = self.server.voice(message.voice)
            if isinstance(message, wire.Open):
                info = {"name": voice.name, "sample_rate_hz": voice.sample_rate_hz}
                self.send(
                    wire.VoiceInfo(message.request, {**info, "timed": voice_kind(voice).timed})
                )
                return
            chunks, timed = self.server.call(_chunks, voice, message.text)
            while (chunk := self.server.call(next, chunks, _END)) is not _END:
                audio, marks = chunk if timed else (chunk, ())
                try:
                    data = wire.encode(wire.Chunk(message.request, audio, tuple(marks)))
                except (wire.WireError, ValueError, TypeError, OverflowError) as exc:
                    raise _Failed(wire.ENGINE_ERROR, f"the engine's chunk: {exc}") from None
                if not self.send(data):
                    return
                self.server.count(chunks=1, audio_s=len(audio) / voice.sample_rate_hz)
                if self._pulled(box) == _STOP:
                    return
            self.send(wire.Done(message.request))
        except _Failed as exc:
            self.server.count(failure=exc.reason)
            self.send(wire.Failed(message.request, exc.reason, str(exc)))
        except Exception as exc:  # a bug of ours: the request fails, the connection stays
            log.exception("model request failed")
            self.server.count(failure=wire.ENGINE_ERROR)
            self.send(wire.Failed(message.request, wire.ENGINE_ERROR, f"model process: {exc}"))
        finally:
            with self.lock:
                self.requests.pop(message.request, None)
            close = getattr(chunks, "close", None)
            if close is not None:  # release what the engine holds for it
                with contextlib.suppress(Exception):
                    close()


async def serve_model(
    engine: Engine,
    listeners: list[socket.socket],
    *,
    task_status: trio.TaskStatus[ModelServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `engine` to daemons on `listeners` (listening Unix stream sockets, taken over)
    until cancelled. Cancelling drops every connection: the daemons' requests under way fail
    and they connect again to the next model process. It returns at once: a request thread
    still inside an engine call finishes that chunk, unsent, after it has returned (so close
    the engine only when the process is about to end)."""
    server = ModelServer(engine)
    accepting = trio.CancelScope()
    server.stop_accepting = accepting.cancel
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_accept_all, server, listeners, accepting)
            task_status.started(server)  # (its `stats()`: the model process's /metrics)
            await trio.sleep_forever()  # (`leave` stops the accepting, not the serving)
    finally:
        server.close()


async def _accept_all(
    server: ModelServer, listeners: list[socket.socket], scope: trio.CancelScope
) -> None:
    with scope:  # (cancelled by `leave`: the listeners stay open; what they queue waits)
        async with trio.open_nursery() as nursery:
            for sock in listeners:
                nursery.start_soon(_accept, server, trio.socket.from_stdlib_socket(sock))


async def _accept(server: ModelServer, listener: trio.socket.SocketType) -> None:
    while True:
        try:
            conn, _ = await listener.accept()
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            log.warning("accept failed; retrying", extra={"why": os.strerror(exc.errno)})
            await trio.sleep(_ACCEPT_RETRY_S)
            continue
        sock = socket.socket(fileno=conn.detach())
        sock.setblocking(True)
        server.start(sock)
