"""Sans-I/O codec of the duplexd wire protocol: frames to bytes and bytes to frames.

No I/O and no trio here. `encode` turns any frame of `duplexd.protocol.frames` into bytes; `Decoder`
turns an arbitrary byte stream (WebSocket message payloads or raw TCP) back into frames. The
byte layout is specified in `protocol/SPEC.md` and tabled in `duplexd.protocol.layouts`;
`protocol/vectors/vectors.json` pins it.

Errors: `LocalProtocolError` is our own bug (encoding an invalid frame); `RemoteProtocolError`
means the peer's bytes are bad. Both carry the `ErrorCode` to report and its `close_code`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

from .frames import (
    AUDIO_HEADER_BYTES,
    FRAME_HEADER_BYTES,
    LENGTH_PREFIX_BYTES,
    MAX_FRAME_BYTES,
    OPTIONAL_TYPE_BIT,
    Audio,
    ErrorCode,
    Frame,
    FrameType,
    WordMark,
)
from .layouts import (
    AUDIO_BODY,
    AUDIO_HEADER,
    BY_CLASS,
    BY_TYPE,
    END,
    ENUM_FIELDS,
    FRAME_CLASSES,
    FRAME_TYPES,
    HEADER,
    INT_LIMITS,
    MARK,
    MIN_AUDIO_LENGTH,
    PREFIX,
    U16,
    U32,
    Layout,
)

__all__ = [
    "AUDIO_HEADER",
    "FRAME_CLASSES",
    "FRAME_TYPES",
    "Decoder",
    "LocalProtocolError",
    "Peer",
    "ProtocolError",
    "RawFrame",
    "RemoteProtocolError",
    "encode",
    "encode_audio_header",
    "iter_frames",
    "pack_audio_header_into",
]

Peer = Literal["client", "server"]


class ProtocolError(Exception):
    """A protocol violation; `error_code` is what to report, `close_code` how to close."""

    def __init__(self, error_code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error_code: ErrorCode = error_code
        self.message: str = message

    @property
    def close_code(self) -> int:
        return self.error_code.close_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error_code.name}, {self.message!r})"


class LocalProtocolError(ProtocolError):
    """We tried to send something invalid: a bug on our side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid."""


# --------------------------------------------------------------------------- encoding


def _utf8(name: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise LocalProtocolError(ErrorCode.MALFORMED, f"{name} must be str, not {value!r}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"{name} is not encodable: {exc}") from None


def encode(
    frame: Frame, *, max_frame_bytes: int = MAX_FRAME_BYTES, packet_audio: bool = False
) -> bytes:
    """Encode one frame, length prefix included. Raises `LocalProtocolError` if it is invalid.

    `packet_audio`: an Audio / AudioUp body is an Opus packet of any length, not whole s16
    samples (the direction negotiated Opus, SPEC §4.6.3)."""
    layout = BY_CLASS.get(type(frame))
    if layout is None:
        raise LocalProtocolError(ErrorCode.INTERNAL, f"not a frame: {frame!r}")
    values: list[object] = []
    for name, limit in INT_LIMITS[layout.cls]:
        value = getattr(frame, name)
        if limit is None:  # Welcome.session_id
            if not isinstance(value, bytes) or len(value) != 16:
                raise LocalProtocolError(ErrorCode.MALFORMED, f"{name} must be 16 bytes")
        elif not isinstance(value, int) or not 0 <= value <= limit:
            raise LocalProtocolError(
                ErrorCode.MALFORMED, f"{name}={value!r} out of range 0..{limit}"
            )
        values.append(value)
    for field, members in ENUM_FIELDS.get(layout.cls, ()):
        if not isinstance(member := getattr(frame, field), members):
            raise LocalProtocolError(
                ErrorCode.MALFORMED, f"{field} must be a {members.__name__}, not {member!r}"
            )
    parts = [b"", layout.fixed.pack(*values)]
    for name, kind in layout.tail:
        value = getattr(frame, name)
        if kind == "pcm":
            if not isinstance(value, bytes | bytearray | memoryview):
                raise LocalProtocolError(ErrorCode.MALFORMED, f"{name} must be bytes")
            data = bytes(value)
            if len(data) % 2 and not packet_audio:
                raise LocalProtocolError(ErrorCode.MALFORMED, "pcm must be whole s16 samples")
            parts.append(data)
            continue
        if kind == "marks":
            parts.append(_encode_marks(value))
            continue
        data = _utf8(name, value)
        if kind == "str16":
            if len(data) > 0xFFFF:
                raise LocalProtocolError(ErrorCode.MALFORMED, f"{name} longer than 65535 bytes")
            parts.append(U16.pack(len(data)))
        elif kind == "json32":
            parts.append(U32.pack(len(data)))
        parts.append(data)
    flags = END if layout.flag is not None and getattr(frame, layout.flag) else 0
    body_len = sum(map(len, parts))
    if LENGTH_PREFIX_BYTES + 2 + body_len > max_frame_bytes:
        raise LocalProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"{layout.cls.__name__} frame of {FRAME_HEADER_BYTES + body_len} bytes"
            f" > {max_frame_bytes}",
        )
    parts[0] = HEADER.pack(2 + body_len, layout.ftype, flags)
    return b"".join(parts)


def _encode_marks(marks: object) -> bytes:
    if not isinstance(marks, tuple) or not all(isinstance(m, WordMark) for m in marks):
        raise LocalProtocolError(ErrorCode.MALFORMED, "marks must be a tuple of WordMark")
    out = bytearray()
    for m in marks:
        fields = (m.start_char, m.end_char, m.start_sample, m.end_sample)
        if not all(isinstance(v, int) and 0 <= v <= 0xFFFF_FFFF for v in fields):
            raise LocalProtocolError(ErrorCode.MALFORMED, f"mark {m!r} out of range")
        if m.end_char < m.start_char or m.end_sample < m.start_sample:
            raise LocalProtocolError(ErrorCode.MALFORMED, f"mark {m!r} ends before it starts")
        out += MARK.pack(*fields)
    return bytes(out)


def encode_audio_header(epoch: int, utterance_id: int, seq: int, nbytes: int, last: bool) -> bytes:
    """The 16-byte header of an `Audio` frame whose PCM (`nbytes` bytes) follows it."""
    buf = bytearray(AUDIO_HEADER_BYTES)
    pack_audio_header_into(buf, 0, epoch, utterance_id, seq, nbytes, last)
    return bytes(buf)


def pack_audio_header_into(
    buf: bytearray | memoryview,
    offset: int,
    epoch: int,
    utterance_id: int,
    seq: int,
    nbytes: int,
    last: bool,
) -> None:
    """Write an `Audio` frame header into `buf[offset:offset + 16]` (the hot path)."""
    if nbytes & 1 or not 0 <= nbytes <= MAX_FRAME_BYTES - AUDIO_HEADER_BYTES:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"bad audio payload size {nbytes}")
    try:
        AUDIO_HEADER.pack_into(
            buf,
            offset,
            AUDIO_HEADER_BYTES - LENGTH_PREFIX_BYTES + nbytes,
            FrameType.AUDIO,
            END if last else 0,
            epoch,
            utterance_id,
            seq,
        )
    except struct.error as exc:
        raise LocalProtocolError(ErrorCode.MALFORMED, f"bad audio header field: {exc}") from None


# --------------------------------------------------------------------------- walking frames


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One whole frame of a message, not decoded: its type byte, flags byte and bytes."""

    type: int
    flags: int
    data: memoryview  # the whole frame, length prefix included

    @property
    def body(self) -> memoryview:
        """The frame's body (after the 6-byte header)."""
        return self.data[FRAME_HEADER_BYTES:]

    @property
    def audio_pcm(self) -> memoryview:
        """An AUDIO frame's PCM (after its 16-byte header)."""
        return self.data[AUDIO_HEADER_BYTES:]


