"""What a duplexd daemon must answer to the WebSocket messages a client sent it.

`Oracle` replays the client's messages through the sans-I/O layer exactly as the daemon reads
them, frame by frame (SPEC §10, last paragraph; `duplexd._server.handshake.receive_hello`,
then `Session._act_on_message`):

- a text message is NOT_BINARY;
- before Welcome (`receive_hello`): only the first frame of a message is decoded (unknown
  optional frames before it are skipped); none yet: a cut frame at the end of the message is
  MALFORMED, else (an empty message, only skipped frames) the Hello is still awaited. The
  Hello is checked whole by `spec_model.hello_verdict` (version, formats, options: what the
  document says, so that a daemon bug there shows); a Hello whose options resume a session
  (§6.4) is then answered RESUME_FAILED (there is no such session: the fuzz never resumes a
  real one) before the uplink, the engine and the voice are looked at and whatever follows
  the Hello is read; otherwise the uplink, the engine and the voice, then Welcome;
- once open, each message, the rest of the Hello's message first, is decoded and acted upon
  one frame at a time: every frame takes a frame-budget token before it is acted upon (a
  message with no bytes takes one too; unknown optional frames are skipped by the decoder and
  take none), then goes through `ServerProtocolState.receive` and AudioUp's `seq` rules of
  SPEC §4.6; a decoding error stops at that frame (the frames before it were acted upon),
  and a frame cut at the end of the message is MALFORMED once every whole frame before it
  was acted upon.

The frame budget (SPEC §10 `frame_burst`, `max_frames_per_s`) is modelled as full at the
start of every message: the fuzz daemon refills it so fast (`Limits.max_frames_per_s`) that
only a message of more than `frame_burst` frames can run it dry, and then it surely does
(a bucket never holds more than `frame_burst`). A message that needs more than half the
burst is where a bucket not yet refilled could matter: the network fuzz sends those one at a
time (its `flood` family), after the previous one's session ended and the bucket refilled.

`acted_pings` are the nonces of the Pings the daemon must have acted upon: a Pong for any
other nonce is wrong (a Pong for an acted-upon Ping may still be lost when the session fails:
the writer stops at its error).

A prediction can be uncertain where the daemon's answer depends on timing: a queue-limit
LIMIT_EXCEEDED (utterances may have finished playing meanwhile), anything after uplink audio
that is not silence (the daemon's VAD may barge in). More answers asked for than the daemon
keeps waiting (`MAX_PENDING_ANSWERS`) are no error: it reads on as they go out (SPEC §10).
The network fuzz does not count a disagreement where the prediction is uncertain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder, RemoteProtocolError
from duplexd.protocol.state import ServerProtocolState

from . import spec_model

MAX_GAP_FRAMES = 250  # SPEC §4.6: the daemon fills a forward gap of up to 250 frames
MAX_PENDING_ANSWERS = 1024  # SPEC §10 max_pending_answers
MAX_MESSAGE_BYTES = 1 << 20  # SPEC §10 max_message_bytes: over it, FRAME_TOO_LARGE
# frames whose answer waits on the daemon's writer (Interrupted too)
ANSWERED = (fr.Ping, fr.Pause, fr.Resume, fr.GetStats, fr.Interrupt)


@dataclass(frozen=True)
class Limits:
    """The daemon's `[limits]` that decide its answers (what its Welcome announces)."""

    max_frame_bytes: int = fr.MAX_FRAME_BYTES
    max_text_bytes: int = 32_768
    max_queued_utterances: int = 16
    frame_burst: int = 10_000
    max_frames_per_s: float = 1000.0

    @property
    def welcome_fields(self) -> tuple[int, int, int]:
        return (self.max_frame_bytes, self.max_text_bytes, self.max_queued_utterances)


