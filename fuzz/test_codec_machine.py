"""Stateful fuzz of the codec's `Decoder` against the reference model of SPEC §3.

The machine builds a byte stream out of valid frames of either direction (encoded), frames
built field by field with one fault (a reserved flag, a string length off by a little, bad
UTF-8, odd PCM, an unknown ERROR code, a body too short or long), unknown optional and required
types, frames of the wrong direction, frames at the size limit give or take two bytes, bare
length prefixes up to 0xFFFFFFFF, raw bytes and mutations of what is not fed yet; it feeds the
stream to a `Decoder` in arbitrary pieces (down to one byte at a time) and pulls frames between
them; after an error, the next stream gets a fresh decoder. After every step the decoder must
agree with `spec_model.decode_stream` over all bytes fed so far: the same frames (re-encoding
what it decoded gives the model's bytes), the same number skipped, the same buffered tail, the
same error. While the stream holds only valid frames, it decodes to exactly the frames encoded.
Errors are `RemoteProtocolError`s with a decoding `ErrorCode` (any other exception fails the
test), and sticky: every later call raises the same exception. A frame not yet complete changes
nothing: one more byte of it is one more byte buffered, and pulling again returns None.
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from duplexd.protocol.codec import Decoder, LocalProtocolError, RemoteProtocolError, encode
from duplexd.protocol.frames import MAX_FRAME_BYTES, ErrorCode, Frame

from . import gen, spec_model
from .stats import TRIED
from .strategies import frames_from, short

pytestmark = pytest.mark.unit

UNKNOWN_OPTIONAL = {
    "client": [t for t in range(0x40, 0x80) if t not in spec_model.BODIES],
    "server": [t for t in range(0xC0, 0x100) if t not in spec_model.BODIES],
}
UNKNOWN_REQUIRED = {
    "client": [t for t in range(0x00, 0x40) if t not in spec_model.BODIES],
    "server": [t for t in range(0x80, 0xC0) if t not in spec_model.BODIES],
}


KNOWN = {
    "client": [t for t in spec_model.BODIES if t < 0x80],
    "server": [t for t in spec_model.BODIES if t >= 0x80],
}
BAD_UTF8 = [
    b"\xed\xa0\x80",  # a surrogate
    b"\xed\xbf\xbf",  # another
    b"\xc0\x80",  # overlong
    b"\xe0\x80\xaf",  # overlong
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xe2\x82",  # truncated
    b"\x80",  # a lone continuation byte
    b"\xff",
]
FAULTS = ["none", "flags", "length", "utf8", "pcm", "code", "size"]


def raw_frame(type_: int, flags: int, body: bytes) -> bytes:
    return struct.pack("<IBB", 2 + len(body), type_, flags) + body


@st.composite
def near_valid_frames(draw: st.DrawFn, peer: str) -> bytes:
    """A frame of a known type built field by field, valid or with one fault: a reserved flag
    bit, a string length off by a little, bad UTF-8 in a string, an odd PCM size, an unknown
    ERROR code (or BARGE_IN outcome, TURN_END `by`...), a body a few bytes short or long."""
    with_strings = [t for t in KNOWN[peer] if set(spec_model.BODIES[t][1]) - {"pcm"}]
    type_ = draw(st.sampled_from(KNOWN[peer]) | st.sampled_from(with_strings), label="type")
    fixed, tails, flag = spec_model.BODIES[type_]
    fault = draw(st.sampled_from(FAULTS), label="fault")
    body = bytearray(draw(st.binary(min_size=fixed, max_size=fixed), label="fixed"))
    if type_ == 0x88:
        codes = spec_model.ERROR_CODES
        code = draw(st.integers(0, 0xFFFF) if fault == "code" else st.sampled_from(codes))
        body[:2] = struct.pack("<H", code)
    for at, values in spec_model.NAMED.get(type_, ()):  # BARGE_IN's outcome, TURN_END's by...
        body[at] = draw(st.integers(0, 0xFF) if fault == "code" else st.sampled_from(values))
    strings = [i for i, kind in enumerate(tails) if kind != "pcm"]
    bad_at = draw(st.sampled_from(strings)) if strings else -1
    for i, kind in enumerate(tails):
        if kind == "pcm":
            n = draw(st.integers(0, 8), label="samples")
            body += draw(st.binary(min_size=2 * n, max_size=2 * n), label="pcm")
            if fault == "pcm":
                body += b"\x00"
            continue
        piece = draw(short, label=kind).encode("utf-8")
        if fault == "utf8" and i == bad_at:
            cut = draw(st.integers(0, len(piece)))
            piece = piece[:cut] + draw(st.sampled_from(BAD_UTF8)) + piece[cut:]
        if kind != "utf8":
            width = 2 if kind == "str16" else 4
            n = len(piece)
            if fault == "length" and i == bad_at:
                n = draw(st.sampled_from([n + 1, n + 2, n - 1, 0xFFFF, 0xFFFF_FFFF]))
                n %= 1 << (8 * width)
            body += n.to_bytes(width, "little")
        body += piece
    if fault == "size":
        delta = draw(st.sampled_from([-2, -1, 1, 2]))
        body = body + bytes(delta) if delta > 0 else body[:delta]
    flags = draw(st.sampled_from([0, 1] if flag else [0]))
    if fault == "flags":
        flags |= draw(st.sampled_from([0x02, 0x80, 0xFE] + ([] if flag else [0x01])))
    return raw_frame(type_, flags, bytes(body))


PEERS = ("client", "server")
FRAME_LISTS = {p: st.lists(frames_from(p), min_size=1, max_size=6) for p in PEERS}
NEAR_VALID_LISTS = {p: st.lists(near_valid_frames(p), min_size=1, max_size=4) for p in PEERS}
OTHER_DIRECTION = {"client": frames_from("server"), "server": frames_from("client")}
UNKNOWN_OPTIONAL_TYPES = {p: st.sampled_from(UNKNOWN_OPTIONAL[p]) for p in PEERS}
UNKNOWN_REQUIRED_TYPES = {p: st.sampled_from(UNKNOWN_REQUIRED[p]) for p in PEERS}


class CodecMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.peer: spec_model.Peer = "client"
        self.max_frame_bytes = MAX_FRAME_BYTES
        self.decoder = Decoder(peer="client")
        self.pending = bytearray()  # generated, not fed yet
        self.fed = bytearray()  # accepted by `receive_data`
        self.got: list[Frame] = []  # what `next_frame` returned, in order
        self.sent: list[Frame] | None = []  # the frames encoded, while the stream is all valid
        self.error: RemoteProtocolError | None = None
        self.boundary_error = False  # the error came from `check_boundary`

    @initialize(
        peer=st.sampled_from(["client", "server"]),
        max_frame_bytes=st.one_of(
            st.just(MAX_FRAME_BYTES),
            st.sampled_from([MAX_FRAME_BYTES, 4096, 64, 6]),
            st.integers(6, MAX_FRAME_BYTES),
        ),
    )
    def start(self, peer: spec_model.Peer, max_frame_bytes: int) -> None:
        self.peer, self.max_frame_bytes = peer, max_frame_bytes
        self.decoder = Decoder(peer=peer, max_frame_bytes=max_frame_bytes)

    @precondition(lambda self: self.error is not None)
    @rule()
    def next_connection(self) -> None:
        """An error ends a stream: go on with a fresh decoder (same peer and limit)."""
        self.decoder = Decoder(peer=self.peer, max_frame_bytes=self.max_frame_bytes)
        self.pending.clear()
        self.fed.clear()
        self.got.clear()
        self.sent = []
        self.error, self.boundary_error = None, False

    # ------------------------------------------------------------------ building the stream

    def _add(self, data: bytes, frame: Frame | None = None, *, valid: bool = True) -> None:
        self.pending += data
        if not valid:
            self.sent = None
        elif frame is not None and self.sent is not None:
            self.sent.append(frame)

    @rule(data=st.data())
    def add_frames(self, data: st.DataObject) -> None:
        for frame in data.draw(FRAME_LISTS[self.peer], label="frames"):
            try:
                self._add(encode(frame, max_frame_bytes=self.max_frame_bytes), frame)
            except LocalProtocolError as exc:
                assert exc.error_code is ErrorCode.FRAME_TOO_LARGE, exc

    @rule(data=st.data())
    def add_near_valid_frames(self, data: st.DataObject) -> None:
        for frame in data.draw(NEAR_VALID_LISTS[self.peer], label="frames"):
            self._add(frame, valid=False)

    @rule(data=st.data())
    def add_unknown_optional(self, data: st.DataObject) -> None:
        type_ = data.draw(UNKNOWN_OPTIONAL_TYPES[self.peer], label="type")
        flags = data.draw(st.integers(0, 255), label="flags")
        frame = raw_frame(type_, flags, data.draw(st.binary(max_size=40), label="body"))
        self._add(frame, valid=len(frame) <= self.max_frame_bytes)  # skipped silently

    @rule(data=st.data(), kind=st.sampled_from(["limit", "required", "direction", "u32", "raw"]))
    def add_garbage(self, data: st.DataObject, kind: str) -> None:
        """A frame at the size limit (give or take 2 bytes), of an unknown required type, of
        the other direction; a bare u32 (a length prefix?); random bytes."""
        if kind == "limit":
            type_, header = (0x07, 10) if self.peer == "client" else (0x81, 16)
            size = self.max_frame_bytes + data.draw(st.integers(-2, 2), label="slack")
            assume(size >= header)
            pcm = data.draw(st.binary(min_size=size - header, max_size=size - header))
            self._add(raw_frame(type_, 0, bytes(header - 6) + pcm), valid=False)
        elif kind == "required":
            type_ = data.draw(UNKNOWN_REQUIRED_TYPES[self.peer], label="type")
            self._add(raw_frame(type_, 0, data.draw(st.binary(max_size=40))), valid=False)
        elif kind == "direction":
            self._add(encode(data.draw(OTHER_DIRECTION[self.peer], label="frame")), valid=False)
        elif kind == "u32":
            length = data.draw(st.sampled_from([0, 1, 0xFFFF_FFFF]) | st.integers(0, 2**32 - 1))
            self._add(struct.pack("<I", length), valid=False)
        else:
            self._add(data.draw(st.binary(min_size=1, max_size=24), label="raw"), valid=False)

    @precondition(lambda self: self.pending)
    @rule(rng=st.randoms(use_true_random=False))
    def mutate_pending(self, rng: random.Random) -> None:
        mutated = gen.mutate(bytes(self.pending), rng)
        if mutated != self.pending:
            self.pending[:] = mutated
            self.sent = None

    # ------------------------------------------------------------------ feeding it

    def _pull(self) -> None:
        while (frame := self.decoder.next_frame()) is not None:
            self.got.append(frame)

    def _feed(self, chunk: bytes) -> None:
        """Feed `chunk` and pull every complete frame; record the first error."""
        if self.error is not None:
            with pytest.raises(RemoteProtocolError) as info:
                self.decoder.receive_data(chunk)
            assert info.value is self.error  # sticky
            return
        got = len(self.got)
        try:
            self.decoder.receive_data(chunk)
            self.fed += chunk
            self._pull()
        except RemoteProtocolError as exc:
            self.error = exc
            TRIED[f"codec.error.{exc.error_code.name}"] += 1
        TRIED["codec.feeds"] += 1
        TRIED["codec.bytes_fed"] += len(chunk)
        TRIED["codec.frames_decoded"] += len(self.got) - got

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def feed(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, len(self.pending)), label="bytes")
        chunk = bytes(self.pending[:n])
        del self.pending[:n]
        self._feed(chunk)

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def feed_all_in_pieces(self, data: st.DataObject) -> None:
        while self.pending:
            n = data.draw(st.integers(1, len(self.pending)), label="bytes")
            chunk = bytes(self.pending[:n])
            del self.pending[:n]
            self._feed(chunk)

    @precondition(lambda self: self.pending)
    @rule()
    def feed_one_byte_at_a_time(self) -> None:
        chunk = bytes(self.pending)
        self.pending.clear()
        for i in range(len(chunk)):
            before = (self.decoder.buffered_bytes, self.decoder.skipped_frames, len(self.got))
            self._feed(chunk[i : i + 1])
            completed = len(self.got) != before[2] or self.decoder.skipped_frames != before[1]
            if self.error is None and not completed:  # half a frame: one more byte, no more
                assert self.decoder.buffered_bytes == before[0] + 1

    @rule(chunk=st.sampled_from([b"", bytearray(), memoryview(b"")]))
    def feed_nothing(self, chunk: bytes) -> None:
        before = (self.decoder.buffered_bytes, self.decoder.skipped_frames, len(self.got))
        self._feed(chunk)
        if self.error is None:
            assert (self.decoder.buffered_bytes, self.decoder.skipped_frames, len(self.got)) == (
                before
            )

    @rule()
    def pull_again(self) -> None:
        """Nothing new was fed: `next_frame` returns None and changes nothing."""
        if self.error is not None:
            with pytest.raises(RemoteProtocolError) as info:
                self.decoder.next_frame()
            assert info.value is self.error
            return
        before = (self.decoder.buffered_bytes, self.decoder.skipped_frames)
        assert self.decoder.next_frame() is None
        assert (self.decoder.buffered_bytes, self.decoder.skipped_frames) == before

    @rule()
    def check_boundary(self) -> None:
        """The end of a message (or of a raw stream): MALFORMED if part of a frame is buffered."""
        if self.error is not None:
            with pytest.raises(RemoteProtocolError) as info:
                self.decoder.check_boundary()
            assert info.value is self.error
            return
        partial = self.decoder.buffered_bytes
        try:
            self.decoder.check_boundary()
        except RemoteProtocolError as exc:
            assert partial > 0 and exc.error_code is ErrorCode.MALFORMED
            self.error, self.boundary_error = exc, True
        else:
            assert partial == 0

    def teardown(self) -> None:
        """Whatever was built and not fed yet is fed too, whole, and checked."""
        TRIED["codec.examples"] += 1
        if self.pending:
            self._feed(bytes(self.pending))
            self.pending.clear()
            self.agrees_with_the_model()

    # ------------------------------------------------------------------ agreement

    @invariant()
    def agrees_with_the_model(self) -> None:
        model = spec_model.decode_stream(
            bytes(self.fed), peer=self.peer, max_frame_bytes=self.max_frame_bytes
        )
        assert [encode(f) for f in self.got] == model.frames
        assert self.decoder.skipped_frames == model.skipped
        if self.error is None:
            assert model.error is None
            assert self.decoder.buffered_bytes == len(self.fed) - model.consumed
        elif self.boundary_error:
            assert model.error is None and model.consumed < len(self.fed)
        else:
            assert self.error.error_code is model.error, (self.error, model)
        if self.error is not None:
            assert self.error.error_code in spec_model.DECODE_ERRORS
            assert self.error.close_code == self.error.error_code.close_code
        if self.sent is not None:
            assert self.got == self.sent[: len(self.got)]


TestCodecMachine = CodecMachine.TestCase
