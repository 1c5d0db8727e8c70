"""The duplexd client SDK (trio).

::

    async with open_session("ws://127.0.0.1:8765/v1") as session:
        uid = await session.say("Hello there, how are you today?")
        async for frame in session:
            if isinstance(frame, Audio):
                play(frame.pcm)
            elif isinstance(frame, UtteranceDone) and frame.utterance_id == uid:
                break

A background task reads the socket, answers the waiters of `interrupt()`, `pause()`,
`resume()`, `ping()` and `stats()`, and queues every frame (audio and events) for iteration.
Keep iterating while you wait on those calls: the queue holds `FRAME_QUEUE_SIZE` frames (about
80 s of audio) and reading pauses when it is full.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import ssl
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar, cast

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
)

from ..protocol import frames as fr
from ..protocol.codec import Decoder, RemoteProtocolError, encode
from ..protocol.frames import (
    Audio,
    Error,
    Interrupted,
    Paused,
    Pong,
    Resumed,
    ServerFrame,
    SpeechStarted,
    SpeechStopped,
    Stats,
    Transcript,
    UtteranceDone,
    UtteranceStarted,
    Welcome,
)
from .audio import SessionAudio, check_codec_options
from .dial import (
    connect_error,
    connected,
    describe_close,
    discard,
    hello_exchange,
    open_ws,
    session_url,
)
from .errors import ConnectError as ConnectError
from .errors import ConnectionLost, ServerError, SessionError
from .errors import HandshakeRejected as HandshakeRejected

__all__ = [
    "Audio",
    "ClientSession",
    "Error",
    "Interrupted",
    "SessionError",
    "SpeechStarted",
    "SpeechStopped",
    "SpokenUtterance",
    "Transcript",
    "UtteranceDone",
    "UtteranceStarted",
    "Welcome",
    "open_session",
]

FRAME_QUEUE_SIZE = 4096
_F = TypeVar("_F")
_TOKEN_TEXT = re.compile(r"[\x21-\x7e]+")  # what a Bearer header can carry


@dataclass(frozen=True)
class SpokenUtterance:
    """What `receive_utterance` collected: the PCM and how the utterance ended."""

    utterance_id: int
    pcm: bytes
    frames: int
    end: UtteranceDone | Interrupted
    # where each word was spoken (WORDS frames: open_session(options={"downlink":
    # {"words": True}}) with a voice that times its words; else empty)
    words: tuple[fr.WordMark, ...] = ()


class ClientSession:
    """One open session. Use `open_session`; methods must be called from one trio task tree."""

    def __init__(
        self,
        ws: WebSocketConnection,
        welcome: Welcome,
        on_frame: Callable[[ServerFrame, float], None] | None = None,
        *,
        hello: fr.Hello | None = None,
        reconnect: Callable[[], Awaitable[WebSocketConnection]] | None = None,
        on_resume: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._ws = ws
        self.welcome = welcome
        self._on_frame = on_frame
        self._hello = hello or fr.Hello()
        self._reconnect = reconnect  # a new WebSocket to the same server; None: never resume
        self._on_resume = on_resume
        self._connected = trio.Event()
        self._connected.set()
        self.received = 0  # server messages received after Welcome: the resume point
        self.resumes: list[dict[str, Any]] = []  # what each resume replayed and lost
        self._send_frames, self._recv_frames = trio.open_memory_channel[ServerFrame](
            FRAME_QUEUE_SIZE
        )
        self._waiters: dict[type[Any], list[trio.Event]] = {}
        self._answers: dict[int, Any] = {}
        self._next_uid = 1
        self.epoch = 0  # the epoch of the last Interrupted received
        self._uid_epoch: dict[int, int] = {}  # epoch each utterance was created in
        self._uplink_seq = 0
        self.error: SessionError | None = None
        self.audio = SessionAudio(welcome)  # Opus decoded to PCM, PCM encoded (§4.6.3)

    @property
    def sample_rate_hz(self) -> int:
        return self.welcome.sample_rate_hz

    @property
    def info(self) -> dict[str, Any]:
        """Welcome's info object: engines, voices, server name."""
        return dict(json.loads(self.welcome.info)) if self.welcome.info else {}

    # ------------------------------------------------------------------ sending

    async def _send(self, frame: fr.ClientFrame) -> None:
        """Send `frame`; while the session is being resumed on a new connection, wait for it."""
        data = encode(frame, packet_audio=self.audio.opus_up)
        while True:
            if self.error is not None:
                raise self.error
            await self._connected.wait()
            ws = self._ws
            try:
                await ws.send_message(data)
                return
            except ConnectionClosed as exc:
                if not self._resumable(exc):
                    raise self.error or ConnectionLost(f"connection closed: {exc.reason}") from None
                if self._ws is ws:  # the reader has not noticed yet: wait for its resume
                    self._connected = trio.Event()

    def new_utterance_id(self) -> int:
        uid = self._next_uid
        self._next_uid += 1
        return uid

    async def send_text(self, utterance_id: int, text: str, *, end: bool = False) -> None:
        """Send a chunk of an utterance's text (`end` closes its text)."""
        self._uid_epoch.setdefault(utterance_id, self.epoch)
        await self._send(fr.Text(utterance_id=utterance_id, text=text, end=end))

    async def send_played(
        self, utterance_id: int, samples_played: int, *, clock_us: int = 0, final: bool = False
    ) -> None:
        """Report how much of an utterance reached the speaker (PLAYED, SPEC.md §4.8), for a
        client that plays the audio itself; a `final` report is answered with a `Heard`
        frame (what was heard whole, to the word). Its epoch is the utterance's.
        Cancellation leaves the report sent whole or not at all."""
        epoch = self._uid_epoch.get(utterance_id, self.epoch)
        await self._send(
            fr.Played(
                epoch=epoch,
                utterance_id=utterance_id,
                samples_played=samples_played,
                clock_us=clock_us,
                final=final,
            )
        )

    async def say(self, text: str) -> int:
        """Speak `text` as a new utterance; returns its id."""
        uid = self.new_utterance_id()
        await self.send_text(uid, text, end=True)
        return uid

    async def stream_text(self, chunks: Iterable[str] | AsyncIterable[str]) -> int:
        """Stream chunks (e.g. LLM tokens) into a new utterance, then end it; returns its id."""
        uid = self.new_utterance_id()
        if isinstance(chunks, AsyncIterable):
            async for chunk in chunks:
                await self.send_text(uid, chunk)
        else:
            for chunk in chunks:
                await self.send_text(uid, chunk)
        await self.send_text(uid, "", end=True)
        return uid

    @property
    def uplink_rate_hz(self) -> int:
        """The accepted uplink rate (0: no uplink)."""
        return self.welcome.uplink_rate_hz

    @property
    def uplink_frame_bytes(self) -> int:
        """Bytes of PCM per AudioUp frame (640 at 16 kHz, 1920 at 48 kHz)."""
        return fr.frame_samples(self.welcome.uplink_rate_hz) * fr.BYTES_PER_SAMPLE

    async def send_audio(self, pcm: bytes) -> int:
        """Send one uplink frame (s16le mono at `uplink_rate_hz`, `uplink_frame_bytes` long,
        every 20 ms in real time); returns its seq. Uplink sample positions in SpeechStarted,
        SpeechStopped and Transcript count from the first frame sent."""
        if not self.welcome.uplink_rate_hz:
            raise SessionError("no uplink was negotiated (open_session(uplink_rate_hz=...))")
        seq = self._uplink_seq
        await self._send(fr.AudioUp(seq=seq, pcm=self.audio.uplink(pcm)))
        self._uplink_seq = seq + 1
        return seq

    async def _request(self, frame: fr.ClientFrame, answer: type[_F]) -> _F:
        event = trio.Event()
        self._waiters.setdefault(answer, []).append(event)
        await self._send(frame)
        await event.wait()
        if self.error is not None:
            raise self.error
        result: _F = self._answers.pop(id(event))
        return result

    async def interrupt(self) -> Interrupted:
        """Barge in: stop the playing utterance and drop the queued ones.

        Returns the server's Interrupted (what was sent and spoken). Cancelling this call after
        the request went out leaves the Interrupted frame to arrive in the frame stream.
        """
        return await self._request(fr.Interrupt(), Interrupted)

    async def pause(self) -> Paused:
        return await self._request(fr.Pause(), Paused)

    async def resume(self) -> Resumed:
        return await self._request(fr.Resume(), Resumed)

    async def ping(self) -> float:
        """Round-trip time in seconds."""
        t0 = trio.current_time()
        await self._request(fr.Ping(nonce=int.from_bytes(os.urandom(8), "little")), Pong)
        return trio.current_time() - t0

    async def stats(self) -> dict[str, Any]:
        """The server's counters for this session (pacing error, frames, underruns...)."""
        frame = await self._request(fr.GetStats(), Stats)
        return dict(json.loads(frame.json))

    # ------------------------------------------------------------------ receiving

    def __aiter__(self) -> ClientSession:
        return self

    async def __anext__(self) -> ServerFrame:
        """The next frame; a plain iterator (no generator), so `break` leaves nothing behind.
        Ends the iteration when the session closed cleanly, raises SessionError after an error."""
        try:
            return await self._recv_frames.receive()
        except trio.EndOfChannel:
            if self.error is not None and self.error.code is not None:
                raise self.error from None
            raise StopAsyncIteration from None

    async def receive_frame(self) -> ServerFrame:
        """The next frame from the server. Raises SessionError once the session has ended."""
        try:
            return await self._recv_frames.receive()
        except trio.EndOfChannel:
            raise self.error or ConnectionLost("session closed") from None

    async def receive_utterance(self, utterance_id: int) -> SpokenUtterance:
        """Collect the audio of one utterance until its UtteranceDone or an Interrupted."""
        pcm = bytearray()
        frames = 0
        words: list[fr.WordMark] = []
        while True:
            frame = await self.receive_frame()
            if isinstance(frame, Audio) and frame.utterance_id == utterance_id:
                pcm += frame.pcm
                frames += 1
            elif isinstance(frame, fr.Words) and frame.utterance_id == utterance_id:
                words += frame.marks
            elif self._ends(frame, utterance_id):
                self._uid_epoch.pop(utterance_id, None)
                return SpokenUtterance(utterance_id, bytes(pcm), frames, frame, tuple(words))

    def _ends(
        self, frame: ServerFrame, utterance_id: int
    ) -> TypeGuard[UtteranceDone | Interrupted]:
        """Whether `frame` ends the utterance: its Done, or an Interrupted of a later epoch than
        the one the utterance was created in."""
        if isinstance(frame, UtteranceDone):
            return frame.utterance_id == utterance_id
        if isinstance(frame, Interrupted):
            return frame.epoch != self._uid_epoch.get(utterance_id, self.epoch)
        return False

    async def _reader(self) -> None:
        decoder = Decoder(peer="server")
        decoder.packet_audio = self.audio.opus_down
        try:
            while True:
                try:
                    message = await self._ws.get_message()
                except ConnectionClosed as exc:
                    reconnect = self._reconnect
                    if not self._resumable(exc) or reconnect is None:
                        raise
                    if not await self._resume(exc, reconnect):
                        raise
                    decoder = Decoder(peer="server")
                    decoder.packet_audio = self.audio.opus_down
                    continue
                now = trio.current_time()
                self.received += 1
                if isinstance(message, str):
                    raise ServerError("server sent a text message")
                decoder.receive_data(message)
                for frame in decoder:
                    self._deliver(cast(ServerFrame, frame), now)
        except ConnectionClosed as exc:
            if self.error is None:
                self.error = ConnectionLost(f"connection closed ({describe_close(exc)})")
        except RemoteProtocolError as exc:
            self.error = ServerError(f"server broke the protocol: {exc}")
        except SessionError as exc:
            self.error = exc
        finally:
            self._send_frames.close()
            for events in self._waiters.values():
                for event in events:
                    event.set()

    def _deliver(self, frame: ServerFrame, now: float) -> None:
        if isinstance(frame, Audio):
            frame = self.audio.downlink(frame)  # PCM, whatever the wire carried
        elif isinstance(frame, Interrupted):
            self.epoch = frame.epoch
        if self._on_frame is not None:
            self._on_frame(frame, now)
        if isinstance(frame, Error):
            self.error = ServerError(
                f"{frame.code.name}: {frame.message}", frame.code, frame.message
            )
        waiting = self._waiters.get(type(frame))
        if waiting and not (isinstance(frame, Interrupted) and frame.vad):  # not our answer
            event = waiting.pop(0)
            self._answers[id(event)] = frame
            event.set()
        try:
            self._send_frames.send_nowait(frame)
        except trio.WouldBlock:
            raise SessionError("client frame queue overflow: iterate the session") from None

    async def aclose(self) -> None:
        await self._ws.aclose()

    # ------------------------------------------------------------------ resuming

    def _resumable(self, exc: ConnectionClosed) -> bool:
        """Whether a closed connection is worth resuming: the server offered it, the session
        did not end (no Error, no normal close), and we know how to reconnect."""
        code = exc.reason.code if exc.reason is not None else None
        offered = bool(self.info.get("resume", {}).get("token"))
        return (
            self._reconnect is not None
            and offered
            and self.error is None
            and code not in (fr.CloseCode.NORMAL, fr.CloseCode.GOING_AWAY)
            and not (code is not None and 4000 <= code < 5000)
        )

    async def _resume(
        self, exc: ConnectionClosed, reconnect: Callable[[], Awaitable[WebSocketConnection]]
    ) -> bool:
        """Reconnect and resume the session (SPEC.md §6.4), retrying within the server's
        window. True when resumed (the replay then arrives as usual), False when it cannot be
        (the session is over). Cancellation leaves the session disconnected."""
        self._connected = trio.Event()
        try:
            return await self._reconnect_within_window(exc, reconnect)
        finally:
            self._connected.set()  # resumed, or over (senders then see `error`)

    async def _reconnect_within_window(
        self, exc: ConnectionClosed, reconnect: Callable[[], Awaitable[WebSocketConnection]]
    ) -> bool:
        resume = self.info["resume"]
        deadline = trio.current_time() + float(resume.get("window_s", 30))
        delay = 0.05
        options = json.loads(self._hello.options) if self._hello.options else {}
        while trio.current_time() < deadline:
            options["resume"] = {
                "session_id": self.welcome.session_id.hex(),
                "token": resume["token"],
                "received": self.received,
            }
            hello = dataclasses.replace(self._hello, options=json.dumps(options))
            ws = None
            try:
                ws = await reconnect()
                with trio.fail_after(max(0.0, deadline - trio.current_time())):
                    welcome = await hello_exchange(ws, hello)
            except SessionError as error:
                await discard(ws)
                if error.code is fr.ErrorCode.RESUME_FAILED:
                    self.error = ConnectionLost(f"the session could not be resumed: {error}")
                    return False
            except (ConnectionClosed, OSError, HandshakeError, trio.TooSlowError):
                await discard(ws)
            else:
                self._ws = ws
                report = dict(json.loads(welcome.info).get("resume", {}))
                self.resumes.append(report)
                if self._on_resume is not None:
                    self._on_resume(report)
                return True
            await trio.sleep(min(delay, max(0.0, deadline - trio.current_time())))
            delay = min(delay * 2, 2.0)
        self.error = ConnectionLost(
            f"connection lost and not resumed in time ({describe_close(exc)})"
        )
        return False