def iter_frames(message: bytes | bytearray | memoryview) -> Iterator[RawFrame]:
    """Walk the frames of one message of whole frames, without decoding their bodies.

    For code that only needs the type, flags or audio of frames it already trusts or merely
    records (the echo reference, the tracer). Raises `RemoteProtocolError` (MALFORMED) at a
    length prefix under 2 or a frame that runs past the end of the message; the frames before
    it have been yielded.
    """
    data = memoryview(message)
    pos, size = 0, len(data)
    while pos < size:
        if size - pos < FRAME_HEADER_BYTES:
            raise RemoteProtocolError(ErrorCode.MALFORMED, f"{size - pos} bytes of a frame header")
        (length,) = PREFIX.unpack_from(data, pos)
        end = pos + LENGTH_PREFIX_BYTES + length
        if length < 2 or end > size:
            raise RemoteProtocolError(
                ErrorCode.MALFORMED, f"frame length {length} at offset {pos} of {size} bytes"
            )
        yield RawFrame(data[pos + 4], data[pos + 5], data[pos:end])
        pos = end


# --------------------------------------------------------------------------- decoding


def _malformed(layout: Layout, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.MALFORMED, f"{layout.cls.__name__}: {why}")


def _decode_utf8(layout: Layout, name: str, raw: bytes | bytearray) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(layout, f"{name} is not valid UTF-8") from None


