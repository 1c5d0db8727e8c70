"""A minimal duplexd client written only from `protocol/SPEC.md`: `struct` and raw bytes.

It deliberately imports nothing from `duplexd`: if the daemon and this client disagree, either
the daemon or the spec is wrong. trio-websocket is only the WebSocket transport (SPEC §2).
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

# SPEC §3.3 frame types
HELLO, TEXT, INTERRUPT, PAUSE, RESUME, PING, AUDIO_UP, GET_STATS = 1, 2, 3, 4, 5, 6, 7, 0x41
WELCOME, AUDIO, UTTERANCE_STARTED, UTTERANCE_DONE, INTERRUPTED = 0x80, 0x81, 0x82, 0x83, 0x84
PAUSED, RESUMED, PONG, ERROR, STATS = 0x85, 0x86, 0x87, 0x88, 0xC1
END = 0x01  # SPEC §3.2
SUBPROTOCOL = "duplexd.v1"  # SPEC §2
MAX_FRAME_BYTES = 65536  # SPEC §3.1


class SpecViolation(Exception):
    """The server sent something SPEC.md does not allow."""


@dataclass
class Frame:
    """One decoded server frame: its type, flags, and the fields SPEC §5 names."""

    type: int
    flags: int
    fields: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]


def frame(type_: int, body: bytes = b"", flags: int = 0) -> bytes:
    """SPEC §3.1: u32 length (= 2 + body size), u8 type, u8 flags, body."""
    return struct.pack("<IBB", 2 + len(body), type_, flags) + body


def str16(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<H", len(raw)) + raw


def json32(obj: dict[str, Any] | None) -> bytes:
    raw = json.dumps(obj).encode("utf-8") if obj is not None else b""
    return struct.pack("<I", len(raw)) + raw


def hello(
    *,
    rate: int = 48000,
    token: str = "",
    engine: str = "",
    voice: str = "",
    options: dict[str, Any] | None = None,
    versions: tuple[int, int] = (1, 1),
) -> bytes:
    """SPEC §4.1: min/max version, sample rate, frame_ms 20, no uplink, then the strings."""
    body = struct.pack("<HHIHI", versions[0], versions[1], rate, 20, 0)
    return frame(HELLO, body + str16(token) + str16(engine) + str16(voice) + json32(options))


def text(utterance_id: int, chunk: str, *, end: bool = False) -> bytes:
    """SPEC §4.2."""
    return frame(TEXT, struct.pack("<I", utterance_id) + chunk.encode("utf-8"), END if end else 0)


def ping(nonce: int) -> bytes:
    return frame(PING, struct.pack("<Q", nonce))


class _Body:
    """Reads SPEC §3.5 fields off a body; any overrun or leftover is a violation."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.body):
            raise SpecViolation(f"body too short for {fmt}")
        values = struct.unpack_from("<" + fmt, self.body, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def bytes_(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise SpecViolation("string overruns the body")
        raw = self.body[self.pos : self.pos + n]
        self.pos += n
        return raw

    def str16(self) -> str:
        return self.bytes_(self.take("H")).decode("utf-8")

    def json32(self) -> dict[str, Any] | None:
        raw = self.bytes_(self.take("I"))
        if not raw:
            return None
        value = json.loads(raw.decode("utf-8"))
        if not isinstance(value, dict):
            raise SpecViolation("json32 field is not an object")
        return value

    def rest(self) -> bytes:
        raw = self.body[self.pos :]
        self.pos = len(self.body)
        return raw

    def done(self) -> None:
        if self.pos != len(self.body):
            raise SpecViolation(f"{len(self.body) - self.pos} trailing bytes")


def _parse_body(type_: int, flags: int, body: bytes) -> dict[str, Any]:
    b = _Body(body)
    if flags & ~END or (flags and type_ != AUDIO):  # SPEC §3.2 (TRANSCRIPT not handled here)
        raise SpecViolation(f"reserved flags 0x{flags:02x} on type 0x{type_:02x}")
    out: dict[str, Any]
    if type_ == WELCOME:
        names = (
            "version",
            "session_id",
            "sample_rate_hz",
            "frame_samples",
            "uplink_rate_hz",
            "max_frame_bytes",
            "max_text_bytes",
            "max_queued_utterances",
        )
        out = dict(zip(names, b.take("H16sIIIIII"), strict=True))
        out |= {"engine": b.str16(), "voice": b.str16(), "info": b.json32()}
    elif type_ == AUDIO:
        out = dict(zip(("epoch", "utterance_id", "seq"), b.take("HII"), strict=True))
        out["pcm"] = b.rest()
        out["end"] = bool(flags & END)
        if len(out["pcm"]) % 2:
            raise SpecViolation("odd number of PCM bytes")
    elif type_ == UTTERANCE_STARTED:
        out = dict(zip(("epoch", "utterance_id"), b.take("HI"), strict=True))
    elif type_ == UTTERANCE_DONE:
        names = ("epoch", "utterance_id", "samples_sent", "chars_spoken")
        out = dict(zip(names, b.take("HIQI"), strict=True))
    elif type_ == INTERRUPTED:
        names = ("epoch", "utterance_id", "samples_sent", "chars_spoken", "cancelled_utterances")
        out = dict(zip(names, b.take("HIQII"), strict=True))
    elif type_ in (PAUSED, RESUMED):
        out = {}
    elif type_ == PONG:
        out = dict(zip(("nonce", "server_time_ns"), b.take("QQ"), strict=True))
    elif type_ == ERROR:
        out = {"code": b.take("H"), "message": b.rest().decode("utf-8")}
        if not 1 <= out["code"] <= 19:
            raise SpecViolation(f"unknown error code {out['code']}")
    elif type_ == STATS:
        raw = b.rest()
        out = {"json": json.loads(raw.decode("utf-8")) if raw else None}
    else:
        raise SpecViolation(f"type 0x{type_:02x} not handled")
    b.done()
    return out


def parse_message(message: bytes) -> list[Frame]:
    """All frames of one WebSocket message (SPEC §2: whole frames only)."""
    frames = []
    pos = 0
    while pos < len(message):
        if len(message) - pos < 4:
            raise SpecViolation("message ends inside a length prefix")
        (length,) = struct.unpack_from("<I", message, pos)
        if length < 2 or 4 + length > MAX_FRAME_BYTES:
            raise SpecViolation(f"bad frame length {length}")
        end = pos + 4 + length
        if end > len(message):
            raise SpecViolation("frame spans messages")
        type_, flags = message[pos + 4], message[pos + 5]
        if not type_ & 0x80:
            raise SpecViolation(f"client type 0x{type_:02x} from the server")
        known = (
            WELCOME,
            AUDIO,
            UTTERANCE_STARTED,
            UTTERANCE_DONE,
            INTERRUPTED,
            PAUSED,
            RESUMED,
            PONG,
            ERROR,
            STATS,
        )
        if type_ in known:
            frames.append(Frame(type_, flags, _parse_body(type_, flags, message[pos + 6 : end])))
        elif not type_ & 0x40:
            raise SpecViolation(f"unknown non-optional type 0x{type_:02x}")
        pos = end  # an unknown optional frame is skipped (§3.4)
    return frames


class SpecClient:
    """One session. `receive()` returns the frames of the next message and its arrival time."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.welcome: Frame | None = None

    async def send(self, *frames: bytes) -> None:
        await self.ws.send_message(b"".join(frames))

    async def receive(self) -> tuple[float, list[Frame]]:
        message = await self.ws.get_message()
        now = trio.current_time()
        if not isinstance(message, bytes):
            raise SpecViolation("text WebSocket message from the server")
        return now, parse_message(message)

    async def handshake(self, hello_frame: bytes | None = None) -> Frame:
        """SPEC §6.1: send HELLO, expect WELCOME (or ERROR) as the first frame."""
        await self.send(hello_frame or hello())
        _, frames = await self.receive()
        if not frames or frames[0].type not in (WELCOME, ERROR):
            raise SpecViolation(f"expected WELCOME, got {frames}")
        if frames[0].type == WELCOME:
            self.welcome = frames[0]
        return frames[0]


@asynccontextmanager
async def open_spec_client(url: str) -> AsyncIterator[SpecClient]:
    """Connect to `ws://host:port/v1` offering the `duplexd.v1` subprotocol (SPEC §2)."""
    host_port = url.removeprefix("ws://").split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, int(port))
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, host, "/v1", subprotocols=[SUBPROTOCOL])
            if ws.subprotocol != SUBPROTOCOL:
                raise SpecViolation(f"server selected subprotocol {ws.subprotocol!r}")
            try:
                yield SpecClient(ws)
            finally:
                with trio.move_on_after(2):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await stream.aclose()  # the TCP socket is closed whatever the WebSocket did
