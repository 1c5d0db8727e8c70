"""The server's session rules (duplexd.protocol.state)."""

from __future__ import annotations

import pytest

from duplexd.protocol.codec import LocalProtocolError, RemoteProtocolError
from duplexd.protocol.frames import (
    Audio,
    AudioUp,
    Error,
    ErrorCode,
    GetStats,
    Hello,
    Interrupt,
    Interrupted,
    Pause,
    Ping,
    Pong,
    Resume,
    SpeechStarted,
    Text,
    Transcript,
    UtteranceDone,
    Welcome,
    frame_samples,
)
from duplexd.protocol.state import Phase, ServerProtocolState, check_audio_format, negotiate_version


def welcome(hello: Hello) -> Welcome:
    return Welcome(
        version=1,
        session_id=bytes(16),
        sample_rate_hz=hello.sample_rate_hz,
        frame_samples=frame_samples(hello.sample_rate_hz),
        uplink_rate_hz=hello.uplink_rate_hz,
        max_frame_bytes=65536,
        max_text_bytes=100,
        max_queued_utterances=3,
        engine="tone",
        voice="a",
    )


def open_state(
    *, max_text_bytes: int = 100, max_queued: int = 3, hello: Hello | None = None
) -> ServerProtocolState:
    hello = hello or Hello()
    state = ServerProtocolState(max_text_bytes=max_text_bytes, max_queued_utterances=max_queued)
    state.receive(hello)
    state.send(welcome(hello))
    return state


def done(uid: int) -> UtteranceDone:
    return UtteranceDone(epoch=0, utterance_id=uid, samples_sent=960, chars_spoken=1)


