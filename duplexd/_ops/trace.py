"""`duplexd serve --trace PATH`: every frame's header, with timestamps, as JSON lines.

Tracing wraps the WebSocket of a selected session (`--trace-session`: ``first``, the default;
``all``; or ``N``, the N-th session since start) in a `TracedTransport` that writes one line
per frame, both directions::

    {"t":0.123456,"ts":1767000000.123,"session":"3f2a...","dir":"out","type":"audio",
     "bytes":1936,"epoch":0,"utterance_id":1,"seq":0,"last":false,"samples":960}

``t`` is seconds since the session was accepted (the daemon's monotonic clock), ``ts`` the
wall clock. Audio never goes in (``samples`` says how much there was); Hello's token is
hidden. The session code never sees the difference, and when tracing is off `debug_transport`
returns the connection itself: the per-frame cost is zero.

`debug_transport` also applies the JSON text mode (`duplexd.protocol.jsonmode`) when the client
negotiated it; the trace then shows the frames the session handles, not the JSON text.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import IO, Any, Final

import trio

from ..protocol.codec import AUDIO_HEADER, Decoder, RemoteProtocolError
from ..protocol.frames import AUDIO_HEADER_BYTES, BYTES_PER_SAMPLE, FrameType
from ..protocol.jsonmode import JSON_SUBPROTOCOL, JsonTransport, Transport, frame_to_json

_PREFIX_BYTES: Final = 4
_COMPACT: Final = (",", ":")


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace",
        default="",
        metavar="PATH",
        help="write every frame header (not audio) of the traced session(s) here, JSON lines",
    )
    p.add_argument(
        "--trace-session",
        default="first",
        metavar="WHICH",
        help="which sessions --trace records: first (default), all, or N (the N-th session)",
    )


class Tracer:
    """Chooses the sessions to trace and owns the trace file (appended to, line per frame)."""

    def __init__(self, path: str, which: str = "first") -> None:
        which = which.strip().lower()
        if which == "first":
            which = "1"
        if which != "all" and not (which.isdigit() and int(which) >= 1):
            raise ValueError(f"--trace-session must be first, all or N >= 1, got {which!r}")
        self.path = path
        self._which = which
        self._seen = 0
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def selects_next(self) -> bool:
        """Count a new session; whether it is traced."""
        self._seen += 1
        return self._which == "all" or int(self._which) == self._seen

    def write(self, lines: list[str]) -> None:
        with self._lock:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            self._file.write("".join(lines))
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


_tracer: Tracer | None = None


def configure_tracing(path: str, which: str = "first") -> Tracer | None:
    """Trace the sessions `which` selects to `path` ("" turns tracing off). Process-wide."""
    global _tracer
    if _tracer is not None:
        _tracer.close()
    _tracer = Tracer(path, which) if path else None
    return _tracer


def debug_transport(ws: Any) -> Any:
    """The transport a new session gets: `ws` itself, unless the client chose the JSON mode
    or this session is traced. Called once per session, on the trio thread."""
    transport = JsonTransport(ws) if getattr(ws, "subprotocol", None) == JSON_SUBPROTOCOL else ws
    if _tracer is not None and _tracer.selects_next():
        return TracedTransport(transport, _tracer)
    return transport


class TracedTransport:
    """Records the frames that go through `ws` (see the module doc), then passes them on."""

    def __init__(self, ws: Transport, tracer: Tracer) -> None:
        self._ws = ws
        self._tracer = tracer
        self._t0 = trio.current_time()
        self._session: str | None = None
        self._pending: list[dict[str, Any]] = []  # records before Welcome names the session
        self._broken = {"in": False, "out": False}
        self.subprotocol = getattr(ws, "subprotocol", None)

    async def get_message(self) -> str | bytes:
        message = await self._ws.get_message()
        self._record("in", message)
        return message

    async def send_message(self, message: str | bytes) -> None:
        self._record("out", message)
        await self._ws.send_message(message)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        self._emit({"dir": "close", "type": "close", "code": code, "reason": reason or ""})
        self._flush_pending()
        await self._ws.aclose(code, reason)

    # ------------------------------------------------------------------ records

    def _record(self, direction: str, message: str | bytes) -> None:
        if isinstance(message, str):
            self._emit({"dir": direction, "type": "text_message", "chars": len(message)})
            return
        data = memoryview(message)
        off = 0
        while off + _PREFIX_BYTES + 2 <= len(data) and not self._broken[direction]:
            length = int.from_bytes(data[off : off + _PREFIX_BYTES], "little")
            end = off + _PREFIX_BYTES + length
            record = self._describe(direction, data[off:end], length + _PREFIX_BYTES)
            self._emit(record)
            off = end

    def _describe(self, direction: str, frame: memoryview, size: int) -> dict[str, Any]:
        rec: dict[str, Any]
        if frame[4] == FrameType.AUDIO and len(frame) >= AUDIO_HEADER_BYTES:
            _, _, flags, epoch, uid, seq = AUDIO_HEADER.unpack_from(frame)
            rec = {"type": "audio", "epoch": epoch, "utterance_id": uid, "seq": seq}
            rec["last"] = bool(flags & 1)
            rec["samples"] = (size - AUDIO_HEADER_BYTES) // BYTES_PER_SAMPLE
        else:
            decoder = Decoder(peer="server" if direction == "out" else "client")
            try:
                decoder.receive_data(frame)
                decoded = decoder.next_frame()
            except RemoteProtocolError as exc:
                self._broken[direction] = True
                return {"dir": direction, "type": "undecodable", "bytes": size, "error": str(exc)}
            if decoded is None:
                return {"dir": direction, "type": "skipped", "bytes": size, "type_byte": frame[4]}
            rec = frame_to_json(decoded, pcm=False)
            if rec.get("token"):
                rec["token"] = "<hidden>"
            if rec["type"] == "welcome":
                self._session = str(rec["session_id"])[:12]
        return {"dir": direction, "bytes": size, **rec}

    def _emit(self, record: dict[str, Any]) -> None:
        now = trio.current_time()
        record = {"t": round(now - self._t0, 6), "ts": round(time.time(), 6), **record}
        if self._session is None:
            self._pending.append(record)
            return
        self._flush_pending()
        self._write([record])

    def _flush_pending(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._write(pending)

    def _write(self, records: list[dict[str, Any]]) -> None:
        session = self._session or ""
        lines = [json.dumps({"session": session, **r}, separators=_COMPACT) + "\n" for r in records]
        self._tracer.write(lines)
