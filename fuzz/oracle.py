"""What a duplexd daemon must answer to the WebSocket messages a client sent it.

`Oracle` replays the client's messages through the sans-I/O layer exactly as the daemon reads
them (`duplexd._server.handshake.receive_frames`: a text message is NOT_BINARY; a message is
decoded whole, then checked for a cut frame, before any of its frames is acted on; the first
frame must be a Hello, checked whole (by `spec_model.hello_verdict`: what the document says,
so that a daemon bug there shows); the token, the engine and the voice; then every frame
through `ServerProtocolState.receive`; AudioUp's `seq` rules of SPEC §4.6) and says which
error, if any, the daemon must end the session with.

A prediction can be uncertain where the daemon's answer depends on timing: a queue-limit
LIMIT_EXCEEDED (utterances may have finished playing meanwhile), anything after uplink audio
that is not silence (the daemon's VAD may barge in). The network fuzz does not count a
disagreement there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder, RemoteProtocolError
from duplexd.protocol.state import ServerProtocolState

from . import spec_model

MAX_GAP_FRAMES = 250  # SPEC §4.6: the daemon fills a forward gap of up to 250 frames


@dataclass(frozen=True)
class Limits:
    """The daemon's `[limits]` (what its Welcome announces)."""

    max_frame_bytes: int = fr.MAX_FRAME_BYTES
    max_text_bytes: int = 32_768
    max_queued_utterances: int = 16


class Oracle:
    def __init__(
        self,
        limits: Limits,
        *,
        engines: Mapping[str, tuple[str, ...]],  # engine -> voices, the first the default
        default_engine: str,
        token: str = "",
        uplink: bool = True,
    ) -> None:
        self.limits = limits
        self._engines = engines
        self._default_engine = default_engine
        self._token = token
        self._uplink = uplink
        self._decoder = Decoder(peer="client", max_frame_bytes=limits.max_frame_bytes)
        self._state = ServerProtocolState(
            max_text_bytes=limits.max_text_bytes,
            max_queued_utterances=limits.max_queued_utterances,
        )
        self.error: fr.ErrorCode | None = None  # the error the session must end with
        self.why = ""
        self.certain = True
        self.welcomed = False  # whether the daemon must have sent Welcome
        self._next_seq = 0
        self._noisy_uplink = False

    def _fail(self, code: fr.ErrorCode, why: str) -> None:
        if self.error is None:
            self.error, self.why = code, why

    def text_message(self) -> None:
        self._fail(fr.ErrorCode.NOT_BINARY, "a text message")

    def hello_timeout(self) -> None:
        """The daemon's hello timeout passed (what it does when no Hello came)."""
        if not self.welcomed:
            self._fail(fr.ErrorCode.UNEXPECTED_FRAME, "no Hello within the hello timeout")

    def binary_message(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self._decoder.receive_data(data)
            frames = list(self._decoder)
            self._decoder.check_boundary()
        except RemoteProtocolError as exc:
            self._fail(exc.error_code, f"decoding: {exc.message}")
            return
        if not self.welcomed:
            if not frames:
                return  # an empty message: still waiting for the Hello
            if not self._handshake(frames[0]):
                return
            frames = frames[1:]
        for frame in frames:
            self._dispatch(frame)
            if self.error is not None:
                return

    def _handshake(self, first: fr.Frame) -> bool:
        if not isinstance(first, fr.Hello):
            self._fail(fr.ErrorCode.UNEXPECTED_FRAME, f"{type(first).__name__} before Hello")
            return False
        code = spec_model.hello_verdict(first)  # the document's answer, not the codec's
        if code is not None:
            self._fail(code, "hello")
            return False
        hello = self._state.receive_hello(first)
        engine = hello.engine or self._default_engine
        voices = self._engines.get(engine, ())
        if self._token and hello.token != self._token:
            self._fail(fr.ErrorCode.AUTH_FAILED, "token")
        elif hello.uplink_rate_hz and not self._uplink:
            self._fail(fr.ErrorCode.UNSUPPORTED_FORMAT, "no uplink here")
        elif not voices:
            self._fail(fr.ErrorCode.UNKNOWN_ENGINE, f"engine {engine!r}")
        elif (hello.voice or voices[0]) not in voices:
            self._fail(fr.ErrorCode.UNKNOWN_VOICE, f"voice {hello.voice!r}")
        if self.error is not None:
            return False
        self._state.send(
            fr.Welcome(
                version=self._state.version,
                session_id=bytes(16),
                sample_rate_hz=hello.sample_rate_hz,
                frame_samples=fr.frame_samples(hello.sample_rate_hz),
                uplink_rate_hz=hello.uplink_rate_hz,
                max_frame_bytes=self.limits.max_frame_bytes,
                max_text_bytes=self.limits.max_text_bytes,
                max_queued_utterances=self.limits.max_queued_utterances,
                engine=engine,
                voice=hello.voice or voices[0],
            )
        )
        self.welcomed = True
        return True

    def _dispatch(self, frame: fr.Frame) -> None:
        if self._noisy_uplink and isinstance(frame, fr.Text):
            self.certain = False  # a VAD barge-in may have cancelled utterances meanwhile
        try:
            self._state.receive(frame)
        except RemoteProtocolError as exc:
            if exc.error_code is fr.ErrorCode.LIMIT_EXCEEDED and "queued" in exc.message:
                self.certain = False  # utterances may have finished playing meanwhile
            self._fail(exc.error_code, f"{type(frame).__name__}: {exc.message}")
            return
        if isinstance(frame, fr.AudioUp):
            if frame.seq < self._next_seq:
                self._fail(fr.ErrorCode.UNEXPECTED_FRAME, "AudioUp seq went backwards")
            elif frame.seq - self._next_seq > MAX_GAP_FRAMES:
                self._fail(fr.ErrorCode.UNEXPECTED_FRAME, "AudioUp seq jumped too far")
            else:
                self._next_seq = frame.seq + 1
                self._noisy_uplink = self._noisy_uplink or any(frame.pcm)
