"""Bad input never escapes a session: an Error frame with the right code, the right close code,
and the daemon keeps serving the next, healthy session (MockClock, in-memory WebSocket)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np
import pytest
import trio
import trio.testing
from harness import TEST_LIMITS, Pair, open_pair
from trio_websocket import ConnectionClosed

from duplexd._ops.settings import SessionLimits
from duplexd.engines.tone import ToneEngine, ToneVoice
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode

pytestmark = pytest.mark.unit
E = fr.ErrorCode
FRAME_S = 0.020


def raw(type_: int, body: bytes = b"", flags: int = 0) -> bytes:
    """A frame built by hand (the codec refuses to build most bad ones)."""
    return struct.pack("<IBB", 2 + len(body), type_, flags) + body


def text_frame(uid: int, text: bytes, end: bool = False) -> bytes:
    return raw(fr.FrameType.TEXT, struct.pack("<I", uid) + text, int(end))


async def handshake(pair: Pair, hello: fr.Hello | None = None) -> fr.Welcome:
    await pair.send(hello or fr.Hello())
    (welcome,) = await pair.receive()
    assert isinstance(welcome, fr.Welcome)
    return welcome


async def expect_error(pair: Pair, code: fr.ErrorCode) -> list[fr.Frame]:
    """Read until the server closes: the last frame is Error(`code`), then the close code."""
    frames: list[fr.Frame] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frames += await pair.receive()
    errors = [f for f in frames if isinstance(f, fr.Error)]
    assert [e.code for e in errors] == [code], frames[-3:]
    assert frames[-1] is errors[0]  # nothing after the Error
    assert errors[0].message  # a human-readable detail
    assert closed.value.reason is not None
    assert closed.value.reason.code == code.close_code
    return frames


async def assert_healthy(pair: Pair, hello: fr.Hello | None = None) -> None:
    """A whole normal session: Welcome, one utterance exactly on the 20 ms grid, Done."""
    await handshake(pair, hello)
    await speak_on_grid(pair)


async def speak_on_grid(pair: Pair, uid: int = 1) -> None:
    t0 = trio.current_time()
    await pair.send(fr.Text(uid, "Hi there.", end=True))  # 9 chars: 27 frames + END pad
    seen: list[tuple[float, fr.Frame]] = []
    while not any(isinstance(f, fr.UtteranceDone) for _, f in seen):
        frames = await pair.receive()
        seen += [(trio.current_time(), f) for f in frames]
    audio = [(t, f) for t, f in seen if isinstance(f, fr.Audio)]
    assert [f.seq for _, f in audio] == list(range(28))
    assert [t for t, _ in audio] == [t0 + n * FRAME_S for n in range(28)]
    assert seen[-1][1] == fr.UtteranceDone(0, uid, 27 * 960, 9)


@dataclass(frozen=True)
class Case:
    name: str
    code: fr.ErrorCode
    messages: tuple[bytes | str, ...]  # sent after the handshake (or instead of it)
    hello: fr.Hello | None = field(default_factory=fr.Hello)  # None: no handshake first
    limits: SessionLimits = TEST_LIMITS


TEXT_HI = encode(fr.Text(1, "Hi there.", end=True))
CASES = [
    Case("malformed length", E.MALFORMED, (b"\x01\x00\x00\x00\x03",)),
    Case("oversize length prefix", E.FRAME_TOO_LARGE, (b"\xfd\xff\x00\x00\x02\x00",)),
    Case(
        "oversize for a small limit",
        E.FRAME_TOO_LARGE,
        (text_frame(1, b"x" * 4096),),
        limits=SessionLimits(ring_frames=1024, max_frame_bytes=4096),
    ),
    Case("unknown type", E.UNKNOWN_TYPE, (raw(0x08, b"abc"),)),
    Case("server type from a client", E.UNEXPECTED_FRAME, (raw(0x87, bytes(16)),)),
    Case("reserved flag", E.MALFORMED, (raw(fr.FrameType.INTERRUPT, flags=0x01),)),
    Case("body of the wrong size", E.MALFORMED, (raw(fr.FrameType.PING, bytes(7)),)),
    Case("frame spanning two messages", E.MALFORMED, (TEXT_HI[:7], TEXT_HI[7:])),
    Case("text before hello", E.UNEXPECTED_FRAME, (TEXT_HI,), hello=None),
    Case("second hello", E.UNEXPECTED_FRAME, (encode(fr.Hello()),)),
    Case("bad utf-8", E.MALFORMED, (text_frame(1, b"ok \xc3\x28", end=True),)),
    Case("surrogate in utf-8", E.MALFORMED, (text_frame(1, b"\xed\xa0\x80", end=True),)),
    Case("text after end", E.TEXT_AFTER_END, (TEXT_HI, encode(fr.Text(1, "more")))),
    Case("utterance id 0", E.BAD_UTTERANCE_ID, (encode(fr.Text(0, "zero")),)),
    Case(
        "older utterance id",
        E.BAD_UTTERANCE_ID,
        (encode(fr.Text(5, "Five.", end=True)), encode(fr.Text(3, "three"))),
    ),
    Case(
        "new id while a text is open",
        E.BAD_UTTERANCE_ID,
        (encode(fr.Text(1, "open")), encode(fr.Text(2, "two"))),
    ),
    Case(
        "text over max_text_bytes",
        E.LIMIT_EXCEEDED,
        (encode(fr.Text(1, "a" * 40)), encode(fr.Text(1, "b" * 40))),
        limits=SessionLimits(ring_frames=1024, max_text_bytes=64),
    ),
    Case(
        "too many queued utterances",
        E.LIMIT_EXCEEDED,
        tuple(encode(fr.Text(i, "Queued.", end=True)) for i in (1, 2, 3)),
        limits=SessionLimits(ring_frames=1024, max_queued_utterances=2),
    ),
    Case("text websocket message", E.NOT_BINARY, ("hello",)),
    Case("text websocket message first", E.NOT_BINARY, ("hello",), hello=None),
    Case("audio up without uplink", E.UNEXPECTED_FRAME, (encode(fr.AudioUp(0, bytes(640))),)),
]
HELLO_CASES = [
    Case("unsupported version", E.UNSUPPORTED_VERSION, (), fr.Hello(min_version=2, max_version=3)),
    Case("min over max version", E.UNSUPPORTED_VERSION, (), fr.Hello(min_version=1, max_version=0)),
    Case("unsupported sample rate", E.UNSUPPORTED_FORMAT, (), fr.Hello(sample_rate_hz=44_100)),
    Case("unsupported frame ms", E.UNSUPPORTED_FORMAT, (), fr.Hello(frame_ms=10)),
    Case("unknown engine", E.UNKNOWN_ENGINE, (), fr.Hello(engine="nope")),
    Case("unknown voice", E.UNKNOWN_VOICE, (), fr.Hello(voice="nobody")),
    Case("options not an object", E.BAD_OPTIONS, (), fr.Hello(options="[1, 2]")),
]


@pytest.mark.parametrize("case", CASES + HELLO_CASES, ids=lambda c: c.name)
async def test_bad_input_gets_error_and_close(
    case: Case, autojump_clock: trio.testing.MockClock
) -> None:
    good_hello = fr.Hello()
    async with open_pair(limits=case.limits, sessions=2) as (bad, good):
        if case.hello is not None:
            await bad.send(case.hello)
            if case.hello == good_hello:
                (welcome,) = await bad.receive()
                assert isinstance(welcome, fr.Welcome)
        for message in case.messages:
            await bad.client.send_message(message)
        await expect_error(bad, case.code)
        with trio.fail_after(2):
            await bad.done.wait()  # the session's run() returned
        assert bad.sessions[0].error_code is case.code
        assert bad.pacer.scheduled == 0
        await assert_healthy(good, good_hello)


async def test_unknown_optional_type_is_skipped(autojump_clock: trio.testing.MockClock) -> None:
    async with open_pair() as (pair,):
        await handshake(pair)
        # flags and body of a skipped optional frame are not inspected; the Ping beside it
        # in the same message is still answered, and the session goes on as usual
        skipped = raw(0x4E, b"\xff\xfe anything", flags=0xFF) + raw(0x7F)
        await pair.client.send_message(skipped + encode(fr.Ping(nonce=99)))
        (pong,) = await pair.receive()
        assert isinstance(pong, fr.Pong) and pong.nonce == 99
        await speak_on_grid(pair)
        assert pair.sessions[0].error_code is None


async def test_no_hello_within_the_timeout(autojump_clock: trio.testing.MockClock) -> None:
    limits = SessionLimits(ring_frames=1024, hello_timeout_s=2.5)
    async with open_pair(limits=limits, sessions=2) as (silent, good):
        t0 = trio.current_time()
        await assert_healthy(good)  # meanwhile another session is served normally
        await expect_error(silent, E.UNEXPECTED_FRAME)
        assert trio.current_time() == t0 + 2.5  # the Error left exactly at the deadline
        await silent.done.wait()
        assert silent.sessions[0].error_code is E.UNEXPECTED_FRAME


async def test_peer_vanishing_mid_utterance_leaks_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pair(sessions=2) as (gone, good):
        await handshake(gone)
        await gone.send(
            fr.Text(1, "Hello there, how are you today?", end=True), fr.Text(2, "More.")
        )
        for _ in range(10):
            await gone.receive()
        assert gone.pacer.scheduled == 1
        t = trio.current_time()
        await gone.stream.aclose()  # no WebSocket close: the TCP connection just drops
        with trio.fail_after(1):
            await gone.done.wait()
        assert trio.current_time() == t  # noticed at once, not at a timeout
        session = gone.sessions[0]
        assert session.error_code is None  # nobody left to tell
        assert gone.pacer.scheduled == 0  # its pacer slot is gone
        await assert_healthy(good)


class BoomVoice(ToneVoice):
    def synthesize(self, text: str) -> np.ndarray:
        raise RuntimeError("engine exploded")


class BoomEngine(ToneEngine):
    """The tone engine plus a voice "boom" whose synthesis always raises."""

    def voices(self) -> list[str]:
        return [*super().voices(), "boom"]

    def open_voice(self, name: str) -> ToneVoice:
        if name == "boom":
            return BoomVoice(
                "boom", 220.0, sample_rate_hz=48_000, ms_per_char=60.0, compute_ms_per_char=0.0
            )
        return super().open_voice(name)


async def test_engine_failure_is_internal_and_spares_other_sessions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pair(BoomEngine(), sessions=2) as (boom, good):
        await handshake(good)
        t0 = trio.current_time()
        await good.send(fr.Text(1, "Hello there, how are you today?", end=True))
        audio: list[tuple[float, fr.Audio]] = []
        while len(audio) < 10:
            audio += [
                (trio.current_time(), f) for f in await good.receive() if isinstance(f, fr.Audio)
            ]
        await handshake(boom, fr.Hello(voice="boom"))
        await boom.send(fr.Text(1, "Say something.", end=True))
        await expect_error(boom, E.INTERNAL)
        assert boom.sessions[0].error_code is E.INTERNAL
        while not audio[-1][1].last:
            audio += [
                (trio.current_time(), f) for f in await good.receive() if isinstance(f, fr.Audio)
            ]
    assert [t for t, _ in audio] == [t0 + n * FRAME_S for n in range(91)]
    assert [f.seq for _, f in audio] == list(range(91))


@pytest.mark.parametrize(
    ("seqs", "code"),
    [
        ([0, 0], E.UNEXPECTED_FRAME),  # repeated
        ([0, 1, 0], E.UNEXPECTED_FRAME),  # backwards
        ([0, 252], E.UNEXPECTED_FRAME),  # a forward gap of 251 frames
        ([0, 251, 252], None),  # a gap of 250 frames (5 s): filled with silence
        ([2, 3], None),  # the first frame is expected to be 0: a gap of 2
    ],
    ids=["repeated", "backwards", "gap 251", "gap 250", "first not 0"],
)
async def test_audio_up_seq(
    seqs: list[int], code: fr.ErrorCode | None, autojump_clock: trio.testing.MockClock
) -> None:
    """SPEC §4.6: `seq` must increase; a repeated or smaller one is UNEXPECTED_FRAME; a forward
    gap of up to 250 frames (counted from the frame expected next, 0 first) is silence."""
    async with open_pair() as (pair,):
        await handshake(pair, fr.Hello(uplink_rate_hz=16_000))
        await pair.send(*[fr.AudioUp(seq, bytes(640)) for seq in seqs], fr.Ping(1))
        if code is not None:
            error = (await expect_error(pair, code))[-1]
            assert isinstance(error, fr.Error) and "seq" in error.message
            return
        assert [type(f) for f in await pair.receive()] == [fr.Pong]
        session = pair.sessions[0].session
        assert session is not None and session._uplink is not None
        assert session._uplink.counters.frames == len(seqs)
