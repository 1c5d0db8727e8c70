"""duplexd: a realtime full-duplex voice daemon.

Text streams in, speech leaves as 20 ms frames on absolute deadlines, the user's microphone
streams up at the same time, and a barge-in is a cancel scope. See README.md and
protocol/SPEC.md.

This module is the map of the package, and its public face: it re-exports what users touch
(the SDK, the protocol's frames, the settings, the service entry point, the engine plugin
API). Everything a program needs is importable from here or from the public subpackages.

    duplexd/protocol/   public   the wire protocol, sans-I/O: frames, codec, session rules,
                                 Hello options, JSON mode                  <- a byte is decoded
    duplexd/client/     public   the SDK (`open_session`), `chat`, the LLM adapter, `probe`
    duplexd/engines/    public   the engine plugin API; `tone`, `vits`; the registry; `remote`:
                                 a model process shared by several daemons (its wire)
    duplexd/_server/    private  the listeners (TLS), each connection's handshake (a byte enters),
                                 the open session (a cancel lands: `Session._interrupt`),
                                 the service (systemd, drain), `serve-model`'s process
    duplexd/_downlink/  private  segment -> utterance -> producer (engine, resample) -> ring
                                 -> pacer -> writer                        <- audio is paced
    duplexd/_uplink/    private  microphone -> echo -> VAD -> barge-ins, turns -> ASR
    duplexd/_ops/       private  settings, flags, auth (tokens), TLS context, logs, metrics,
                                 Prometheus, trace, the HTTP side port, sd_notify
    duplexd/cli.py               the `duplexd` command (`main`)
    native/ (source tree)        the C ring and timer, built into `duplexd._native`
    duplexd/_opus.py             a leaf: Opus packets <-> s16 frames (PyAV), for both sides

Layers (checked by tests/test_layering.py): `protocol` and `engines` import nothing of duplexd
(and `protocol` no trio); `client` imports `protocol` only; `_ops` imports `protocol` and
`engines`; `_downlink` adds `_ops`; `_uplink` adds `_downlink`; `_server` may import all of
them; nothing imports upward.
"""

from __future__ import annotations

from ._ops.settings import ConfigError as ConfigError
from ._ops.settings import SessionLimits as SessionLimits
from ._ops.settings import Settings as Settings
from ._ops.settings import load_settings as load_settings
from ._server.server import Daemon as Daemon
from ._server.server import serve_duplexd as serve_duplexd
from ._server.service import Service as Service
from ._server.startup import StartupError as StartupError
from ._version import __version__ as __version__
from .cli import main as main
from .client import ClientSession as ClientSession
from .client import ConnectError as ConnectError
from .client import ConnectionLost as ConnectionLost
from .client import HandshakeRejected as HandshakeRejected
from .client import ServerError as ServerError
from .client import SessionError as SessionError
from .client import SpokenUtterance as SpokenUtterance
from .client import open_session as open_session
from .client import session_over as session_over
from .engines import Engine as Engine
from .engines import EngineError as EngineError
from .engines import EngineSet as EngineSet
from .engines import FloatAudio as FloatAudio
from .engines import StreamingVoice as StreamingVoice
from .engines import UnknownVoiceError as UnknownVoiceError
from .engines import Voice as Voice
from .engines import WordTimedVoice as WordTimedVoice
from .engines import available_engines as available_engines
from .engines import load_engine as load_engine
from .protocol import FRAME_MS as FRAME_MS
from .protocol import SAMPLE_RATE_HZ as SAMPLE_RATE_HZ
from .protocol import SUBPROTOCOL as SUBPROTOCOL
from .protocol import WS_PATH as WS_PATH
from .protocol import Audio as Audio
from .protocol import CloseCode as CloseCode
from .protocol import Decoder as Decoder
from .protocol import Error as Error
from .protocol import ErrorCode as ErrorCode
from .protocol import Hello as Hello
from .protocol import Interrupted as Interrupted
from .protocol import LocalProtocolError as LocalProtocolError
from .protocol import Paused as Paused
from .protocol import Pong as Pong
from .protocol import ProtocolError as ProtocolError
from .protocol import RemoteProtocolError as RemoteProtocolError
from .protocol import Resumed as Resumed
from .protocol import ServerFrame as ServerFrame
from .protocol import SpeechStarted as SpeechStarted
from .protocol import SpeechStopped as SpeechStopped
from .protocol import Stats as Stats
from .protocol import Transcript as Transcript
from .protocol import UtteranceDone as UtteranceDone
from .protocol import UtteranceStarted as UtteranceStarted
from .protocol import Welcome as Welcome
from .protocol import encode as encode

__all__ = [
    "FRAME_MS",
    "SAMPLE_RATE_HZ",
    "SUBPROTOCOL",
    "WS_PATH",
    "Audio",
    "ClientSession",
    "CloseCode",
    "ConfigError",
    "ConnectError",
    "ConnectionLost",
    "Daemon",
    "Decoder",
    "Engine",
    "EngineError",
    "EngineSet",
    "Error",
    "ErrorCode",
    "FloatAudio",
    "HandshakeRejected",
    "Hello",
    "Interrupted",
    "LocalProtocolError",
    "Paused",
    "Pong",
    "ProtocolError",
    "RemoteProtocolError",
    "Resumed",
    "ServerError",
    "ServerFrame",
    "Service",
    "SessionError",
    "SessionLimits",
    "Settings",
    "SpeechStarted",
    "SpeechStopped",
    "SpokenUtterance",
    "StartupError",
    "Stats",
    "StreamingVoice",
    "Transcript",
    "UnknownVoiceError",
    "UtteranceDone",
    "UtteranceStarted",
    "Voice",
    "Welcome",
    "WordTimedVoice",
    "available_engines",
    "encode",
    "load_engine",
    "load_settings",
    "main",
    "open_session",
    "serve_duplexd",
    "session_over",
]
