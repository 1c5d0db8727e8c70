"""The Python client of duplexd: the SDK, and the commands built on it.

Public. `open_session(url)` connects, handshakes and yields a `ClientSession`: stream text in
(`say`, `stream_text`, `send_text`), iterate the frames that come back (audio and events),
`interrupt`, `pause`/`resume`, `ping`, `stats`, and with an uplink `send_audio`. Everything
the server refuses is a `SessionError` (one line), of a kind that says what happened:
`ConnectError` (not reached), `HandshakeRejected` (the upgrade refused: its HTTP `status`, 401
no or bad token, 404, 429, 503), `ServerError` (an Error frame: the protocol's `ErrorCode`),
`ConnectionLost` (closed or dropped mid-session, not resumed).

- `session`: the SDK.
- `audio`: the codecs (Opus decoded to PCM and back, transparently; `CodecError`).
- `errors`: what it raises (`SessionError` and its kinds).
- `dial`: opening the connection (the URL rule, TLS first for wss://) and why it failed.
- `chat`: `duplexd chat`, a voice agent loop (microphone or WAV in, speaker or WAV out).
- `agent`: who answers in `chat`: the demo responder, or an OpenAI-compatible LLM (httpx).
- `probe`: `duplexd probe`, the handshake, the limits and per-frame timing of a daemon.
- `connect`: the connection flags of `say`, `chat`, `probe`: `--url`, the token
  (`DUPLEXD_TOKEN`, `--token-file`), `--ca`.

May import: `duplexd.protocol` (and trio, trio-websocket); nothing of the server side.
"""

from __future__ import annotations

from .audio import CodecError as CodecError
from .errors import ConnectError as ConnectError
from .errors import ConnectionLost as ConnectionLost
from .errors import HandshakeRejected as HandshakeRejected
from .errors import ServerError as ServerError
from .errors import SessionError as SessionError
from .session import ClientSession as ClientSession
from .session import SpokenUtterance as SpokenUtterance
from .session import open_session as open_session
from .session import session_over as session_over

__all__ = [
    "ClientSession",
    "CodecError",
    "ConnectError",
    "ConnectionLost",
    "HandshakeRejected",
    "ServerError",
    "SessionError",
    "SpokenUtterance",
    "open_session",
    "session_over",
]
