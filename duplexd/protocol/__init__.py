"""The duplexd wire protocol, sans-I/O: bytes in, frames out, and the rules between them.

Public. This is the normative Python view of `protocol/SPEC.md` (with its golden vectors in
`protocol/vectors/`): a client in any language can be written from the spec, and a Python one
from this package alone. Nothing here does I/O or imports trio.

- `frames`: the frozen frame dataclasses (the events), error and close codes, constants.
- `codec`: `encode(frame)` and the incremental `Decoder` (a half-received frame changes
  nothing); `LocalProtocolError` (our bug) vs `RemoteProtocolError` (the peer's), each with the
  error code to report; `iter_frames` walks a message's frames without decoding them.
- `state`: `ServerProtocolState`, the session rules both ways (`receive`, `send`, `barge_in`).
- `options`: Hello.options, checked once (`SessionOptions`).
- `jsonmode`: the JSON text mode, a debugging aid for generic WebSocket clients.
- `transport`: the `Transport` interface the server's session runs over.

May import: nothing of duplexd (the standard library only).
"""

from __future__ import annotations

from .codec import Decoder as Decoder
from .codec import LocalProtocolError as LocalProtocolError
from .codec import ProtocolError as ProtocolError
from .codec import RawFrame as RawFrame
from .codec import RemoteProtocolError as RemoteProtocolError
from .codec import encode as encode
from .codec import iter_frames as iter_frames
from .frames import AUDIO_HEADER_BYTES as AUDIO_HEADER_BYTES
from .frames import AUDIO_UP_HEADER_BYTES as AUDIO_UP_HEADER_BYTES
from .frames import BYTES_PER_SAMPLE as BYTES_PER_SAMPLE
from .frames import CODEC_OPUS as CODEC_OPUS
from .frames import CODEC_PCM as CODEC_PCM
from .frames import FLAG_BIT as FLAG_BIT
from .frames import FRAME_HEADER_BYTES as FRAME_HEADER_BYTES
from .frames import FRAME_MS as FRAME_MS
from .frames import LENGTH_PREFIX_BYTES as LENGTH_PREFIX_BYTES
from .frames import MAX_FRAME_BYTES as MAX_FRAME_BYTES
from .frames import OPTIONAL_TYPE_BIT as OPTIONAL_TYPE_BIT
from .frames import OPUS_RATES_HZ as OPUS_RATES_HZ
from .frames import PROTOCOL_VERSION as PROTOCOL_VERSION
from .frames import SAMPLE_RATE_HZ as SAMPLE_RATE_HZ
from .frames import SUBPROTOCOL as SUBPROTOCOL
from .frames import SUPPORTED_SAMPLE_RATES_HZ as SUPPORTED_SAMPLE_RATES_HZ
from .frames import SUPPORTED_UPLINK_RATES_HZ as SUPPORTED_UPLINK_RATES_HZ
from .frames import WS_PATH as WS_PATH
from .frames import Audio as Audio
from .frames import AudioFlags as AudioFlags
from .frames import AudioUp as AudioUp
from .frames import BargeIn as BargeIn
from .frames import BargeInOutcome as BargeInOutcome
from .frames import BargeInReason as BargeInReason
from .frames import ClientFrame as ClientFrame
from .frames import CloseCode as CloseCode
from .frames import Error as Error
from .frames import ErrorCode as ErrorCode
from .frames import Frame as Frame
from .frames import FrameType as FrameType
from .frames import GetStats as GetStats
from .frames import Heard as Heard
from .frames import Hello as Hello
from .frames import Interrupt as Interrupt
from .frames import Interrupted as Interrupted
from .frames import InterruptedFlags as InterruptedFlags
from .frames import Pause as Pause
from .frames import Paused as Paused
from .frames import Ping as Ping
from .frames import Played as Played
from .frames import PlayedFlags as PlayedFlags
from .frames import Pong as Pong
from .frames import Resume as Resume
from .frames import Resumed as Resumed
from .frames import ServerFrame as ServerFrame
from .frames import SpeechStarted as SpeechStarted
from .frames import SpeechStopped as SpeechStopped
from .frames import Stats as Stats
from .frames import Text as Text
from .frames import TextFlags as TextFlags
from .frames import Transcript as Transcript
from .frames import TranscriptFlags as TranscriptFlags
from .frames import TurnEnd as TurnEnd
from .frames import TurnEndBy as TurnEndBy
from .frames import UtteranceDone as UtteranceDone
from .frames import UtteranceStarted as UtteranceStarted
from .frames import Welcome as Welcome
from .frames import WordMark as WordMark
from .frames import Words as Words
from .frames import frame_samples as frame_samples
from .options import AsrOptions as AsrOptions
from .options import CodecOptions as CodecOptions
from .options import ResumeOptions as ResumeOptions
from .options import SessionOptions as SessionOptions
from .options import VadOptions as VadOptions
from .options import parse_options as parse_options
from .state import Phase as Phase
from .state import ServerProtocolState as ServerProtocolState
from .transport import Transport as Transport

__all__ = [
    "AUDIO_HEADER_BYTES",
    "AUDIO_UP_HEADER_BYTES",
    "BYTES_PER_SAMPLE",
    "CODEC_OPUS",
    "CODEC_PCM",
    "FLAG_BIT",
    "FRAME_HEADER_BYTES",
    "FRAME_MS",
    "LENGTH_PREFIX_BYTES",
    "MAX_FRAME_BYTES",
    "OPTIONAL_TYPE_BIT",
    "OPUS_RATES_HZ",
    "PROTOCOL_VERSION",
    "SAMPLE_RATE_HZ",
    "SUBPROTOCOL",
    "SUPPORTED_SAMPLE_RATES_HZ",
    "SUPPORTED_UPLINK_RATES_HZ",
    "WS_PATH",
    "AsrOptions",
    "Audio",
    "AudioFlags",
    "AudioUp",
    "BargeIn",
    "BargeInOutcome",
    "BargeInReason",
    "ClientFrame",
    "CloseCode",
    "CodecOptions",
    "Decoder",
    "Error",
    "ErrorCode",
    "Frame",
    "FrameType",
    "GetStats",
    "Heard",
    "Hello",
    "Interrupt",
    "Interrupted",
    "InterruptedFlags",
    "LocalProtocolError",
    "Pause",
    "Paused",
    "Phase",
    "Ping",
    "Played",
    "PlayedFlags",
    "Pong",
    "ProtocolError",
    "RawFrame",
    "RemoteProtocolError",
    "Resume",
    "ResumeOptions",
    "Resumed",
    "ServerFrame",
    "ServerProtocolState",
    "SessionOptions",
    "SpeechStarted",
    "SpeechStopped",
    "Stats",
    "Text",
    "TextFlags",
    "Transcript",
    "TranscriptFlags",
    "Transport",
    "TurnEnd",
    "TurnEndBy",
    "UtteranceDone",
    "UtteranceStarted",
    "VadOptions",
    "Welcome",
    "WordMark",
    "Words",
    "encode",
    "frame_samples",
    "iter_frames",
    "parse_options",
]
