"""The model wire: how daemons ask a model process for speech (sans-I/O: bytes in, messages out).

One Unix stream connection per daemon, many requests on it at once, each named by a request
id the daemon picks. A frame is::

    u32 big-endian length of what follows | u8 kind | u32 big-endian request id | payload

The model process speaks first (`Hello`). A daemon opens a voice (`Open` -> `VoiceInfo`), then
asks for speech (`Speak`): the model process answers with the piece's first chunk, and one more
chunk for each `Next`, until `Done`; `Stop` ends a request early (the chunk already on its way
may still arrive, and is dropped by id). So a request is pulled chunk by chunk, as the daemon
pulls a local engine's iterator, and nothing is synthesized ahead of need. `Failed` ends any
request with a reason and a message.

`Leaving` (request id 0, no payload; sent at most once, after the `Hello`): the model process is
stopping (a SIGTERM: a restart, an upgrade). It goes on answering this connection: the requests
under way, and those the daemon sends for the utterances it began here (their next pieces),
until the daemon closes it, or its drain time is up. The daemon asks for the rest on a new
connection (to the next model process) and closes this one once its utterances here have ended.

Payloads: `Hello` and `VoiceInfo` are UTF-8 JSON objects; `Open` a voice name; `Speak` a u16
length and the voice name, then the text (UTF-8); `Chunk` a u32 count of word marks, the marks
as 4 little-endian int32 each (start char, end char, start sample, end sample), then the audio
as little-endian float32; `Failed` a u8 reason and a UTF-8 message; the rest are empty.

`Decoder.feed(bytes)` returns whole messages; a half-received frame changes nothing but the
buffer. A frame over `max_frame_bytes` or one that cannot be parsed raises `WireError`: the
connection must be dropped.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from ..base import FloatAudio, WordMark

HEADER: Final = struct.Struct(">IBI")  # length of the rest, kind, request id
HEADER_BYTES: Final = HEADER.size
LENGTH_BYTES: Final = 4
# a chunk of 30 s of 48 kHz audio with its marks fits; a daemon's messages are far smaller
MAX_FRAME_BYTES: Final = 8 * 1024 * 1024
MAX_TEXT_BYTES: Final = 1024 * 1024
_MARK: Final = np.dtype("<i4")
_SAMPLE: Final = np.dtype("<f4")

HELLO, OPEN, VOICE_INFO, SPEAK, NEXT, STOP, CHUNK, DONE, FAILED, LEAVING = range(1, 11)

# why a request failed: `Failed.reason`
ENGINE_ERROR: Final = 0  # the engine raised (EngineError or worse)
UNKNOWN_VOICE: Final = 1  # the voice is not available (UnknownVoiceError)
BAD_REQUEST: Final = 2  # the daemon asked for something the wire does not allow
OVERLOADED: Final = 3  # too many requests at once on this connection


class WireError(Exception):
    """A frame that cannot be read (too long, unknown kind, bad payload): drop the connection."""


@dataclass(frozen=True, slots=True)
class Hello:
    """The model process's engine: `name`, `device`, `default_voice`, `voices`."""

    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Open:
    request: int
    voice: str


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    """An opened voice: `name`, `sample_rate_hz`, `streaming`, `timed`."""

    request: int
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Speak:
    request: int
    voice: str
    text: str


@dataclass(frozen=True, slots=True)
class Next:
    request: int


@dataclass(frozen=True, slots=True)
class Stop:
    request: int


@dataclass(frozen=True, slots=True)
class Chunk:
    request: int
    audio: FloatAudio
    marks: tuple[WordMark, ...]


@dataclass(frozen=True, slots=True)
class Done:
    request: int


@dataclass(frozen=True, slots=True)
class Failed:
    request: int
    reason: int
    message: str


@dataclass(frozen=True, slots=True)
class Leaving:
    """The model process is stopping: finish here what was begun here, ask the rest elsewhere."""


Message = Hello | Open | VoiceInfo | Speak | Next | Stop | Chunk | Done | Failed | Leaving