def _decode_body(
    layout: Layout, buf: bytearray, start: int, end: int, flags: int, packets: bool = False
) -> Any:
    """Decode the body `buf[start:end]` of a frame of a known type (`packets`: audio bodies
    are Opus packets, of any length)."""
    if flags & ~(END if layout.flag is not None else 0):
        raise _malformed(layout, f"reserved flag bits set (0x{flags:02x})")
    size = layout.fixed.size
    if end - start < size or (not layout.tail and end - start != size):
        raise _malformed(layout, f"body of {end - start} bytes, fixed part is {size}")
    kwargs: dict[str, Any] = dict(
        zip(layout.names, layout.fixed.unpack_from(buf, start), strict=True)
    )
    pos = start + size
    for name, kind in layout.tail:
        if kind == "pcm":
            if (end - pos) & 1 and not packets:
                raise _malformed(layout, "pcm is not whole s16 samples")
            with memoryview(buf) as view:
                kwargs[name] = view[pos:end].tobytes()
            pos = end
            continue
        if kind == "marks":
            if (end - pos) % MARK.size:
                raise _malformed(layout, f"marks are not whole {MARK.size}-byte records")
            marks = tuple(WordMark(*f) for f in MARK.iter_unpack(bytes(buf[pos:end])))
            if any(m.end_char < m.start_char or m.end_sample < m.start_sample for m in marks):
                raise _malformed(layout, "a mark ends before it starts")
            kwargs[name] = marks
            pos = end
            continue
        if kind == "utf8":
            n = end - pos
        else:
            width = 2 if kind == "str16" else 4
            if end - pos < width:
                raise _malformed(layout, f"truncated length of {name}")
            n = int.from_bytes(buf[pos : pos + width], "little")
            pos += width
            if n > end - pos:
                raise _malformed(layout, f"{name} of {n} bytes overruns the body")
        kwargs[name] = _decode_utf8(layout, name, buf[pos : pos + n])
        pos += n
    if pos != end:
        raise _malformed(layout, f"{end - pos} trailing bytes")
    if layout.flag is not None:
        kwargs[layout.flag] = bool(flags & END)
    for field, members in ENUM_FIELDS.get(layout.cls, ()):
        try:
            kwargs[field] = members(kwargs[field])
        except ValueError:
            raise _malformed(layout, f"unknown {field} {kwargs[field]}") from None
    return layout.cls(**kwargs)