class Oracle:
    def __init__(
        self,
        limits: Limits,
        *,
        engines: Mapping[str, tuple[str, ...]],  # engine -> voices, the first the default
        default_engine: str,
        uplink: bool = True,
    ) -> None:
        self.limits = limits
        self._engines = engines
        self._default_engine = default_engine
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
        self.stopped = False  # nothing more is modelled (an error, or the model gave up)
        self.frames_acted = 0  # frames the daemon must have acted upon since Welcome
        self.tokens = 0  # frame-budget tokens taken since Welcome
        self.answers = 0  # answers asked for since Welcome
        self.acted_pings: set[int] = set()
        self._next_seq = 0
        self._noisy_uplink = False

    def _fail(self, code: fr.ErrorCode, why: str) -> None:
        if self.error is None:
            self.error, self.why = code, why
        self.stopped = True

    def text_message(self) -> None:
        if not self.stopped:
            self._fail(fr.ErrorCode.NOT_BINARY, "a text message")

    def hello_timeout(self) -> None:
        """The daemon's hello timeout passed (what it does when no Hello came)."""
        if not self.welcomed and not self.stopped:
            self._fail(fr.ErrorCode.UNEXPECTED_FRAME, "no Hello within the hello timeout")

    def binary_message(self, data: bytes) -> None:
        if self.stopped:
            return
        if len(data) > MAX_MESSAGE_BYTES:
            self._fail(fr.ErrorCode.FRAME_TOO_LARGE, "a message over max_message_bytes")
            return
        self._decoder.receive_data(data)  # (never raises: an error stopped us first)
        if not self.welcomed and not self._await_hello():
            return
        self._act_on_message()

    # ------------------------------------------------------------------ the handshake

    def _await_hello(self) -> bool:
        """One message before Welcome; True once the session is open (the rest of the
        message is then the session's)."""
        try:
            first = self._decoder.next_frame()
            if first is None:
                self._decoder.check_boundary()  # an empty message is fine; half a frame is not
                return False
        except RemoteProtocolError as exc:
            self._fail(exc.error_code, f"decoding before Hello: {exc.message}")
            return False
        return self._handshake(first)

    def _handshake(self, first: fr.Frame) -> bool:
        if not isinstance(first, fr.Hello):
            self._fail(fr.ErrorCode.UNEXPECTED_FRAME, f"{type(first).__name__} before Hello")
            return False
        code = spec_model.hello_verdict(first)  # the document's answer, not the codec's
        if code is not None:
            self._fail(code, "hello")
            return False
        try:
            hello = self._state.receive_hello(first)
        except RemoteProtocolError as exc:  # the daemon will refuse what the document accepts
            self.welcomed, self.stopped = True, True  # so that its Error shows as unexpected
            self.why = f"the document accepts this Hello, ServerProtocolState says {exc!r}"
            return False
        if spec_model.resumes(first.options):
            self._fail(fr.ErrorCode.RESUME_FAILED, "resumes a session that does not exist")
            return False
        engine = hello.engine or self._default_engine
        voices = self._engines.get(engine, ())
        if hello.uplink_rate_hz and not self._uplink:
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

    # ------------------------------------------------------------------ the open session

    def _act_on_message(self) -> None:
        """`Session._act_on_message`: frame by frame, a token each, then the boundary."""
        decoder = self._decoder
        tokens = self.limits.frame_burst  # refilled (see the module doc)
        if not decoder.buffered_bytes:  # an empty message costs a token too
            tokens -= 1
            self.tokens += 1
        while True:
            try:
                frame = decoder.next_frame()
            except RemoteProtocolError as exc:
                self._fail(exc.error_code, f"decoding frame {self.frames_acted}: {exc.message}")
                return
            if frame is None:
                break
            if tokens < 1:
                self._fail(fr.ErrorCode.LIMIT_EXCEEDED, "frame budget spent in one message")
                return
            tokens -= 1
            self.tokens += 1
            self._dispatch(frame)
            if self.error is not None:
                return
            self.frames_acted += 1
        try:
            decoder.check_boundary()  # a frame must not span WebSocket messages
        except RemoteProtocolError as exc:
            self._fail(exc.error_code, f"a frame cut at the end of a message: {exc.message}")

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
        if isinstance(frame, ANSWERED):
            self.answers += 1
        if isinstance(frame, fr.Ping):
            self.acted_pings.add(frame.nonce)
        elif isinstance(frame, fr.AudioUp):
            if frame.seq < self._next_seq:
                self._fail(fr.ErrorCode.UNEXPECTED_FRAME, "AudioUp seq went backwards")
            elif frame.seq - self._next_seq > MAX_GAP_FRAMES:
                self._fail(fr.ErrorCode.UNEXPECTED_FRAME, "AudioUp seq jumped too far")
            else:
                self._next_seq = frame.seq + 1
                self._noisy_uplink = self._noisy_uplink or any(frame.pcm)
