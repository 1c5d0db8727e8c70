"""Resumable sessions: a session outlives a dropped connection (protocol/SPEC.md §6.4).

An open session talks through a `Resumable` transport, which holds the WebSocket of the moment
and a replay log of the messages sent since Welcome (the last `buffer_s` of audio's worth).
When the connection drops without a close from the client, the session does not end: it is
*detached*. Its utterances go on on their pacing grid, their messages go to the log only (the
oldest fall out once it is full, and are remembered as lost), the reader waits. Within
`window_s` the client may reconnect with a Hello whose options say `resume` (session id, the
resume token from the first Welcome, how many messages it received); the new connection is
*attached*: a Welcome reporting what is replayed and what was lost, the messages after the
client's count, then the live ones. Past the window the session ends as if closed.

Everything here runs on the trio thread; a message is logged by reference (no copy).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Any, Final

import trio
from trio_websocket import ConnectionClosed

from .._downlink.contract import NOT_SENT, SENT
from ..protocol import frames as fr
from ..protocol.codec import RemoteProtocolError, encode, iter_frames
from ..protocol.transport import Transport
from .direct import DirectSend

# a client's close that ends the session for good (1001: a browser's page going away)
CLOSED_BY_CLIENT: Final = (fr.CloseCode.NORMAL, fr.CloseCode.GOING_AWAY)
LOST_DETAIL_MESSAGES: Final = 4096  # messages whose content is remembered once they fall out


@dataclass
class LostAudio:
    """A run of audio frames of one utterance that fell out of the log before the client got
    them: frames `first_seq`..`last_seq` of utterance `utterance_id` in `epoch`."""

    epoch: int
    utterance_id: int
    first_seq: int
    last_seq: int


@dataclass
class Lost:
    """What fell out of the replay log: messages (their index since Welcome), and of those
    the ones still remembered in detail."""

    index: collections.deque[tuple[int, dict[str, int], list[tuple[int, int, int]]]] = field(
        default_factory=lambda: collections.deque(maxlen=LOST_DETAIL_MESSAGES)
    )

    def note(self, index: int, message: bytes) -> None:
        counts: dict[str, int] = {}
        audio: list[tuple[int, int, int]] = []
        try:
            for raw in iter_frames(message):
                name = _type_name(raw.type)
                counts[name] = counts.get(name, 0) + 1
                if raw.type == fr.FrameType.AUDIO and len(raw.data) >= fr.AUDIO_HEADER_BYTES:
                    body = raw.body
                    epoch = int.from_bytes(body[0:2], "little")
                    uid = int.from_bytes(body[2:6], "little")
                    seq = int.from_bytes(body[6:10], "little")
                    audio.append((epoch, uid, seq))
        except RemoteProtocolError:  # (our own messages are whole)
            counts["undecodable"] = 1
        self.index.append((index, counts, audio))

    def report(self, start: int, end: int) -> dict[str, Any]:
        """What the client missed of messages [start, end) (its count, the log's start)."""
        if end <= start:
            return {"messages": 0}
        frames: dict[str, int] = {}
        runs: list[LostAudio] = []
        known = 0
        for index, counts, audio in self.index:
            if not start <= index < end:
                continue
            known += 1
            for name, n in counts.items():
                frames[name] = frames.get(name, 0) + n
            for epoch, uid, seq in audio:
                last = runs[-1] if runs else None
                if last and (last.epoch, last.utterance_id, last.last_seq + 1) == (epoch, uid, seq):
                    last.last_seq = seq
                else:
                    runs.append(LostAudio(epoch, uid, seq, seq))
        report: dict[str, Any] = {
            "messages": end - start,
            "frames": frames,
            "audio": [vars(r) for r in runs],
        }
        if known < end - start:
            report["unknown_messages"] = end - start - known  # older than the detail kept
        return report


def _type_name(type_: int) -> str:
    try:
        return fr.FrameType(type_).name
    except ValueError:
        return f"0x{type_:02x}"


def closed_by_client(exc: ConnectionClosed) -> bool:
    """Whether the connection ended with the client's close for good (`CLOSED_BY_CLIENT`)."""
    return exc.reason is not None and exc.reason.code in CLOSED_BY_CLIENT


class ResumeFailed(Exception):
    """The session cannot be resumed: gone, or not this client's (the reason says which)."""


class Resumable:
    """A session's transport across connections (see the module doc). `send_message` never
    raises for a dropped connection: it detaches. `get_message` waits, while detached, for
    the next connection, and raises `trio.ClosedResourceError` when the window has passed.
    """

    def __init__(
        self,
        ws: Transport,
        *,
        session_id: bytes,
        subject: str,
        window_s: float,
        buffer_bytes: int,
    ) -> None:
        self.session_id = session_id
        self.subject = subject
        self.token = os.urandom(32).hex()
        self.window_s = window_s
        self.buffer_bytes = buffer_bytes
        self.resumes = 0
        self._ws: Transport | None = ws
        self._log: collections.deque[bytes] = collections.deque()
        self._log_bytes = 0
        self._sent = 0  # messages sent (or logged) since Welcome
        self._log_start = 0  # index of the oldest message still in the log
        self._lost = Lost()
        self._attached = trio.Event()
        self._attached.set()
        self._released = trio.Event()  # set when the current connection is given up
        self._detached_at = 0.0
        self._over = False
        self._direct: DirectSend | None = None  # how messages go out on `_direct_ws`
        self._direct_ws: Transport | None = None
        self._send_failed_on: Transport | None = None  # the connection a send gave up

    @property
    def attached(self) -> bool:
        return self._ws is not None

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def subprotocol(self) -> str | None:
        return getattr(self._ws, "subprotocol", None)

    def info(self) -> dict[str, Any]:
        """What the first Welcome tells the client (`info.resume`)."""
        return {"token": self.token, "window_s": self.window_s, "buffer_bytes": self.buffer_bytes}

    # ------------------------------------------------------------------ the Transport

    async def send_message(self, message: str | bytes) -> None:
        data = message.encode() if isinstance(message, str) else message
        self._log_message(data)
        ws = self._ws
        if ws is None:
            return
        try:
            if self._direct_ws is not ws:  # (a new connection: resumed)
                self._direct, self._direct_ws = DirectSend.of(ws), ws
            direct = self._direct
            if direct is not None and not isinstance(message, str):
                await direct.send(message)  # the writer's hot path: one writev (direct.py)
            else:
                await ws.send_message(message)
        except ConnectionClosed as exc:
            # the client's own close: the reader raises it too and the session ends. Detaching
            # here, when the writer noticed first, held the session for a resume the client
            # had declined (`window_s`, 30 s by default: a drain waited that long)
            if not closed_by_client(exc):
                self._detach(ws)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._detach(ws)
            self._send_failed_on = ws  # (a client that closed and reset at once: see below)

    def send_now(self, data: bytes) -> int:
        """`send_message` of a binary message without waiting (`DirectSend.send_now`), from
        the pacer's tick: logged and SENT while detached; NOT_SENT (nothing logged) when the
        connection of the moment cannot take it at once or is not a plain one."""
        ws = self._ws
        if ws is None:
            self._log_message(data)
            return SENT
        if self._direct_ws is not ws:  # (a new connection: resumed)
            self._direct, self._direct_ws = DirectSend.of(ws), ws
        direct = self._direct
        if direct is None:
            return NOT_SENT
        result = direct.send_now(data)
        if result != NOT_SENT:
            self._log_message(data)
        return result

    async def flush(self) -> None:
        """Send what `send_now` left of a message (`DirectSend.flush`). A connection that
        fails meanwhile is given up at the next send, which fails the same way; cancellation
        leaves that connection unusable, as a cut send does."""
        ws, direct = self._ws, self._direct
        if ws is not None and direct is not None and self._direct_ws is ws:
            await direct.flush()

    async def get_message(self) -> str | bytes:
        while True:
            ws = self._ws
            if ws is None:
                await self._wait_attached()
                continue
            try:
                return await ws.get_message()
            except ConnectionClosed as exc:
                # the client's own close ends the session, also when a send to the same
                # connection failed first (the client sent its close and reset the socket)
                current = self._ws is ws or (self._ws is None and self._send_failed_on is ws)
                if current and closed_by_client(exc):
                    raise
                if self._ws is not ws:  # given up already (dropped, or resumed elsewhere)
                    continue
                self._detach(ws)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Close the connection of the moment (the session is over)."""
        ws, self._ws = self._ws, None
        self.end()
        if ws is not None:
            await ws.aclose(code, reason)

    def end(self) -> None:
        """The session is over: it cannot be resumed, and the connection of the moment is
        released (its handler returns, and the WebSocket library closes it)."""
        self._over = True
        self._released.set()

    # ------------------------------------------------------------------ detach / attach

    def _log_message(self, data: bytes) -> None:
        log = self._log
        log.append(data)
        self._log_bytes += len(data)
        self._sent += 1
        while self._log_bytes > self.buffer_bytes and len(log) > 1:
            old = log.popleft()
            self._log_bytes -= len(old)
            if self._ws is None:  # detached: the client cannot have it
                self._lost.note(self._log_start, old)
            self._log_start += 1

    def drop(self) -> None:
        """Give the current connection up (it stopped reading: as good as gone) and wait for
        another; it is closed in the background."""
        ws = self._ws
        if ws is None:
            return
        self._detach(ws)

        async def close() -> None:
            with trio.move_on_after(1), contextlib.suppress(Exception):
                await ws.aclose(fr.CloseCode.GOING_AWAY, "not reading: resume to continue")

        trio.lowlevel.spawn_system_task(close)

    def _detach(self, ws: Transport) -> None:
        if self._ws is ws:
            self._ws = None
            self._attached = trio.Event()
            self._detached_at = trio.current_time()
            self._released.set()

    async def _wait_attached(self) -> None:
        if self._over:
            raise trio.ClosedResourceError("the session is over")
        with trio.move_on_at(self._detached_at + self.window_s):
            await self._attached.wait()
            return
        self._over = True
        raise trio.ClosedResourceError(f"not resumed within {self.window_s:g} s")

    def check(self, token: str, subject: str) -> None:
        """Whether this client may resume: the token (constant time), the same subject, and
        not over. Raises ResumeFailed."""
        if self._over:
            raise ResumeFailed("the session is over")
        if not hmac.compare_digest(token.encode(), self.token.encode()) or subject != self.subject:
            raise ResumeFailed("wrong resume token for this session")

    async def attach(self, ws: Transport, received: int, welcome: fr.Welcome) -> trio.Event:
        """Take over `ws`: send `welcome` (its info says what was lost), the messages after the
        client's `received`, then go live. Returns an event set when `ws` is given up again
        (dropped, or the session over). Raises ResumeFailed for an impossible count, or if the
        session ended while the Welcome and the replay were being sent.
        Cancellation leaves the session detached (or on its old connection)."""
        if received > self._sent:
            raise ResumeFailed(f"received {received} messages, but {self._sent} were sent")
        old = self._ws
        if old is not None:  # the old connection is not dead yet: this one replaces it
            self._detach(old)
            with trio.move_on_after(1):
                await old.aclose(fr.CloseCode.GOING_AWAY, "resumed on another connection")
        await ws.send_message(encode(welcome))
        start = max(received, self._log_start)
        sent_upto = start
        while sent_upto < self._sent:  # the writer may log more meanwhile: catch up
            offset = sent_upto - self._log_start
            if offset < 0:  # fell out while we were replaying: those are lost too
                sent_upto = self._log_start
                continue
            await ws.send_message(self._log[offset])
            sent_upto += 1
        if self._over:  # it ended meanwhile: nothing would release `ws` again
            raise ResumeFailed("the session is over")
        self._ws = ws  # live from here on (no await since the last check)
        self._send_failed_on = None  # (the old connection is not held)
        self._released = trio.Event()
        self._attached.set()
        self.resumes += 1
        return self._released

    def report(self, received: int) -> dict[str, Any]:
        """What a client that received `received` messages gets on resuming."""
        start = max(received, self._log_start)
        return {
            "resumed": True,
            "received": received,
            "replayed": self._sent - start,
            "lost": self._lost.report(received, self._log_start),
        }


def resumed_welcome(welcome: fr.Welcome, report: dict[str, Any]) -> fr.Welcome:
    """The Welcome that answers a Hello resuming a session: its first one, its info saying
    what is replayed and what was lost (`report`)."""
    info = json.loads(welcome.info) if welcome.info else {}
    info["resume"] = {**info.get("resume", {}), **report}
    return dataclasses.replace(welcome, info=json.dumps(info, separators=(",", ":")))
