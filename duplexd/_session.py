"""One client session: handshake, a reader, an utterance runner and a writer in one nursery.

``serve_session(ws, ...)`` runs until the peer closes or errs. Bad input never escapes it: a
protocol error is answered with an Error frame and a close with that error's close code; an
internal failure with INTERNAL and 1011. Nothing one session does touches another's state.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
from trio_websocket import ConnectionClosed

from . import __version__
from . import _frames as fr
from ._codec import Decoder, RemoteProtocolError, encode
from ._config import SessionLimits
from ._downlink import Downlink
from ._engines import EngineSet
from ._pacer import Pacer
from ._ring import FrameRing
from ._state import ServerProtocolState, check_audio_format, negotiate_version
from ._synth import SynthesisCancelled, UtteranceProducer
from ._utterance import Utterance
from .engines.base import UnknownVoiceError, Voice

log = logging.getLogger("duplexd.session")


class Transport(Protocol):
    """What a session needs of a WebSocket (trio-websocket's connection has it)."""

    async def get_message(self) -> str | bytes: ...
    async def send_message(self, message: str | bytes) -> None: ...
    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


_CLOSED = (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


# How blocking work leaves the event loop: `trio.to_thread.run_sync` in the daemon.
Offload = Callable[..., Awaitable[Any]]


class Session:
    """One session. `offload` runs blocking synthesis (tests may run it inline under a
    MockClock; a worker thread would let the clock jump while it works)."""

    def __init__(
        self,
        ws: Transport,
        *,
        engines: EngineSet,
        pacer: Pacer,
        limits: SessionLimits,
        offload: Offload = trio.to_thread.run_sync,
    ) -> None:
        self._ws = ws
        self._offload = offload
        self._engines = engines
        self._pacer = pacer
        self._limits = limits
        self.id = os.urandom(16)
        self.tag = self.id.hex()[:12]
        self._state = ServerProtocolState(
            max_text_bytes=limits.max_text_bytes,
            max_queued_utterances=limits.max_queued_utterances,
        )
        self._decoder = Decoder(peer="client", max_frame_bytes=limits.max_frame_bytes)
        self._queue: collections.deque[Utterance] = collections.deque()
        self._utterances: dict[int, Utterance] = {}  # until Done or Interrupted is sent
        self._current: Utterance | None = None
        self._queue_lot = trio.lowlevel.ParkingLot()
        self._ring: FrameRing | None = None
        self._downlink: Downlink | None = None
        self._voice: Voice | None = None
        self._nursery: trio.Nursery | None = None
        self._error: tuple[fr.ErrorCode, str] | None = None
        self.utterances_done = 0
        self.engine_s = 0.0  # engine compute time, for RTF
        self.audio_s = 0.0  # audio the engine produced
        self.interrupts = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the session until it ends. Never raises except `trio.Cancelled`."""
        try:
            hello = await self._receive_hello()
            await self._open(hello)
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                assert self._downlink is not None
                nursery.start_soon(self._guard, self._downlink.run)
                nursery.start_soon(self._guard, self._run_utterances)
                nursery.start_soon(self._guard, self._read_loop)
        except RemoteProtocolError as exc:
            self._set_error(exc.error_code, exc.message)
        except _CLOSED:
            pass
        except Exception:
            log.exception("session %s failed", self.tag)
            self._set_error(fr.ErrorCode.INTERNAL, "internal server error")
        finally:
            self._teardown()
        if self._error is not None:
            await self._fail(*self._error)

    async def _guard(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run one of the session's tasks; whatever ends it ends the session."""
        try:
            await fn()
        except RemoteProtocolError as exc:
            self._set_error(exc.error_code, exc.message)
        except _CLOSED:
            pass
        except Exception:
            log.exception("session %s failed", self.tag)
            self._set_error(fr.ErrorCode.INTERNAL, "internal server error")
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _set_error(self, code: fr.ErrorCode, message: str) -> None:
        if self._error is None:
            self._error = (code, message)

    async def _receive_hello(self) -> fr.Hello:
        with trio.move_on_after(self._limits.hello_timeout_s) as scope:
            while True:
                for frame in await self._receive_frames():
                    self._state.receive(frame)
                    assert isinstance(frame, fr.Hello)
                    return frame
        assert scope.cancelled_caught
        raise RemoteProtocolError(
            fr.ErrorCode.UNEXPECTED_FRAME, f"no Hello within {self._limits.hello_timeout_s:g} s"
        )

    async def _open(self, hello: fr.Hello) -> None:
        negotiate_version(hello)
        check_audio_format(hello)
        if self._limits.token and hello.token != self._limits.token:
            raise RemoteProtocolError(fr.ErrorCode.AUTH_FAILED, "bad or missing token")
        try:
            engine = self._engines.get(hello.engine)
        except LookupError as exc:
            raise RemoteProtocolError(fr.ErrorCode.UNKNOWN_ENGINE, str(exc.args[0])) from None
        voice_name = hello.voice or engine.default_voice
        try:
            self._voice = await self._offload(engine.open_voice, voice_name)
        except UnknownVoiceError as exc:
            raise RemoteProtocolError(fr.ErrorCode.UNKNOWN_VOICE, str(exc)) from None
        self._state.accept_hello()
        n = fr.frame_samples(hello.sample_rate_hz)
        self._rate = hello.sample_rate_hz
        self._frame_samples = n
        self._ring = FrameRing(
            self._limits.ring_frames, fr.AUDIO_HEADER_BYTES + n * fr.BYTES_PER_SAMPLE
        )
        self._downlink = Downlink(
            ring=self._ring,
            send=self._ws.send_message,
            pacer=self._pacer,
            frame_samples=n,
            chars_spoken=self._chars_spoken,
            real_samples=self._real_samples,
            on_utterance_done=self._utterance_done,
            on_slow_consumer=self._slow_consumer,
        )
        info = {
            "server": f"duplexd/{__version__}",
            "engines": self._engines.describe(),
            "preroll_ms": 0,
        }
        welcome = fr.Welcome(
            version=fr.PROTOCOL_VERSION,
            session_id=self.id,
            sample_rate_hz=hello.sample_rate_hz,
            frame_samples=n,
            uplink_rate_hz=0,
            max_frame_bytes=self._limits.max_frame_bytes,
            max_text_bytes=self._limits.max_text_bytes,
            max_queued_utterances=self._limits.max_queued_utterances,
            engine=engine.name,
            voice=self._voice.name,
            info=json.dumps(info, separators=(",", ":")),
        )
        await self._ws.send_message(encode(welcome))
        log.info(
            "session open",
            extra={"session": self.tag, "engine": engine.name, "voice": self._voice.name},
        )

    def _teardown(self) -> None:
        for utt in self._queue:
            utt.abort()
        if self._current is not None:
            self._current.abort()
        if self._downlink is not None:
            self._downlink.closed = True
            self._pacer.unschedule(self._downlink)
        self._state.close()
        log.info(
            "session closed",
            extra={"session": self.tag, "utterances": self.utterances_done},
        )

    async def _fail(self, code: fr.ErrorCode, message: str) -> None:
        """Send Error and close with the code's close code; gives up after 1 s."""
        log.info(
            "session error",
            extra={"session": self.tag, "code": code.name, "detail": message},
        )
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await self._ws.send_message(encode(fr.Error(code=code, message=message)))
                await self._ws.aclose(code.close_code, message[:120])
            except _CLOSED:
                pass

    # ------------------------------------------------------------------ reading

    async def _receive_frames(self) -> list[fr.Frame]:
        message = await self._ws.get_message()
        if isinstance(message, str):
            raise RemoteProtocolError(
                fr.ErrorCode.NOT_BINARY,
                "text WebSocket messages are not part of the protocol; send binary frames",
            )
        self._decoder.receive_data(message)
        frames = list(self._decoder)
        self._decoder.check_boundary()  # a frame must not span WebSocket messages
        return frames

    async def _read_loop(self) -> None:
        while True:
            for frame in await self._receive_frames():
                self._dispatch(frame)

    def _dispatch(self, frame: fr.Frame) -> None:
        if not self._state.receive(frame):
            return  # text still in flight for an interrupted utterance: dropped
        dl = self._downlink
        assert dl is not None
        if isinstance(frame, fr.Text):
            self._on_text(frame)
        elif isinstance(frame, fr.Interrupt):
            self._on_interrupt()
        elif isinstance(frame, fr.Pause):
            dl.pause()
        elif isinstance(frame, fr.Resume):
            dl.resume()
        elif isinstance(frame, fr.Ping):
            dl.send_control(encode(fr.Pong(nonce=frame.nonce, server_time_ns=time.monotonic_ns())))
        elif isinstance(frame, fr.GetStats):
            dl.send_control(lambda: encode(fr.Stats(json=json.dumps(self.stats()))))
        elif isinstance(frame, fr.AudioUp):
            raise RemoteProtocolError(
                fr.ErrorCode.UNEXPECTED_FRAME,
                "uplink audio was not negotiated (Welcome.uplink_rate_hz is 0)",
            )

    def _on_text(self, frame: fr.Text) -> None:
        utt = self._utterances.get(frame.utterance_id)
        if utt is None:
            utt = Utterance(frame.utterance_id)
            self._utterances[utt.uid] = utt
            self._queue.append(utt)
            self._queue_lot.unpark()
        utt.feed(frame.text, end=frame.end)

    def _on_interrupt(self) -> None:
        dl = self._downlink
        assert dl is not None
        cancelled = 0
        victims = list(self._queue)
        self._queue.clear()
        if self._current is not None:
            victims.insert(0, self._current)
        for utt in victims:
            utt.abort()
        for utt in victims:
            if utt.uid != dl.playing_uid:
                cancelled += 1
                self._utterance_done(utt.uid)
        self.interrupts += 1
        dl.interrupt(cancelled)

    # ------------------------------------------------------------------ callbacks

    def _chars_spoken(self, uid: int, samples: int) -> int:
        utt = self._utterances.get(uid)
        return utt.chars_spoken(samples) if utt is not None else 0

    def _real_samples(self, uid: int) -> int:
        utt = self._utterances.get(uid)
        return utt.piece_map.total_samples if utt is not None and utt.piece_map else 0

    def _utterance_done(self, uid: int) -> None:
        if self._utterances.pop(uid, None) is not None:
            self._state.utterance_finished(uid)
            self.utterances_done += 1

    def _slow_consumer(self) -> None:
        self._set_error(fr.ErrorCode.SLOW_CONSUMER, "the client fell 1 s behind the audio")
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ synthesis

    async def _run_utterances(self) -> None:
        while True:
            while not self._queue:
                await self._queue_lot.park()
            utt = self._queue.popleft()
            self._current = utt
            try:
                with utt.scope:
                    await self._produce(utt)
            finally:
                self._current = None

    async def _produce(self, utt: Utterance) -> None:
        dl = self._downlink
        assert dl is not None and self._ring is not None and self._voice is not None
        token = trio.lowlevel.current_trio_token()

        def kick() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(dl.kick)

        producer = UtteranceProducer(
            voice=self._voice,
            ring=self._ring,
            out_rate_hz=self._rate,
            frame_samples=self._frame_samples,
            epoch=dl.epoch,
            utterance_id=utt.uid,
            cancel=utt.cancel,
            kick=kick,
            frame_s=self._pacer.frame_s,
        )
        utt.piece_map = producer.pieces
        try:
            while (piece := await utt.next_piece()) is not None:
                await self._offload(producer.render, piece)
            await self._offload(producer.finish, utt.total_chars)
        except SynthesisCancelled:
            pass
        self.engine_s += producer.engine_s
        self.audio_s += producer.audio_s

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        dl = self._downlink
        assert dl is not None
        c = dl.counters
        return {
            "session": self.tag,
            "frames_sent": c.frames_sent,
            "bytes_sent": c.bytes_sent,
            "underruns": c.underruns,
            "late_sends": c.late_sends,
            "stale_dropped": c.stale_dropped,
            "pacing_error_ms": c.pacing_error.summary_ms(),
            "utterances_done": self.utterances_done,
            "interrupts": self.interrupts,
            "engine_s": round(self.engine_s, 4),
            "audio_s": round(self.audio_s, 4),
        }


async def serve_session(
    ws: Transport,
    *,
    engines: EngineSet,
    pacer: Pacer,
    limits: SessionLimits,
    offload: Offload = trio.to_thread.run_sync,
) -> Session:
    """Serve one accepted WebSocket until it ends; returns the finished session."""
    session = Session(ws, engines=engines, pacer=pacer, limits=limits, offload=offload)
    await session.run()
    return session