def raises(state: ServerProtocolState, frame: object, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        state.receive(frame)
    assert info.value.error_code is code


@pytest.mark.unit
@pytest.mark.parametrize("frame", [Text(1, "x"), Ping(1), Interrupt(), Pause(), GetStats()])
def test_await_hello_only_hello(frame: object) -> None:
    state = ServerProtocolState(max_text_bytes=10, max_queued_utterances=1)
    assert state.phase is Phase.AWAIT_HELLO
    raises(state, frame, ErrorCode.UNEXPECTED_FRAME)


@pytest.mark.unit
def test_hello_then_open() -> None:
    state = ServerProtocolState(max_text_bytes=10, max_queued_utterances=1)
    with pytest.raises(LocalProtocolError):
        state.send(welcome(Hello()))  # no Hello yet
    state.receive(Hello())
    assert state.hello == Hello() and state.version == 1
    raises(state, Hello(), ErrorCode.UNEXPECTED_FRAME)  # a second Hello


@pytest.mark.unit
def test_open_phase_rules() -> None:
    state = open_state()
    assert state.phase is Phase.OPEN
    for frame in (Pause(), Pause(), Resume(), Ping(5), GetStats(), Interrupt()):
        state.receive(frame)
    raises(state, Hello(), ErrorCode.UNEXPECTED_FRAME)
    raises(open_state(), Audio(0, 1, 0, b""), ErrorCode.UNEXPECTED_FRAME)  # server frame
    raises(open_state(), AudioUp(0, b""), ErrorCode.UNEXPECTED_FRAME)  # no uplink


@pytest.mark.unit
def test_audio_up_with_uplink() -> None:
    state = open_state(hello=Hello(uplink_rate_hz=16_000))
    state.receive(AudioUp(0, bytes(640)))


@pytest.mark.unit
def test_closed_accepts_nothing() -> None:
    state = open_state()
    state.close()
    assert state.phase is Phase.CLOSED
    raises(state, Ping(1), ErrorCode.UNEXPECTED_FRAME)
    raises(state, Hello(), ErrorCode.UNEXPECTED_FRAME)


@pytest.mark.unit
@pytest.mark.parametrize("options", ['{"speed": 1.2}', "{}", ""])
def test_hello_options_ok(options: str) -> None:
    ServerProtocolState(max_text_bytes=1, max_queued_utterances=1).receive(Hello(options=options))


@pytest.mark.unit
@pytest.mark.parametrize(
    "options",
    [
        "[]",
        "1",
        "{",
        "null",
        "[" * 50_000,
        '{"vad": {"threshold": 1' + "0" * 309 + "}}",  # beyond a float (was INTERNAL: fuzz)
        '{"x": NaN}',  # not RFC 8259 JSON, even under an unknown key
        '{"asr": {"partial_ms": Infinity}}',
        '{"resume": {"session_id": "' + "ab " * 16 + '", "token": "t", "received": 0}}',
        '{"resume": {"session_id": "' + "ab" * 15 + '", "token": "t", "received": 0}}',
        '{"resume": {"session_id": "' + "ab" * 16 + '", "token": "", "received": 0}}',
        '{"resume": {"session_id": "' + "ab" * 16 + '", "token": "t", "received": -1}}',
        '{"resume": {"session_id": "' + "ab" * 16 + '", "token": "t", "received": true}}',
    ],
)
def test_hello_bad_options(options: str) -> None:
    state = ServerProtocolState(max_text_bytes=1, max_queued_utterances=1)
    raises(state, Hello(options=options), ErrorCode.BAD_OPTIONS)


@pytest.mark.unit
def test_hello_is_checked_whole_when_it_arrives() -> None:
    state = ServerProtocolState(max_text_bytes=1, max_queued_utterances=1)
    state.receive(Hello(options='{"vad": {"threshold": 0.6}, "asr": {"transcripts": false}}'))
    assert state.options.vad.threshold == 0.6 and not state.options.asr.transcripts
    for bad, code in (
        (Hello(min_version=2, max_version=3), ErrorCode.UNSUPPORTED_VERSION),
        (Hello(sample_rate_hz=44_100), ErrorCode.UNSUPPORTED_FORMAT),
        (Hello(options='{"vad": {"threshold": 7}}'), ErrorCode.BAD_OPTIONS),
    ):
        fresh = ServerProtocolState(max_text_bytes=1, max_queued_utterances=1)
        raises(fresh, bad, code)
        assert fresh.hello is None and fresh.phase is Phase.AWAIT_HELLO


@pytest.mark.unit
def test_what_the_server_may_send_when() -> None:
    state = ServerProtocolState(max_text_bytes=10, max_queued_utterances=2)
    with pytest.raises(LocalProtocolError):
        state.send(Pong(1, 2))  # before the Welcome
    state.receive(Hello())
    with pytest.raises(LocalProtocolError):
        state.send(welcome(Hello(uplink_rate_hz=16_000)))  # an uplink nobody asked for
    state.send(welcome(Hello()))
    with pytest.raises(LocalProtocolError):
        state.send(welcome(Hello()))  # a second Welcome
    with pytest.raises(LocalProtocolError):
        state.send(Ping(1))  # a client frame
    for frame in (SpeechStarted(0), Transcript(0, 1, "hi")):
        with pytest.raises(LocalProtocolError):
            state.send(frame)  # uplink events without an uplink
    state.send(Pong(1, 2))
    state.send(Error(ErrorCode.GOING_AWAY, "bye"))
    assert state.phase is Phase.CLOSED
    with pytest.raises(LocalProtocolError):
        state.send(Pong(1, 2))  # nothing after the Error
    uplink = open_state(hello=Hello(uplink_rate_hz=16_000))
    uplink.send(SpeechStarted(0))
    uplink.send(Transcript(0, 1, "hi"))


@pytest.mark.unit
def test_error_may_refuse_a_hello() -> None:
    state = ServerProtocolState(max_text_bytes=10, max_queued_utterances=2)
    state.receive(Hello(token="wrong"))
    state.send(Error(ErrorCode.AUTH_FAILED, "bad or missing token"))  # instead of Welcome
    assert state.phase is Phase.CLOSED


@pytest.mark.unit
def test_server_barge_in_is_a_method_like_a_client_interrupt() -> None:
    state = open_state()
    assert state.barge_in() is False  # nothing active: nothing to interrupt
    state.receive(Text(1, "a", end=True))
    state.receive(Text(2, "still streaming"))
    assert state.barge_in() is True
    assert state.active_utterances == () and state.open_utterance is None
    assert state.receive(Text(2, " more")) is False  # still streaming: ignored, as after Interrupt
    state.receive(Text(3, "next", end=True))
    state.send(Interrupted(1, 0, 0, 0, 2, vad=True))
    assert state.active_utterances == (3,)
    with pytest.raises(LocalProtocolError):
        ServerProtocolState(max_text_bytes=1, max_queued_utterances=1).barge_in()


@pytest.mark.unit
def test_utterance_lifecycle() -> None:
    state = open_state()
    state.receive(Text(1, "Hello, "))
    assert state.open_utterance == 1
    state.receive(Text(1, "world.", end=True))
    assert state.open_utterance is None
    state.receive(Text(5, "Next", end=True))  # gaps are fine, ids only grow
    assert state.active_utterances == (1, 5)
    state.send(done(1))
    state.send(done(1))  # idempotent
    assert state.active_utterances == (5,)


@pytest.mark.unit
def test_utterance_id_rules() -> None:
    state = open_state()
    raises(state, Text(0, "zero"), ErrorCode.BAD_UTTERANCE_ID)
    state = open_state()
    state.receive(Text(3, "a", end=True))
    raises(state, Text(3, "again"), ErrorCode.TEXT_AFTER_END)
    state = open_state()
    state.receive(Text(3, "a", end=True))
    raises(state, Text(2, "older"), ErrorCode.BAD_UTTERANCE_ID)
    state = open_state()
    state.receive(Text(3, "open"))
    raises(state, Text(4, "while 3 is open"), ErrorCode.BAD_UTTERANCE_ID)


@pytest.mark.unit
def test_id_zero_is_bad_even_after_an_interrupt() -> None:
    """SPEC §6.2: id 0 is checked before the "cancelled ids are ignored" rule."""
    state = open_state()
    state.receive(Text(1, "a", end=True))
    state.receive(Interrupt())
    assert state.receive(Text(1, "late")) is False  # cancelled: ignored
    raises(state, Text(0, "zero"), ErrorCode.BAD_UTTERANCE_ID)


@pytest.mark.unit
def test_interrupt_drops_everything() -> None:
    state = open_state()
    state.receive(Text(1, "a", end=True))
    state.receive(Text(2, "b"))
    state.receive(Interrupt())
    assert state.active_utterances == ()
    assert state.open_utterance is None
    assert state.receive(Text(2, "still streaming")) is False  # ignored
    assert state.receive(Text(1, "old")) is False
    assert state.active_utterances == ()
    raises(state, Text(2 + 1, "x" * 101), ErrorCode.LIMIT_EXCEEDED)  # a fresh one is checked
    state = open_state()
    state.receive(Text(2, "b"))
    state.receive(Interrupt())
    assert state.receive(Text(3, "fresh", end=True)) is True
    assert state.active_utterances == (3,)
    raises(state, Text(3, "again"), ErrorCode.TEXT_AFTER_END)
    state.send(done(3))
    state.receive(Interrupt())  # nothing active: cancels nothing
    raises(state, Text(3, "again"), ErrorCode.TEXT_AFTER_END)


@pytest.mark.unit
def test_text_byte_limit() -> None:
    state = open_state(max_text_bytes=10)
    state.receive(Text(1, "ü" * 5))  # 10 bytes
    state.receive(Text(1, "", end=True))
    state.receive(Text(2, "123456789"))
    raises(state, Text(2, "ü"), ErrorCode.LIMIT_EXCEEDED)


@pytest.mark.unit
def test_queue_limit() -> None:
    state = open_state(max_queued=2)
    state.receive(Text(1, "a", end=True))
    state.receive(Text(2, "b", end=True))
    raises(state, Text(3, "c", end=True), ErrorCode.LIMIT_EXCEEDED)
    state = open_state(max_queued=2)
    state.receive(Text(1, "a", end=True))
    state.receive(Text(2, "b", end=True))
    state.send(done(1))
    state.receive(Text(3, "c", end=True))
    assert state.active_utterances == (2, 3)


@pytest.mark.unit
def test_constructor_limits() -> None:
    with pytest.raises(ValueError):
        ServerProtocolState(max_text_bytes=0, max_queued_utterances=1)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("lo", "hi", "srv_lo", "srv_hi", "expected"),
    [(1, 1, 1, 1, 1), (1, 5, 1, 3, 3), (2, 4, 1, 3, 3), (4, 5, 1, 3, None), (2, 1, 1, 3, None)],
)
def test_negotiate_version(
    lo: int, hi: int, srv_lo: int, srv_hi: int, expected: int | None
) -> None:
    hello = Hello(min_version=lo, max_version=hi)
    if expected is None:
        with pytest.raises(RemoteProtocolError) as info:
            negotiate_version(hello, min_supported=srv_lo, max_supported=srv_hi)
        assert info.value.error_code is ErrorCode.UNSUPPORTED_VERSION
    else:
        assert negotiate_version(hello, min_supported=srv_lo, max_supported=srv_hi) == expected


@pytest.mark.unit
def test_check_audio_format() -> None:
    for ok in (Hello(), Hello(sample_rate_hz=16_000, uplink_rate_hz=48_000)):
        check_audio_format(ok)
    for bad in (Hello(sample_rate_hz=44_100), Hello(frame_ms=10), Hello(uplink_rate_hz=24_000)):
        with pytest.raises(RemoteProtocolError) as info:
            check_audio_format(bad)
        assert info.value.error_code is ErrorCode.UNSUPPORTED_FORMAT