def _frame(kind: int, request: int, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    if len(payload) + HEADER_BYTES - LENGTH_BYTES > MAX_FRAME_BYTES:
        raise WireError(f"a {len(payload)}-byte message is over the wire's {MAX_FRAME_BYTES}")
    return HEADER.pack(len(payload) + HEADER_BYTES - LENGTH_BYTES, kind, request) + payload


def encode(message: Message) -> bytes:
    """The frame of `message`. WireError if it does not fit in one frame."""
    match message:
        case Hello(info):
            return _frame(HELLO, 0, json.dumps(info).encode())
        case Open(request, voice):
            return _frame(OPEN, request, voice.encode())
        case VoiceInfo(request, info):
            return _frame(VOICE_INFO, request, json.dumps(info).encode())
        case Speak(request, voice, text):
            name, body = voice.encode(), text.encode()
            if len(name) > 0xFFFF or len(body) > MAX_TEXT_BYTES:
                raise WireError(f"a voice name is at most 65535 bytes, a text {MAX_TEXT_BYTES}")
            return _frame(SPEAK, request, struct.pack(">H", len(name)), name, body)
        case Next(request):
            return _frame(NEXT, request)
        case Stop(request):
            return _frame(STOP, request)
        case Chunk(request, audio, marks):
            spans = np.array(
                [(m.start_char, m.end_char, m.start_sample, m.end_sample) for m in marks],
                dtype=_MARK,
            ).reshape(-1, 4)
            return _frame(
                CHUNK,
                request,
                struct.pack(">I", len(marks)),
                spans.tobytes(),
                np.ascontiguousarray(audio, dtype=_SAMPLE).tobytes(),
            )
        case Done(request):
            return _frame(DONE, request)
        case Failed(request, reason, text):
            return _frame(FAILED, request, bytes([reason]), text.encode())
        case Leaving():
            return _frame(LEAVING, 0)
    raise TypeError(f"not a wire message: {message!r}")


def timeval(seconds: float) -> bytes:
    """`seconds` as a C `struct timeval` (for SO_SNDTIMEO: both ends bound their sends)."""
    return struct.pack("@ll", int(seconds), int(seconds % 1 * 1e6))


def _json(payload: bytes | bytearray) -> dict[str, Any]:
    value = json.loads(payload.decode())
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _chunk(request: int, payload: bytes | bytearray) -> Chunk:
    (count,) = struct.unpack_from(">I", payload)
    end = 4 + 16 * count
    if end > len(payload) or (len(payload) - end) % 4:
        raise ValueError("marks or samples cut short")
    spans = np.frombuffer(payload, dtype=_MARK, count=4 * count, offset=4).reshape(-1, 4)
    marks = tuple(WordMark(*map(int, row)) for row in spans)
    # a view of the frame's own (writable) copy: no further copy of the samples
    audio = np.frombuffer(payload, dtype=_SAMPLE, offset=end).astype(np.float32, copy=False)
    return Chunk(request, audio, marks)


def decode(kind: int, request: int, payload: bytes | bytearray) -> Message:
    """One frame's message. WireError if it cannot be read."""
    try:
        if kind == HELLO:
            return Hello(_json(payload))
        if kind == OPEN:
            return Open(request, payload.decode())
        if kind == VOICE_INFO:
            return VoiceInfo(request, _json(payload))
        if kind == SPEAK:
            (n,) = struct.unpack_from(">H", payload)
            if 2 + n > len(payload):
                raise ValueError("voice name cut short")
            text = payload[2 + n :]
            if len(text) > MAX_TEXT_BYTES:
                raise ValueError(f"text over {MAX_TEXT_BYTES} bytes")
            return Speak(request, payload[2 : 2 + n].decode(), text.decode())
        if kind in (NEXT, STOP, DONE):
            if payload:
                raise ValueError("unexpected payload")
            return (
                Next(request) if kind == NEXT else Stop(request) if kind == STOP else Done(request)
            )
        if kind == CHUNK:
            return _chunk(request, payload)
        if kind == FAILED:
            if not payload:
                raise ValueError("no reason")
            return Failed(request, payload[0], payload[1:].decode(errors="replace"))
        if kind == LEAVING:
            if payload or request:
                raise ValueError("unexpected payload or request id")
            return Leaving()
    except (ValueError, struct.error, RecursionError) as exc:  # (JSON nested too deep)
        raise WireError(f"frame of kind {kind}: {exc}") from None
    raise WireError(f"unknown frame kind {kind}")


class Decoder:
    """Frames in, messages out. Keeps what `feed` was given until its frames are whole (at
    most one frame's bytes beyond what one `feed` brought)."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes

    def feed(self, data: bytes | bytearray) -> list[Message]:
        """The whole messages `data` completes, in order. WireError: a frame that cannot be
        read; drop the connection (the decoder is of no further use)."""
        self._buffer += data
        out: list[Message] = []
        start = 0
        buf = self._buffer
        while len(buf) - start >= HEADER_BYTES:
            length, kind, request = HEADER.unpack_from(buf, start)
            if not HEADER_BYTES - LENGTH_BYTES <= length <= self._max:
                raise WireError(f"a frame of {length} bytes (at most {self._max})")
            end = start + LENGTH_BYTES + length
            if end > len(buf):
                break
            # (one copy of the payload: a bytearray slice, which a chunk's samples then view)
            out.append(decode(kind, request, buf[start + HEADER_BYTES : end]))
            start = end
        del buf[:start]
        return out

    @property
    def buffered(self) -> int:
        """Bytes of a frame not yet whole."""
        return len(self._buffer)
