"""The SDK's side of the audio codecs (protocol/SPEC.md §4.6.3): Opus in, PCM out, and back.

An application asks for Opus in `open_session(options={"codec": {"downlink": "opus",
"uplink": "opus"}})` and still sees PCM: `SessionAudio` decodes each AUDIO frame's packet
into exactly `frame_samples` s16le samples before the frame is delivered (a decoder per
utterance, as the server encodes), and encodes the PCM given to `send_audio` into one packet
per frame. Decoding a 20 ms packet takes tens of µs, encoding one ~200 µs: done inline, in
the SDK's reader task and in `send_audio` (the application's own loop and CPU). Decoded
audio lags the sample positions by Opus' delay (`duplexd._opus.OPUS_DELAY_MS`).

`check_codec_options` refuses, before connecting, what the server would refuse: Opus at a
rate Opus does not code (`CodecError`, a `SessionError` and a `ValueError`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from .._opus import OpusDecoder, OpusEncoder, OpusPacketError
from ..protocol import frames as fr
from .errors import ServerError, SessionError

__all__ = ["CodecError", "SessionAudio", "check_codec_options"]


class CodecError(SessionError, ValueError):
    """The codec asked for cannot be used: Opus at a sample rate Opus does not code, or a
    codec name other than "pcm" and "opus" (raised before connecting)."""


def check_codec_options(
    options: dict[str, Any] | None, *, sample_rate_hz: int, uplink_rate_hz: int
) -> None:
    """Raise `CodecError` if `options["codec"]` asks for what no server grants."""
    codec = (options or {}).get("codec")
    if codec is None:
        return
    if not isinstance(codec, dict):
        raise CodecError('options["codec"] must be a dict, e.g. {"downlink": "opus"}')
    rates = ", ".join(str(r) for r in fr.OPUS_RATES_HZ)
    for direction, rate in (("downlink", sample_rate_hz), ("uplink", uplink_rate_hz)):
        asked = codec.get(direction, fr.CODEC_PCM)
        if asked not in (fr.CODEC_PCM, fr.CODEC_OPUS):
            raise CodecError(f'codec {direction} {asked!r}: ask for "pcm" or "opus"')
        if asked == fr.CODEC_OPUS and rate and rate not in fr.OPUS_RATES_HZ:
            raise CodecError(
                f"Opus {direction} at {rate} Hz: Opus codes {rates} Hz only;"
                " pick one of those rates, or pcm"
            )


class SessionAudio:
    """What Welcome's `info.codec` granted, and the codec state of one session."""

    def __init__(self, welcome: fr.Welcome) -> None:
        info = json.loads(welcome.info) if welcome.info else {}
        codec = info.get("codec") if isinstance(info, dict) else None
        codec = codec if isinstance(codec, dict) else {}  # an older server: PCM both ways
        self.opus_down = codec.get("downlink") == fr.CODEC_OPUS
        self.opus_up = codec.get("uplink") == fr.CODEC_OPUS and bool(welcome.uplink_rate_hz)
        self._rate_hz = welcome.sample_rate_hz
        self._decoder: tuple[int, int, OpusDecoder] | None = None  # (epoch, uid, decoder)
        self._encoder = OpusEncoder(welcome.uplink_rate_hz) if self.opus_up else None
        self._up_samples = fr.frame_samples(welcome.uplink_rate_hz)

    def downlink(self, frame: fr.Audio) -> fr.Audio:
        """`frame` with PCM: an Opus packet decoded (a PCM frame as it is). Raises
        `ServerError` for a packet that does not decode (the server broke the protocol)."""
        if not self.opus_down:
            return frame
        current = self._decoder
        if current is None or current[:2] != (frame.epoch, frame.utterance_id):
            current = self._decoder = (frame.epoch, frame.utterance_id, OpusDecoder(self._rate_hz))
        try:
            pcm = current[2].decode(frame.pcm)
        except OpusPacketError as exc:
            raise ServerError(f"server broke the protocol: AUDIO: {exc}") from None
        return dataclasses.replace(frame, pcm=pcm.tobytes())

    def uplink(self, pcm: bytes) -> bytes:
        """The AudioUp body for one frame of PCM: itself, or its Opus packet (short PCM is
        padded with silence and long PCM cut, as the server does with PCM frames)."""
        if self._encoder is None:
            return pcm
        need = self._up_samples * fr.BYTES_PER_SAMPLE
        frame = pcm[:need] if len(pcm) >= need else pcm + bytes(need - len(pcm))
        return self._encoder.encode(frame)
