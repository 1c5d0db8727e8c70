"""One connection from a daemon to the model process (`Link`), and the hold an utterance keeps
on one (`Pin`): a send lock, a reader thread handing the answers to the waiting calls by
request id, and the leaving (`wire.Leaving`) of a model process that is stopping. Used by
`client.RemoteEngine`; plain sockets and threads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import socket
import struct
import threading
from typing import Any, Final

import outcome
import trio

from ..base import EngineError, EngineUnavailableError
from . import wire

log = logging.getLogger("duplexd.engines.remote")
SEND_TIMEOUT_S: Final = 30.0  # a model process that reads nothing this long is gone


def _sent(result: outcome.Outcome[None]) -> None:
    """(`send_soon`'s thread, done.) A failed link says so itself (`_send_quietly`); anything
    else that escaped is logged."""
    if isinstance(result, outcome.Error):
        log.error("sending to the model process failed", extra={"why": repr(result.error)})


class ModelGoneError(EngineUnavailableError):
    """The model process cannot be reached or went away (one line: what to do)."""


class NoAnswer(ModelGoneError):
    """The link is up but the model process did not answer a request in time."""


class Link:
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
        at once if the socket can take it whole, else from another thread."""
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
            # (trio's cached thread when one is idle: starting a new one waits for it to run)
            trio.lowlevel.start_thread_soon(functools.partial(self._send_quietly, message), _sent)

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
            raise NoAnswer(
                f"the model process at {self.path} did not answer in {timeout_s:g} s"
            ) from None
        if isinstance(got, Exception):
            raise got
        message: wire.Message = got
        return message


class Pin:
    """The link an utterance's pieces go on: the one its first piece took (`RemoteEngine.speak`),
    held (`Link.pin`) until `release`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.link: Link | None = None
        self.released = False

    def hold(self, link: Link) -> bool:
        """Take `link` (False: it is leaving or closed, or this pin was released)."""
        with self._lock:
            if self.released or not link.pin():
                return False
            self.link = link
            return True

    def drop(self, link: Link) -> None:
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
