"""`duplexd serve --trace PATH`: every frame's header, with timestamps, as JSON lines.

Tracing wraps the WebSocket of a selected session (settings `[trace] sessions` or
`--trace-session`: ``first``, the default; ``all``; or ``N``, the N-th session since start) in
a `TracedTransport` that writes one line per frame, both directions::

    {"t":0.123456,"ts":1767000000.123,"session":"3f2a...","dir":"out","type":"audio",
     "bytes":1936,"epoch":0,"utterance_id":1,"seq":0,"last":false,"samples":960}

``t`` is seconds since the session was accepted (the daemon's monotonic clock), ``ts`` the
wall clock. Audio never goes in (``samples`` says how much there was); Hello's token is
hidden. The session code never sees the difference, and when tracing is off `debug_session`
returns the connection itself: the per-frame cost is zero. The service owns the one `Tracer`
(settings `[trace] path`) and hands it to the server.

With `[trace] uplink_dir` (`--trace-uplink`) the selected sessions' uplink inputs are also
recorded there, a file per session, to be replayed offline (`duplexd/_uplink/record.py`).

`debug_session` also applies the JSON text mode (`duplexd.protocol.jsonmode`) when the client
negotiated it; the trace then shows the frames the session handles, not the JSON text.
"""

from __future__ import annotations

import json
import threading
import time
from typing import IO, Any, Final

import trio

from ..protocol.codec import AUDIO_HEADER, Decoder, RawFrame, RemoteProtocolError, iter_frames
from ..protocol.frames import AUDIO_HEADER_BYTES, BYTES_PER_SAMPLE, FrameType
from ..protocol.jsonmode import JSON_SUBPROTOCOL, JsonTransport, frame_to_json
from ..protocol.transport import Transport

_COMPACT: Final = (",", ":")


class Tracer:
    """Chooses the sessions to trace and owns the trace file (appended to, line per frame)."""

    def __init__(self, path: str, which: str = "first", *, uplink_dir: str = "") -> None:
        which = which.strip().lower()
        if which == "first":
            which = "1"
        if which != "all" and not (which.isdigit() and int(which) >= 1):
            raise ValueError(f"must be first, all or N >= 1, got {which!r}")
        self.path = path  # "" : no frame headers (only `uplink_dir`)
        self.uplink_dir = uplink_dir  # "": the uplinks not recorded
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


def debug_session(ws: Any, tracer: Tracer | None) -> tuple[Any, str]:
    """The transport a new session gets: `ws` itself, unless the client chose the JSON mode
    or `tracer` selects this session (and has a `path`); and the directory to record the
    session's uplink in ("": not recorded; `[trace] uplink_dir`, for the sessions `tracer`
    selects). Called once per session, on the trio thread."""
    transport = JsonTransport(ws) if getattr(ws, "subprotocol", None) == JSON_SUBPROTOCOL else ws
    if tracer is None or not tracer.selects_next():
        return transport, ""
    if tracer.path:
        transport = TracedTransport(transport, tracer)
    return transport, tracer.uplink_dir


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
        if self._broken[direction]:
            return
        try:
            for raw in iter_frames(message):
                self._emit(self._describe(direction, raw))
        except RemoteProtocolError as exc:  # the session reports it; the trace shows it
            self._broken[direction] = True
            self._emit({"dir": direction, "type": "undecodable", "error": str(exc)})

    def _describe(self, direction: str, raw: RawFrame) -> dict[str, Any]:
        rec: dict[str, Any]
        frame, size = raw.data, len(raw.data)
        if raw.type == FrameType.AUDIO and size >= AUDIO_HEADER_BYTES:
            _, _, flags, epoch, uid, seq = AUDIO_HEADER.unpack_from(frame)
            rec = {"type": "audio", "epoch": epoch, "utterance_id": uid, "seq": seq}
            rec["last"] = bool(flags & 1)
            rec["samples"] = (size - AUDIO_HEADER_BYTES) // BYTES_PER_SAMPLE
        else:
            decoder = Decoder(peer="server" if direction == "out" else "client")
            decoder.packet_audio = True  # an AudioUp body may be an Opus packet (any length)
            try:
                decoder.receive_data(frame)
                decoded = decoder.next_frame()
            except RemoteProtocolError as exc:
                self._broken[direction] = True
                return {"dir": direction, "type": "undecodable", "bytes": size, "error": str(exc)}
            if decoded is None:
                return {"dir": direction, "type": "skipped", "bytes": size, "type_byte": raw.type}
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