class Decoder:
    """Incremental decoder of the frames that `peer` sends.

    Feed bytes with `receive_data` (any split: message payloads, TCP reads, single bytes) and
    pull frames with `next_frame` until it returns None. A partly received frame changes
    nothing. The first error is raised as `RemoteProtocolError` and again by every later call.
    Unknown optional types are skipped and counted in `skipped_frames`.

    `packet_audio` is False (audio bodies are s16 PCM, an even number of bytes) until the
    owner sets it, once the handshake negotiated Opus for the audio this decoder receives
    (SPEC §4.6.3): AUDIO / AUDIO_UP bodies are then Opus packets of any length, handed on as
    they are (`Audio.pcm` / `AudioUp.pcm` hold the packet; decoding it is the owner's job).
    """

    def __init__(self, *, peer: Peer, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if peer not in ("client", "server"):
            raise ValueError(f"peer must be 'client' or 'server', not {peer!r}")
        if not FRAME_HEADER_BYTES <= max_frame_bytes <= MAX_FRAME_BYTES:
            raise ValueError(f"max_frame_bytes must be in {FRAME_HEADER_BYTES}..{MAX_FRAME_BYTES}")
        self.peer: Final[Peer] = peer
        self.max_frame_bytes: Final = max_frame_bytes
        self.skipped_frames = 0
        self._server_bit = 0x80 if peer == "server" else 0
        self._buf = bytearray()
        self._pos = 0  # start of the first uncommitted frame in _buf
        self._error: RemoteProtocolError | None = None
        self.packet_audio = False

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as (or skipped as) frames."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def check_boundary(self) -> None:
        """Raise `MALFORMED` if part of a frame is buffered.

        Call it after the frames of each WebSocket message (a frame must not span messages)
        and when a raw stream ends (a peer must not stop mid-frame).
        """
        if self._error is not None:
            raise self._error
        if self.buffered_bytes:
            self._error = RemoteProtocolError(
                ErrorCode.MALFORMED, f"{self.buffered_bytes} bytes of an incomplete frame"
            )
            raise self._error

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more data is needed."""
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        except (struct.error, ValueError, IndexError, TypeError) as exc:  # defensive only
            self._error = RemoteProtocolError(ErrorCode.MALFORMED, f"undecodable frame: {exc}")
            raise self._error from None

    def _next_frame(self) -> Frame | None:
        buf = self._buf
        while True:
            pos = self._pos
            avail = len(buf) - pos
            if avail < LENGTH_PREFIX_BYTES:
                return None
            (length,) = PREFIX.unpack_from(buf, pos)
            if length < 2:
                raise RemoteProtocolError(ErrorCode.MALFORMED, f"frame length {length} < 2")
            if LENGTH_PREFIX_BYTES + length > self.max_frame_bytes:
                raise RemoteProtocolError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {LENGTH_PREFIX_BYTES + length} bytes > {self.max_frame_bytes}",
                )
            end = pos + LENGTH_PREFIX_BYTES + length
            if len(buf) < end:
                return None
            type_ = buf[pos + 4]
            flags = buf[pos + 5]
            start = pos + FRAME_HEADER_BYTES
            if type_ & 0x80 != self._server_bit:
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_FRAME,
                    f"type 0x{type_:02x} is not a {self.peer}-to-{_other(self.peer)} type",
                )
            if type_ == FrameType.AUDIO:  # the hot path
                odd = length & 1 and not self.packet_audio
                if flags & ~END or odd or length < MIN_AUDIO_LENGTH:
                    frame: Frame | None = _decode_body(
                        BY_TYPE[type_], buf, start, end, flags, self.packet_audio
                    )
                else:
                    epoch, uid, seq = AUDIO_BODY.unpack_from(buf, start)
                    with memoryview(buf) as view:
                        pcm = view[pos + AUDIO_HEADER_BYTES : end].tobytes()
                    frame = Audio(epoch, uid, seq, pcm, bool(flags))
            else:
                layout = BY_TYPE.get(type_)
                if layout is None:
                    if not type_ & OPTIONAL_TYPE_BIT:
                        raise RemoteProtocolError(
                            ErrorCode.UNKNOWN_TYPE, f"unknown frame type 0x{type_:02x}"
                        )
                    self.skipped_frames += 1
                    frame = None
                else:
                    frame = _decode_body(layout, buf, start, end, flags, self.packet_audio)
            self._pos = end  # commit
            if frame is not None:
                return frame

    def frames(self) -> Iterator[Frame]:
        """Every complete frame buffered so far."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()


def _other(peer: Peer) -> Peer:
    return "server" if peer == "client" else "client"
