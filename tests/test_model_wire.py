"""The model wire (`duplexd.engines.remote.wire`), sans-I/O: every message fed whole, split at
every offset and a byte at a time; a half frame changes nothing; frames that cannot be read."""

from __future__ import annotations

import numpy as np
import pytest

from duplexd.engines.base import WordMark
from duplexd.engines.remote import wire

pytestmark = pytest.mark.unit

AUDIO = np.linspace(-1, 1, 7, dtype=np.float32)
MESSAGES: list[wire.Message] = [
    wire.Hello({"name": "tone", "device": "cpu", "default_voice": "sine", "voices": ["sine"]}),
    wire.Open(1, "sine"),
    wire.VoiceInfo(1, {"name": "sine", "sample_rate_hz": 24000, "timed": True}),
    wire.Speak(2, "sine", "Héllo, wörld."),
    wire.Next(2),
    wire.Stop(3),
    wire.Chunk(2, AUDIO, (WordMark(0, 6, 0, 3), WordMark(7, 13, 3, 7))),
    wire.Chunk(4, np.zeros(0, dtype=np.float32), ()),
    wire.Done(2),
    wire.Failed(5, wire.UNKNOWN_VOICE, "unknown voice 'x'"),
    wire.Leaving(),
]


def same(a: wire.Message, b: wire.Message) -> bool:
    if isinstance(a, wire.Chunk) and isinstance(b, wire.Chunk):
        return (a.request, a.marks) == (b.request, b.marks) and np.array_equal(a.audio, b.audio)
    return a == b


def test_the_wire_reads_whole_split_at_every_offset_and_byte_by_byte() -> None:
    data = b"".join(wire.encode(m) for m in MESSAGES)
    for cut in range(len(data) + 1):
        d = wire.Decoder()
        got = d.feed(data[:cut]) + d.feed(data[cut:])
        assert len(got) == len(MESSAGES) and all(map(same, got, MESSAGES))
        assert d.buffered == 0
    d = wire.Decoder()
    got = [m for i in range(len(data)) for m in d.feed(data[i : i + 1])]
    assert all(map(same, got, MESSAGES)) and len(got) == len(MESSAGES)


def test_a_half_frame_changes_nothing_but_the_buffer() -> None:
    frame = wire.encode(wire.Speak(9, "sine", "text"))
    d = wire.Decoder()
    assert d.feed(frame[:-1]) == [] and d.buffered == len(frame) - 1
    assert d.feed(frame[-1:]) == [wire.Speak(9, "sine", "text")] and d.buffered == 0


@pytest.mark.parametrize(
    "frame",
    [
        wire.HEADER.pack(wire.MAX_FRAME_BYTES + 1, wire.CHUNK, 1),  # too long: never buffered
        wire.HEADER.pack(5, 99, 1),  # unknown kind
        wire.HEADER.pack(6, wire.NEXT, 1) + b"x",  # NEXT with a payload
        wire.HEADER.pack(7, wire.CHUNK, 1) + b"\0\0",  # marks' count cut short
        wire.HEADER.pack(12, wire.CHUNK, 1) + b"\0\0\0\0\0\0\0",  # samples not whole
        wire.HEADER.pack(8, wire.SPEAK, 1) + b"\0\x09\xff",  # a voice name cut short
        wire.HEADER.pack(7, wire.HELLO, 0) + b"[]",  # not a JSON object
        wire.HEADER.pack(2, wire.NEXT, 1),  # shorter than its own header
        wire.HEADER.pack(6, wire.LEAVING, 0) + b"x",  # LEAVING with a payload
        wire.HEADER.pack(5, wire.LEAVING, 3),  # ... or a request id
    ],
)
def test_a_frame_that_cannot_be_read_is_a_wire_error(frame: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.Decoder().feed(frame)


def test_a_chunk_too_long_for_one_frame_is_refused_when_encoded() -> None:
    big = np.zeros(wire.MAX_FRAME_BYTES // 4 + 1, dtype=np.float32)
    with pytest.raises(wire.WireError):
        wire.encode(wire.Chunk(1, big, ()))


# ------------------------------------------------------------------ a model process, in-process
