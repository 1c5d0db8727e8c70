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

from .. import __version__
from .._downlink.pacer import Pacer
from .._downlink.producer import SynthesisCancelled, UtteranceProducer
from .._downlink.ring import FrameRing
from .._downlink.utterance import Utterance
from .._downlink.writer import Downlink, DownlinkCounters
from .._ops.observe import SessionLatency
from .._uplink.uplink import Uplink, UplinkServices, default_uplink_services
from .._uplink.vad import parse_duplex_options
from ..engines.base import UnknownVoiceError, Voice
from ..engines.registry import EngineSet
from ..protocol import frames as fr
from ..protocol.codec import Decoder, RemoteProtocolError, encode
from ..protocol.state import ServerProtocolState, check_audio_format, negotiate_version
from .limits import SessionLimits

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
        uplink_services: UplinkServices | None = None,
    ) -> None:
        self._ws = ws
        self._uplink_services = uplink_services  # None: the process defaults (full duplex)
        self._uplink: Uplink | None = None
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
        self._early_frames: list[fr.Frame] = []
        self.utterances_done = 0
        self.engine_s = 0.0  # engine compute time, for RTF
        self.audio_s = 0.0  # audio the engine produced
        self.interrupts = 0
        self.latency = SessionLatency()
        self._text_at: dict[int, tuple[float, float]] = {}  # uid -> first text, first audio
        self._interrupt_at: collections.deque[float] = collections.deque()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the session until it ends. Never raises except `trio.Cancelled`."""
        try:
            await self._capture(self._serve)
        finally:
            self._teardown()
        if self._error is not None:
            await self._fail(*self._error)

    async def _serve(self) -> None:
        hello = await self._receive_hello()
        await self._open(hello)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            assert self._downlink is not None
            nursery.start_soon(self._guard, self._downlink.run)
            nursery.start_soon(self._guard, self._run_utterances)
            nursery.start_soon(self._guard, self._read_loop)
            nursery.start_soon(self._abort_on_exit)
            if self._uplink is not None:
                nursery.start_soon(self._guard, self._uplink.run)
                nursery.start_soon(self._guard, self._uplink.process)

    async def _capture(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn`; record how a failure should be reported (the peer's fault or ours)."""
        try:
            await fn()
        except RemoteProtocolError as exc:
            self._set_error(exc.error_code, exc.message)
        except _CLOSED:
            pass
        except Exception:
            log.exception("session %s failed", self.tag)
            self._set_error(fr.ErrorCode.INTERNAL, "internal server error")

    async def _abort_on_exit(self) -> None:
        """However the session ends, tell synthesis threads to stop at once.

        The utterance runner waits for its worker thread (a thread cannot be cancelled); the
        thread stops at its next cancel check once `Utterance.abort` set its event."""
        try:
            await trio.sleep_forever()
        finally:
            self._abort_all()

    def _abort_all(self) -> None:
        for utt in self._queue:
            utt.abort()
        if self._current is not None:
            self._current.abort()

    async def _guard(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run one of the session's tasks; whatever ends it ends the session."""
        await self._capture(fn)
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    def _set_error(self, code: fr.ErrorCode, message: str) -> None:
        if self._error is None:
            self._error = (code, message)

    async def _receive_hello(self) -> fr.Hello:
        with trio.move_on_after(self._limits.hello_timeout_s) as scope:
            while True:
                frames = await self._receive_frames()
                if frames:
                    hello = frames[0]
                    self._state.receive(hello)
                    assert isinstance(hello, fr.Hello)
                    self._early_frames = frames[1:]  # same message, after Hello: kept
                    return hello
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
        try:
            vad_options, asr_options = parse_duplex_options(hello.options)
        except ValueError as exc:
            raise RemoteProtocolError(fr.ErrorCode.BAD_OPTIONS, str(exc)) from None
        self._state.accept_hello(uplink=bool(hello.uplink_rate_hz))
        n = fr.frame_samples(hello.sample_rate_hz)
        self._rate = hello.sample_rate_hz
        self._frame_samples = n
        self._ring = FrameRing(
            self._limits.ring_frames, fr.AUDIO_HEADER_BYTES + n * fr.BYTES_PER_SAMPLE
        )
        self._downlink = Downlink(
            ring=self._ring,
            send=self._send_tapped if hello.uplink_rate_hz else self._ws.send_message,
            pacer=self._pacer,
            frame_samples=n,
            chars_spoken=self._chars_spoken,
            real_samples=self._real_samples,
            on_utterance_done=self._utterance_done,
            on_slow_consumer=self._slow_consumer,
            on_audio_started=self._audio_started,
            on_interrupted=self._interrupted,
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
            uplink_rate_hz=hello.uplink_rate_hz,
            max_frame_bytes=self._limits.max_frame_bytes,
            max_text_bytes=self._limits.max_text_bytes,
            max_queued_utterances=self._limits.max_queued_utterances,
            engine=engine.name,
            voice=self._voice.name,
            info=json.dumps(info, separators=(",", ":")),
        )
        if hello.uplink_rate_hz:
            downlink = self._downlink
            assert downlink is not None
            self._uplink = Uplink(
                rate_hz=hello.uplink_rate_hz,
                downlink_rate_hz=hello.sample_rate_hz,
                vad=vad_options,
                asr=asr_options,
                services=self._uplink_services or default_uplink_services(),
                send=lambda frame: downlink.send_control(encode(frame)),
                barge_in=self._vad_barge_in,
                offload=self._offload,
            )
        await self._ws.send_message(encode(welcome))
        log.info(
            "session open",
            extra={"session": self.tag, "engine": engine.name, "voice": self._voice.name},
        )

    def _teardown(self) -> None:
        self._abort_all()
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
        for frame in self._early_frames:
            self._dispatch(frame)
        self._early_frames = []
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
            if self._uplink is None:
                raise RemoteProtocolError(
                    fr.ErrorCode.UNEXPECTED_FRAME,
                    "uplink audio was not negotiated (Welcome.uplink_rate_hz is 0)",
                )
            self._uplink.feed(frame.seq, frame.pcm)

    def _on_text(self, frame: fr.Text) -> None:
        utt = self._utterances.get(frame.utterance_id)
        if utt is None:
            utt = Utterance(frame.utterance_id)
            self._utterances[utt.uid] = utt
            self._text_at[utt.uid] = (trio.current_time(), -1.0)
            self._queue.append(utt)
            self._queue_lot.unpark()
        utt.feed(frame.text, end=frame.end)

    def _on_interrupt(self, *, vad: bool = False) -> None:
        dl = self._downlink
        assert dl is not None
        cancelled = 0
        # every utterance not yet done: queued, being synthesized, or fully synthesized and
        # waiting in the ring (no longer in `_queue` nor `_current`, but still to be dropped)
        victims = list(self._utterances.values())
        self._queue.clear()
        for utt in victims:
            utt.abort()
        for utt in victims:
            if utt.uid != dl.playing_uid:
                cancelled += 1
                self._utterance_done(utt.uid)
        self.interrupts += 1
        self._interrupt_at.append(trio.current_time())
        dl.interrupt(cancelled, vad=vad)

    def _vad_barge_in(self) -> None:
        """The user started speaking: interrupt like a client Interrupt, if anything is queued
        or playing (Interrupted then carries the VAD flag)."""
        if self._state.active_utterances:
            self._state.receive(fr.Interrupt())
            self._on_interrupt(vad=True)

    async def _send_tapped(self, data: bytes) -> None:
        """The writer's send when there is an uplink: the audio sent is the echo reference."""
        if self._uplink is not None:
            self._uplink.on_downlink(data)
        await self._ws.send_message(data)

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
            t_text, first_audio = self._text_at.pop(uid, (0.0, -1.0))
            log.info(
                "utterance end",
                extra={
                    "session": self.tag,
                    "utterance": uid,
                    "first_audio_ms": round(first_audio * 1e3, 3) if first_audio >= 0 else None,
                    "duration_ms": round((trio.current_time() - t_text) * 1e3, 3),
                },
            )

    def _audio_started(self, uid: int) -> None:
        timing = self._text_at.get(uid)
        if timing is not None:
            latency = trio.current_time() - timing[0]
            self.latency.first_audio.record(latency)
            self._text_at[uid] = (timing[0], latency)

    def _interrupted(self) -> None:
        if self._interrupt_at:
            latency = trio.current_time() - self._interrupt_at.popleft()
            self.latency.interrupt.record(latency)
            log.info(
                "interrupted",
                extra={"session": self.tag, "interrupt_ms": round(latency * 1e3, 3)},
            )

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
        )
        utt.piece_map = producer.pieces
        try:
            while (piece := await utt.next_piece()) is not None:
                await self._offload(producer.render, piece)
                await self._push_backlog(producer)
            await self._offload(producer.finish, utt.total_chars)
            await self._push_backlog(producer)
        except SynthesisCancelled:
            pass
        self.engine_s += producer.engine_s
        self.audio_s += producer.audio_s

    async def _push_backlog(self, producer: UtteranceProducer) -> None:
        """Push the frames that did not fit in the ring, as the writer frees space."""
        dl = self._downlink
        assert dl is not None
        while producer.push_backlog() and not dl.closed:
            dl.kick()
            await dl.wait_for_space()
        dl.kick()

    # ------------------------------------------------------------------ operations

    @property
    def busy(self) -> bool:
        """Whether an utterance is queued, being synthesized or playing."""
        return bool(self._utterances)

    @property
    def counters(self) -> DownlinkCounters | None:
        """The writer's counters (None until the handshake is done)."""
        return self._downlink.counters if self._downlink is not None else None

    @property
    def error_code(self) -> fr.ErrorCode | None:
        """The error the session ended (or is ending) with, if any."""
        return self._error[0] if self._error is not None else None

    def go_away(self, message: str = "server is shutting down") -> None:
        """End the session: Error GOING_AWAY, then close code 1001. Synchronous; trio thread.
        A session still in its handshake is not affected (cancel its task instead)."""
        if self._nursery is not None:
            self._set_error(fr.ErrorCode.GOING_AWAY, message)
            self._nursery.cancel_scope.cancel()

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
            **(self._uplink.stats() if self._uplink is not None else {}),
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