@asynccontextmanager
async def open_session(
    url: str,
    *,
    sample_rate_hz: int = fr.SAMPLE_RATE_HZ,
    uplink_rate_hz: int = 0,
    engine: str = "",
    voice: str = "",
    token: str = "",
    options: dict[str, Any] | None = None,
    on_frame: Callable[[ServerFrame, float], None] | None = None,
    connect_timeout_s: float = 10.0,
    ca: str = "",
    ssl_context: ssl.SSLContext | None = None,
    resume: bool = True,
    on_resume: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[ClientSession]:
    """Connect, handshake, and yield a `ClientSession`; closes the connection on exit.

    `token` goes in the WebSocket upgrade as ``Authorization: Bearer <token>`` (a static
    token, or a signed one from ``duplexd token``); Hello's token field is left empty.
    A ``wss://`` URL is TLS: the system's CAs are trusted, or the CA bundle at `ca` (a PEM
    file; a self-signed server), or `ssl_context` as it is. Raises `SessionError` if the
    server cannot be reached, refuses the upgrade (`SessionError.status`: 401 no or bad
    token, 429 too many failed attempts, 503 full or draining) or the Hello (unknown voice,
    bad format...). ValueError for a URL that is not ``ws://`` or ``wss://`` (one with no path
    means ``/v1``: `session_url`), a token that is not printable ASCII, or `ca` /
    `ssl_context` with a ``ws://`` URL.
    `on_frame(frame, arrival_time)` is called for every frame as it arrives (for timing).
    `uplink_rate_hz` (16000 or 48000) opens the uplink for `send_audio`; `options` may hold
    {"vad": {...}, "asr": {...}} (protocol/SPEC.md §4.6.1) and {"codec": {"downlink": "opus",
    "uplink": "opus"}} (§4.6.3: the audio still comes and goes as PCM here; `CodecError`
    for Opus at a rate Opus does not code).

    `resume`: when the connection drops (not a close by the server), reconnect and resume the
    session within the server's window (SPEC.md §6.4): iteration and sends just go on; what
    was replayed and lost is in `ClientSession.resumes` and given to `on_resume(report)`.
    """
    url = session_url(url)
    check_codec_options(options, sample_rate_hz=sample_rate_hz, uplink_rate_hz=uplink_rate_hz)
    headers: list[tuple[bytes, bytes]] = []
    if token:
        if not _TOKEN_TEXT.fullmatch(token):
            raise ValueError("a token is printable ASCII without spaces")
        headers.append((b"authorization", b"Bearer " + token.encode("ascii")))
    if ca or ssl_context is not None:
        if urllib.parse.urlsplit(url).scheme != "wss":
            raise ValueError("ca= and ssl_context= need a wss:// URL")
        if ca and ssl_context is not None:
            raise ValueError("pass ca= or ssl_context=, not both")
        if ca:
            ssl_context = ssl.create_default_context(cafile=ca)
    hello = fr.Hello(
        sample_rate_hz=sample_rate_hz,
        uplink_rate_hz=uplink_rate_hz,
        engine=engine,
        voice=voice,
        options=json.dumps(options) if options else "",
    )
    try:
        async with connected(url, ssl_context, headers, connect_timeout_s) as ws:
            # the connection's own tasks run in this nursery (a timeout can cancel them):
            # trio-websocket's connect_timeout does not hold when a server accepts the TCP
            # connection and never answers the upgrade (a stalled daemon)

            async def reconnect(nursery: trio.Nursery) -> WebSocketConnection:
                with trio.fail_after(connect_timeout_s):
                    return await open_ws(nursery, url, ssl_context, headers)

            async with session_over(
                ws,
                hello,
                on_frame=on_frame,
                timeout_s=connect_timeout_s,
                reconnect=reconnect if resume else None,
                on_resume=on_resume,
            ) as session:
                yield session
    except BaseExceptionGroup as group:  # our nurseries': the one error inside, as it is
        leaves = list(_leaves(group))
        if len(leaves) != 1:
            raise
        leaf = leaves[0]
        if isinstance(leaf, HandshakeError):  # raised by the connection's own task
            raise connect_error(url, leaf, connect_timeout_s) from None
        raise leaf from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def session_over(
    ws: WebSocketConnection,
    hello: fr.Hello,
    *,
    on_frame: Callable[[ServerFrame, float], None] | None = None,
    timeout_s: float = 10.0,
    reconnect: Callable[[trio.Nursery], Awaitable[WebSocketConnection]] | None = None,
    on_resume: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncIterator[ClientSession]:
    """Handshake on an already open WebSocket (any transport trio-websocket wraps).

    `reconnect(nursery)` opens a new WebSocket to the same server (its tasks in `nursery`);
    with it a dropped connection is resumed (SPEC.md §6.4) when the server offers that, and
    `on_resume(report)` tells what was replayed and lost."""
    try:
        with trio.fail_after(timeout_s):
            welcome = await hello_exchange(ws, hello)
    except trio.TooSlowError:
        raise ConnectError(
            f"the server accepted the connection but did not answer the Hello in {timeout_s:g} s"
            " (starting, overloaded, or waiting for its model process): try again, or give it"
            " longer (connect_timeout_s)"
        ) from None
    async with trio.open_nursery() as nursery:
        session = ClientSession(
            ws,
            welcome,
            on_frame,
            hello=hello,
            reconnect=functools.partial(reconnect, nursery) if reconnect is not None else None,
            on_resume=on_resume,
        )
        nursery.start_soon(session._reader)
        try:
            yield session
        finally:
            nursery.cancel_scope.cancel()
