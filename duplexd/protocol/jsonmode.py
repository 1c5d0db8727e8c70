"""JSON text mode: a debugging aid for generic WebSocket clients (protocol/SPEC.md, appendix).

A client that offers the subprotocol ``duplexd.v1.json`` (instead of ``duplexd.v1``) may send
WebSocket *text* messages holding one JSON object each, and gets every server frame back as
one JSON text message::

    {"type": "text", "text": "Hello world"}        ->  {"type": "utterance_started", ...}
                                                       {"type": "audio", "seq": 0, ...} ...
                                                       {"type": "utterance_done", ...}

`JsonTransport` wraps the connection: it translates each JSON message into the same frame
objects a binary client sends (`json_to_frames`) and hands the session their binary encoding,
and it turns what the session sends back into JSON (`frame_to_json`). The session code is the
binary one; nothing changes for binary clients (a text message is still NOT_BINARY for them)
and the binary path pays nothing for this mode.

Conveniences of this mode only: the Hello may be left out (the first message that is not a
Hello gets a default one in front); a Text without ``utterance_id`` continues the open
utterance or starts the next one; ``end`` defaults to true; ``options`` may be an object; a
Hello may say ``"pcm": false`` to leave the audio out of ``audio`` messages (their headers
still come, which is what timing checks need). Binary messages pass through untouched.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import re
from typing import Any, Final

from . import frames as fr
from .codec import Decoder, LocalProtocolError, RemoteProtocolError, encode
from .transport import Transport

JSON_SUBPROTOCOL: Final = fr.SUBPROTOCOL + ".json"  # "duplexd.v1.json"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


CLIENT_TYPES: Final[dict[str, type[Any]]] = {
    _snake(cls.__name__): cls
    for cls in (fr.Hello, fr.Text, fr.Interrupt, fr.Pause, fr.Resume, fr.Ping, fr.AudioUp)
}
CLIENT_TYPES["get_stats"] = fr.GetStats
CLIENT_TYPES["played"] = fr.Played
CLIENT_TYPES["stats"] = fr.GetStats  # an alias: what one types by hand


def _bad(why: str) -> RemoteProtocolError:
    return RemoteProtocolError(fr.ErrorCode.MALFORMED, f"JSON mode: {why}")


# ---------------------------------------------------------------------- server frames -> JSON


def frame_to_json(frame: fr.Frame, *, pcm: bool = True) -> dict[str, Any]:
    """A frame as a JSON-ready dict: ``type`` (snake case), then its fields. Bytes are base64
    (``pcm``, dropped if not `pcm`; Audio also gets ``samples``) or hex (``session_id``);
    enums are names; Welcome's ``info`` and Stats' ``json`` are embedded as objects."""
    out: dict[str, Any] = {"type": _snake(type(frame).__name__)}
    for f in dataclasses.fields(frame):
        value = getattr(frame, f.name)
        if f.name == "pcm":
            out["samples"] = len(value) // fr.BYTES_PER_SAMPLE
            if pcm:
                out["pcm"] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, bytes):
            out[f.name] = value.hex()
        elif f.name == "marks":
            out[f.name] = [dataclasses.asdict(m) for m in value]
        elif isinstance(value, enum.Enum):
            out[f.name] = value.name
        elif f.name in ("info", "json", "options") and isinstance(value, str) and value:
            try:
                out["stats" if f.name == "json" else f.name] = json.loads(value)
            except ValueError:
                out[f.name] = value
        else:
            out[f.name] = value
    return out


# ---------------------------------------------------------------------- JSON -> client frames


class JsonTranslator:
    """The client side's JSON messages → client frames, with this mode's conveniences."""

    def __init__(self) -> None:
        self.said_hello = False
        self.pcm = True  # include the audio in `audio` messages
        self._open_uid = 0  # an utterance whose text has not ended yet (0: none)
        self._last_uid = 0

    def frames(self, text: str) -> list[fr.ClientFrame]:
        """The frames of one JSON text message. Raises RemoteProtocolError (MALFORMED)."""
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise _bad(f"not JSON: {exc}") from None
        except RecursionError:
            raise _bad("not JSON this mode reads: nested too deeply") from None
        if not isinstance(obj, dict):
            raise _bad("a message must be a JSON object")
        kind = obj.pop("type", None)
        cls = CLIENT_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise _bad(f"unknown type {kind!r}; one of {', '.join(CLIENT_TYPES)}")
        out: list[fr.ClientFrame] = []
        if cls is fr.Hello:
            pcm = obj.pop("pcm", True)
            if not isinstance(pcm, bool):
                raise _bad("hello.pcm must be true or false")
            self.pcm = pcm
            if isinstance(obj.get("options"), dict):
                obj["options"] = json.dumps(obj["options"])
        elif not self.said_hello:
            out.append(fr.Hello())  # implicit Hello with the defaults
        self.said_hello = True
        if cls is fr.Text:
            self._text_defaults(obj)
        elif cls is fr.Ping:
            obj.setdefault("nonce", 0)
        elif cls is fr.AudioUp and isinstance(obj.get("pcm"), str):
            try:
                obj["pcm"] = base64.b64decode(obj["pcm"], validate=True)
            except ValueError:
                raise _bad("audio_up.pcm must be base64") from None
        try:
            frame = cls(**obj)
        except TypeError as exc:
            raise _bad(f"{kind}: {exc}") from None
        if cls is fr.Interrupt:
            self._open_uid = 0
        out.append(frame)
        return out

    def _text_defaults(self, obj: dict[str, Any]) -> None:
        if "utterance_id" not in obj:
            obj["utterance_id"] = self._open_uid or self._last_uid + 1
        uid = obj["utterance_id"]
        obj.setdefault("end", True)
        if isinstance(uid, int) and not isinstance(uid, bool):
            self._last_uid = max(self._last_uid, uid)
            self._open_uid = 0 if obj["end"] else uid


class JsonTransport:
    """A session transport speaking JSON text messages to the peer (see the module doc)."""

    def __init__(self, ws: Transport) -> None:
        self._ws = ws
        self._in = JsonTranslator()
        self._decoder = Decoder(peer="server")
        # audio bodies pass through opaque both ways: an Opus packet (SPEC §4.6.3) is base64
        # as PCM is; the session's own decoder judges what the client sends
        self._decoder.packet_audio = True
        self.subprotocol = JSON_SUBPROTOCOL

    async def get_message(self) -> str | bytes:
        message = await self._ws.get_message()
        if isinstance(message, bytes):
            return message
        frames = self._in.frames(message)
        try:
            return b"".join(encode(f, packet_audio=True) for f in frames)
        except LocalProtocolError as exc:
            raise _bad(exc.message) from None

    async def send_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            await self._ws.send_message(message)
            return
        self._decoder.receive_data(message)
        for frame in self._decoder:
            text = json.dumps(frame_to_json(frame, pcm=self._in.pcm), separators=(",", ":"))
            await self._ws.send_message(text)

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        await self._ws.aclose(code, reason)
