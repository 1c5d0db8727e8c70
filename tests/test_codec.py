"""Property and edge tests of the sans-I/O codec (duplexd.protocol.codec)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duplexd.protocol.codec import (
    AUDIO_HEADER,
    FRAME_CLASSES,
    FRAME_TYPES,
    Decoder,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    encode,
    encode_audio_header,
    pack_audio_header_into,
)
from duplexd.protocol.frames import (
    AUDIO_HEADER_BYTES,
    MAX_FRAME_BYTES,
    Audio,
    AudioUp,
    CloseCode,
    Error,
    ErrorCode,
    Frame,
    FrameType,
    GetStats,
    Hello,
    Interrupt,
    Interrupted,
    Pause,
    Paused,
    Ping,
    Pong,
    Resume,
    Resumed,
    SpeechStarted,
    SpeechStopped,
    Stats,
    Text,
    Transcript,
    UtteranceDone,
    UtteranceStarted,
    Welcome,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
text = st.text(max_size=40)  # any code points; lone surrogates are filtered below
short = st.text(max_size=12)
pcm = st.integers(0, 200).flatmap(lambda n: st.binary(min_size=2 * n, max_size=2 * n))
json_text = st.sampled_from(["", "{}", '{"a": 1}', '{"voice": "Zoë 😀", "x": [1, 2]}'])


def _encodable(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


text = text.filter(_encodable)
short = short.filter(_encodable)

CLIENT_FRAMES: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Hello, u16, u16, u32, u16, u32, short, short, short, json_text),
    st.builds(Text, u32, text, st.booleans()),
    st.just(Interrupt()),
    st.just(Pause()),
    st.just(Resume()),
    st.builds(Ping, u64),
    st.builds(AudioUp, u32, pcm),
    st.just(GetStats()),
)
SERVER_FRAMES: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        Welcome,
        u16,
        st.binary(min_size=16, max_size=16),
        u32,
        u32,
        u32,
        u32,
        u32,
        u32,
        short,
        short,
        json_text,
    ),
    st.builds(Audio, u16, u32, u32, pcm, st.booleans()),
    st.builds(UtteranceStarted, u16, u32),
    st.builds(UtteranceDone, u16, u32, u64, u32),
    st.builds(Interrupted, u16, u32, u64, u32, u32),
    st.just(Paused()),
    st.just(Resumed()),
    st.builds(Pong, u64, u64),
    st.builds(Error, st.sampled_from(ErrorCode), text),
    st.builds(SpeechStarted, u64),
    st.builds(SpeechStopped, u64),
    st.builds(Transcript, u64, u64, text, st.booleans()),
    st.builds(Stats, json_text),
)


def peer_of(frame: Frame) -> Any:
    return "client" if FRAME_TYPES[type(frame)].from_client else "server"


def decode(peer: Any, chunks: list[bytes]) -> list[Frame]:
    decoder = Decoder(peer=peer)
    out: list[Frame] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        out.extend(decoder.frames())
    decoder.check_boundary()
    return out


# --------------------------------------------------------------------------- round trips


@pytest.mark.unit
def test_strategies_cover_every_type() -> None:
    assert set(FRAME_CLASSES) == set(FrameType)
    assert {FRAME_TYPES[c] for c in FRAME_CLASSES.values()} == set(FrameType)


@pytest.mark.unit
@FAST
@given(st.one_of(CLIENT_FRAMES, SERVER_FRAMES))
def test_round_trip(frame: Frame) -> None:
    data = encode(frame)
    assert struct.unpack_from("<I", data)[0] == len(data) - 4
    assert data[4] == FRAME_TYPES[type(frame)]
    assert decode(peer_of(frame), [data]) == [frame]


@pytest.mark.unit
@FAST
@given(st.lists(CLIENT_FRAMES, max_size=8), st.data())
def test_client_stream_any_split(frames: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(map(encode, frames))
    cut = data.draw(st.integers(0, len(stream)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert decode("client", [stream]) == frames
    assert decode("client", [stream[:cut], stream[cut:]]) == frames
    assert decode("client", pieces) == frames


@pytest.mark.unit
@FAST
@given(st.lists(SERVER_FRAMES, max_size=8))
def test_server_stream_byte_at_a_time(frames: list[Frame]) -> None:
    stream = b"".join(map(encode, frames))
    assert decode("server", [bytes([b]) for b in stream]) == frames


FIXED_STREAM: list[Frame] = [
    Welcome(1, bytes(16), 48_000, 960, 0, 65536, 4096, 16, "tone", "a440", '{"k": "ü"}'),
    UtteranceStarted(0, 1),
    Audio(0, 1, 0, bytes(range(40))),
    Audio(0, 1, 1, bytes(40), last=True),
    UtteranceDone(0, 1, 40, 3),
    Interrupted(1, 0, 0, 0, 0),
    Transcript(1, 2, "naïve ✓", final=False),
    Error(ErrorCode.GOING_AWAY, "bye ☺"),
]


@pytest.mark.unit
def test_fixed_stream_every_split_and_bytewise() -> None:
    stream = b"".join(map(encode, FIXED_STREAM))
    assert decode("server", [stream]) == FIXED_STREAM
    for cut in range(len(stream) + 1):
        assert decode("server", [stream[:cut], stream[cut:]]) == FIXED_STREAM
    assert decode("server", [bytes([b]) for b in stream]) == FIXED_STREAM


@pytest.mark.unit
def test_half_frame_changes_nothing() -> None:
    data = encode(Ping(7))
    decoder = Decoder(peer="client")
    for i, byte in enumerate(data[:-1]):
        decoder.receive_data(bytes([byte]))
        assert decoder.next_frame() is None
        assert decoder.buffered_bytes == i + 1
    decoder.receive_data(data[-1:])
    assert decoder.next_frame() == Ping(7)
    assert decoder.next_frame() is None
    assert decoder.buffered_bytes == 0


# --------------------------------------------------------------------------- decoder errors


@pytest.mark.unit
@pytest.mark.parametrize("max_frame_bytes", [MAX_FRAME_BYTES, 1024])
def test_oversize_detected_from_prefix_alone(max_frame_bytes: int) -> None:
    decoder = Decoder(peer="server", max_frame_bytes=max_frame_bytes)
    decoder.receive_data(struct.pack("<I", max_frame_bytes - 4 + 1)[:3])
    assert decoder.next_frame() is None
    decoder.receive_data(struct.pack("<I", max_frame_bytes - 4 + 1)[3:])
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.unit
def test_largest_frame_passes() -> None:
    frame = Audio(0, 1, 0, bytes(MAX_FRAME_BYTES - AUDIO_HEADER_BYTES), last=True)
    data = encode(frame)
    assert len(data) == MAX_FRAME_BYTES
    assert decode("server", [data]) == [frame]
    small = Decoder(peer="server", max_frame_bytes=MAX_FRAME_BYTES - 2)
    small.receive_data(data[:4])
    with pytest.raises(RemoteProtocolError, match="bytes >"):
        small.next_frame()


@pytest.mark.unit
def test_errors_are_sticky() -> None:
    decoder = Decoder(peer="client")
    decoder.receive_data(encode(Ping(1)) + b"\x02\x00\x00\x00\x3f\x00" + encode(Ping(2)))
    assert decoder.next_frame() == Ping(1)
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_frame()
    assert first.value.error_code is ErrorCode.UNKNOWN_TYPE
    for call in (decoder.next_frame, decoder.check_boundary, lambda: list(decoder)):
        with pytest.raises(RemoteProtocolError) as again:
            call()
        assert again.value is first.value
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(encode(Ping(3)))


@pytest.mark.unit
def test_skipped_optional_frames_are_counted() -> None:
    decoder = Decoder(peer="server")
    unknown = b"\x03\x00\x00\x00\xcf\x07\x00"
    decoder.receive_data(unknown + encode(Paused()) + unknown + unknown)
    assert list(decoder) == [Paused()]
    assert decoder.skipped_frames == 3
    assert decoder.buffered_bytes == 0


@pytest.mark.unit
def test_skipped_frame_still_bounded() -> None:
    decoder = Decoder(peer="client", max_frame_bytes=64)
    decoder.receive_data(struct.pack("<IBB", 100, 0x4F, 0))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE


@pytest.mark.unit
@pytest.mark.parametrize(
    ("peer", "frame", "code"),
    [
        ("client", Audio(0, 1, 0, b""), ErrorCode.UNEXPECTED_FRAME),
        ("server", Hello(), ErrorCode.UNEXPECTED_FRAME),
        ("server", GetStats(), ErrorCode.UNEXPECTED_FRAME),
        ("client", Stats("{}"), ErrorCode.UNEXPECTED_FRAME),
    ],
)
def test_wrong_direction(peer: Any, frame: Frame, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(peer, [encode(frame)])
    assert info.value.error_code is code


@pytest.mark.unit
def test_partial_frame_at_boundary() -> None:
    decoder = Decoder(peer="client")
    decoder.receive_data(encode(Ping(1))[:-1])
    assert list(decoder) == []
    with pytest.raises(RemoteProtocolError) as info:
        decoder.check_boundary()
    assert info.value.error_code is ErrorCode.MALFORMED


@pytest.mark.unit
def test_decoder_arguments() -> None:
    with pytest.raises(ValueError):
        Decoder(peer="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Decoder(peer="client", max_frame_bytes=MAX_FRAME_BYTES + 1)
    with pytest.raises(ValueError):
        Decoder(peer="client", max_frame_bytes=5)


# --------------------------------------------------------------------------- fuzz


def _feed_all(peer: Any, data: bytes) -> None:
    decoder = Decoder(peer=peer)
    try:
        decoder.receive_data(data)
        for _ in decoder:
            pass
        decoder.check_boundary()
    except RemoteProtocolError as exc:
        assert isinstance(exc.error_code, ErrorCode)
        assert isinstance(exc.close_code, int)


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["client", "server"]), st.binary(max_size=300))
def test_fuzz_random_bytes(peer: Any, data: bytes) -> None:
    _feed_all(peer, data)


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["client", "server"]), st.binary(min_size=2, max_size=300))
def test_fuzz_plausible_headers(peer: Any, body: bytes) -> None:
    # a correct length prefix around random type/flags/body reaches every body decoder
    _feed_all(peer, struct.pack("<I", len(body)) + body)


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just("client"), st.lists(CLIENT_FRAMES, min_size=1, max_size=4)),
        st.tuples(st.just("server"), st.lists(SERVER_FRAMES, min_size=1, max_size=4)),
    ),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 2)), max_size=4),
)
def test_fuzz_mutated_streams(
    peer_frames: tuple[Any, list[Frame]], mutations: list[tuple[int, int, int]]
) -> None:
    peer, frames = peer_frames
    data = bytearray(b"".join(map(encode, frames)))
    for where, byte, op in mutations:
        i = where % (len(data) + 1)
        if op == 0 and i < len(data):
            data[i] = byte
        elif op == 1:
            data.insert(i, byte)
        elif i < len(data):
            del data[i]
    _feed_all(peer, bytes(data))


# --------------------------------------------------------------------------- encoding


@pytest.mark.unit
@pytest.mark.parametrize(
    "frame",
    [
        Ping(-1),
        Ping(1 << 64),
        Text(1 << 32, "x"),
        Audio(1 << 16, 1, 0, b""),
        Audio(0, 1, 0, b"\x00"),  # half a sample
        AudioUp(0, "pcm"),  # type: ignore[arg-type]
        Welcome(1, bytes(15), 48_000, 960, 0, 65536, 1, 1, "", ""),
        Hello(token="\ud800"),  # lone surrogate
        Hello(engine="x" * 70_000),
        Hello(frame_ms=1 << 16),
        Text(1, 42),  # type: ignore[arg-type]
        Ping("1"),  # type: ignore[arg-type]
        Error(7, "int, not ErrorCode"),  # type: ignore[arg-type]
        Stats("x" * MAX_FRAME_BYTES),
    ],
    ids=repr,
)
def test_encode_rejects_invalid_frames(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError):
        encode(frame)


@pytest.mark.unit
def test_encode_size_limits() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(Audio(0, 1, 0, bytes(MAX_FRAME_BYTES - AUDIO_HEADER_BYTES + 2)))
    assert info.value.error_code is ErrorCode.FRAME_TOO_LARGE
    assert len(encode(Stats("x" * 100), max_frame_bytes=106)) == 106
    with pytest.raises(LocalProtocolError):
        encode(Stats("x" * 100), max_frame_bytes=105)
    with pytest.raises(LocalProtocolError):
        encode("not a frame")  # type: ignore[arg-type]


@pytest.mark.unit
@FAST
@given(u16, u32, u32, st.integers(0, 1000).map(lambda n: 2 * n), st.booleans())
def test_audio_header_fast_path(epoch: int, uid: int, seq: int, nbytes: int, last: bool) -> None:
    pcm = bytes(nbytes)
    full = encode(Audio(epoch, uid, seq, pcm, last))
    header = encode_audio_header(epoch, uid, seq, nbytes, last)
    assert header == full[:AUDIO_HEADER_BYTES] and len(header) == AUDIO_HEADER.size
    slot = bytearray(7 + AUDIO_HEADER_BYTES + nbytes)
    pack_audio_header_into(slot, 7, epoch, uid, seq, nbytes, last)
    assert bytes(slot[7:]) == full


@pytest.mark.unit
@pytest.mark.parametrize(
    "args",
    [
        (1 << 16, 1, 0, 2, False),
        (0, 1 << 32, 0, 2, False),
        (0, 1, -1, 2, False),
        (0, 1, 0, 3, True),
    ],
)
def test_audio_header_fast_path_rejects(args: tuple[int, int, int, int, bool]) -> None:
    with pytest.raises(LocalProtocolError):
        encode_audio_header(*args)
    with pytest.raises(LocalProtocolError):
        encode_audio_header(0, 1, 0, MAX_FRAME_BYTES, False)


@pytest.mark.unit
def test_error_classes() -> None:
    exc = RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED, "too much")
    assert isinstance(exc, ProtocolError) and not isinstance(exc, LocalProtocolError)
    assert exc.close_code == CloseCode.LIMIT
    assert "LIMIT_EXCEEDED" in repr(exc) and str(exc) == "too much"
    assert LocalProtocolError(ErrorCode.MALFORMED, "").close_code == CloseCode.PROTOCOL_ERROR


@pytest.mark.unit
def test_worked_example_from_spec() -> None:
    # protocol/SPEC.md, "Worked example"
    data = bytes.fromhex("0c000000020107000000486921e29c93")
    assert decode("client", [data]) == [Text(7, "Hi!✓", end=True)]
    assert encode(Text(7, "Hi!✓", end=True)) == data


@pytest.mark.unit
def test_session_example_from_spec() -> None:
    # the "whole minimal session" of protocol/SPEC.md §11 decodes to these frames
    spec = (Path(__file__).resolve().parents[1] / "protocol" / "SPEC.md").read_text("utf-8")
    streams: dict[str, list[str]] = {"C→S": [], "S→C": []}
    current: list[str] = []
    for line in spec.split("## 11.")[1].split("## 12.")[0].splitlines():
        if line[:3] in streams:
            current = streams[line[:3]]
            line = line[3:].split(None, 1)[1]
        elif not line.startswith("    ") or line.strip().startswith("("):
            continue
        current.append(line.split("(")[0].replace(" ", ""))
    client = bytes.fromhex("".join(streams["C→S"]))
    server = bytes.fromhex("".join(streams["S→C"]))
    assert decode("client", [client]) == [Hello(), Text(7, "Hi!✓", end=True), Interrupt()]
    assert decode("server", [server]) == [
        Welcome(1, bytes(range(16)), 48_000, 960, 0, 65536, 4096, 16, "tone", "a440"),
        UtteranceStarted(0, 7),
        Audio(0, 7, 0, bytes(4), last=True),
        UtteranceDone(0, 7, 2, 4),
        Interrupted(1, 0, 0, 0, 0),
    ]
