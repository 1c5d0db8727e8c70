"""Opus glue over PyAV's libopus: one 20 ms packet per frame, both ways (protocol/SPEC.md §4.6.3).

A leaf: it imports nothing of duplexd, so the server (producer, uplink) and the client SDK use
the same code. Everything here is synchronous and blocking (libopus through PyAV); callers
run it where heavy work belongs: the daemon in its worker threads, never on the event loop.

- `OpusEncoder(rate_hz, ...)`: s16 frames of exactly 20 ms in, one raw Opus packet out each
  (no Ogg; libopus answers every frame at once). Its state is one stream: the daemon makes one
  per utterance, so an utterance's first packet starts from a clean encoder.
- `OpusDecoder(rate_hz)`: one packet in, exactly 20 ms at `rate_hz` out (s16, or float for
  the daemon's uplink, which works in float and skips the round trip). FFmpeg's
  libopus decodes at 48 kHz only; at 24 or 16 kHz a fixed windowed-sinc decimator (numpy,
  `DECIMATOR_DELAY_MS`) brings it down, so every packet still gives exactly `frame_samples`.
  A packet libopus refuses, or one that is not 20 ms, raises `OpusPacketError`.

Delay. Opus looks ahead `OPUS_DELAY_MS` (6.5 ms: 312 samples at 48 kHz): the decoded stream
is the encoded one delayed by that much (plus the decimator's `DECIMATOR_DELAY_MS` below
48 kHz). Nothing is dropped to hide it (no pre-skip: every packet decodes to a whole frame),
so sample counts stay exact: frame `seq` still covers samples `seq x frame_samples` onwards
of the utterance, heard `OPUS_DELAY_MS` later. The price is at the very end: the last
`OPUS_DELAY_MS` of an END frame do not come out of its packet, which is why the END frame's
zero padding matters (an utterance's audio that fills its last frame to within 6.5 ms of the
end loses that much of its trailing silence).
"""

from __future__ import annotations

from typing import Final

import av
import av.error
import numpy as np
import numpy.typing as npt

__all__ = [
    "DECIMATOR_DELAY_MS",
    "MAX_PACKET_BYTES",
    "OPUS_DELAY_MS",
    "OPUS_RATES_HZ",
    "OpusDecoder",
    "OpusEncoder",
    "OpusPacketError",
]

OPUS_RATES_HZ: Final = (8_000, 12_000, 16_000, 24_000, 48_000)
OPUS_DELAY_MS: Final = 6.5  # libopus' lookahead: 2.5 ms + 4 ms delay compensation
MAX_PACKET_BYTES: Final = 1275  # RFC 6716 §3.4 (R2): the largest one-frame packet
FRAME_MS: Final = 20
DECODE_RATE_HZ: Final = 48_000  # what FFmpeg's libopus decodes to, whatever was encoded
_DECIMATOR_HALF_TAPS: Final = 8  # per output sample period, on each side of the centre
DECIMATOR_DELAY_MS: Final = 1000 * _DECIMATOR_HALF_TAPS / 16_000  # worst case (/3): 0.5 ms

Int16Array = npt.NDArray[np.int16]


class OpusPacketError(ValueError):
    """A packet that does not decode to one 20 ms Opus frame."""


def _check_rate(rate_hz: int) -> None:
    if rate_hz not in OPUS_RATES_HZ:
        rates = ", ".join(str(r) for r in OPUS_RATES_HZ)
        raise ValueError(f"Opus codes {rates} Hz, not {rate_hz} Hz")


class OpusEncoder:
    """Encodes one stream of 20 ms s16 frames at `rate_hz` into raw Opus packets.

    `bitrate_kbps` (6..510) is the VBR target, `complexity` (0..10) libopus' CPU/quality
    trade (10 costs ~2x 5 per frame: bench/results/README.md). Not thread-safe: one thread at
    a time. ValueError for a rate Opus lacks or a parameter out of range."""

    def __init__(self, rate_hz: int, *, bitrate_kbps: float = 32.0, complexity: int = 5) -> None:
        _check_rate(rate_hz)
        if not 6 <= bitrate_kbps <= 510:
            raise ValueError(f"Opus bitrate must be 6..510 kbit/s, not {bitrate_kbps}")
        if not 0 <= complexity <= 10:
            raise ValueError(f"Opus complexity must be 0..10, not {complexity}")
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = rate_hz
        ctx.format = "s16"
        ctx.layout = "mono"
        ctx.bit_rate = round(bitrate_kbps * 1000)
        ctx.options = {"application": "voip", "compression_level": str(int(complexity))}
        ctx.open()
        self._ctx = ctx
        self.rate_hz: Final = rate_hz
        self.frame_samples: Final = rate_hz * FRAME_MS // 1000
        self._pts = 0

    def encode(self, pcm: Int16Array | bytes) -> bytes:
        """One frame of exactly `frame_samples` s16 samples -> its Opus packet. Blocking."""
        samples = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes) else pcm
        if samples.shape != (self.frame_samples,):
            raise ValueError(f"an Opus frame is {self.frame_samples} samples, not {samples.shape}")
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.rate_hz
        frame.pts = self._pts
        self._pts += self.frame_samples
        packets = self._ctx.encode(frame)
        if len(packets) != 1:  # libopus answers every whole frame at once
            raise RuntimeError(f"libopus gave {len(packets)} packets for one frame")
        return bytes(packets[0])


class _Decimator:
    """48 kHz -> 48 kHz / `factor` (2 or 3) for a stream, block by block, exactly
    len(block) / factor samples out per block: a windowed-sinc low-pass (cut-off at 90 % of
    the new Nyquist), keeping the history its taps need between blocks. Only the samples kept
    are computed (a gather and one matrix-vector product: ~20 us a 20 ms block)."""

    def __init__(self, factor: int) -> None:
        half = _DECIMATOR_HALF_TAPS * factor
        t = np.arange(-half, half + 1, dtype=np.float64)
        cutoff = 0.9 / factor  # of the input's Nyquist
        taps = cutoff * np.sinc(cutoff * t) * np.kaiser(len(t), 8.0)
        self._taps = (taps / taps.sum()).astype(np.float32)  # (symmetric)
        self._factor = factor
        self._history = np.zeros(len(t) - 1, dtype=np.float32)
        self._gather: tuple[int, npt.NDArray[np.intp]] | None = None  # (block length, indices)

    def process(self, block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        x = np.concatenate((self._history, block))
        self._history = x[len(x) - len(self._history) :]
        n = len(block)
        if self._gather is None or self._gather[0] != n:
            # output m is the filter centred on input factor*m + factor-1 (of the block)
            starts = np.arange(self._factor - 1, n, self._factor)
            self._gather = (n, starts[:, None] + np.arange(len(self._taps))[None, :])
        out: npt.NDArray[np.float32] = x[self._gather[1]] @ self._taps
        return out


class OpusDecoder:
    """Decodes one stream of raw 20 ms Opus packets into frames at `rate_hz`: s16
    (`decode`) or float in -1..1 (`decode_float`, what the daemon's uplink works on).

    Not thread-safe: one thread at a time. ValueError for a rate Opus lacks."""

    def __init__(self, rate_hz: int) -> None:
        _check_rate(rate_hz)
        ctx = av.CodecContext.create("libopus", "r")
        ctx.sample_rate = DECODE_RATE_HZ
        ctx.layout = "mono"
        # libopus' own float output: `decode` rounds it to s16 as libopus' s16 output does
        ctx.options = {"request_sample_fmt": "flt"}
        ctx.open()
        self._ctx = ctx
        self.rate_hz: Final = rate_hz
        self.frame_samples: Final = rate_hz * FRAME_MS // 1000
        factor = DECODE_RATE_HZ // rate_hz
        if factor * rate_hz != DECODE_RATE_HZ or factor not in (1, 2, 3):
            raise ValueError(f"decoding Opus at {rate_hz} Hz is not supported here")
        self._decimator = _Decimator(factor) if factor > 1 else None

    def decode_float(self, packet: bytes) -> npt.NDArray[np.float32]:
        """One packet -> exactly `frame_samples` float32 samples (full scale 1.0, not
        clipped). Blocking. Raises `OpusPacketError` for an empty packet, one libopus
        refuses, or one not of 20 ms."""
        if not packet:
            raise OpusPacketError("an empty Opus packet (one 20 ms packet per frame)")
        if len(packet) > MAX_PACKET_BYTES:
            raise OpusPacketError(f"an Opus packet of {len(packet)} bytes > {MAX_PACKET_BYTES}")
        try:
            frames = self._ctx.decode(av.Packet(packet))
        except (av.error.FFmpegError, ValueError) as exc:
            raise OpusPacketError(f"not an Opus packet: {exc}") from None
        out = [f.to_ndarray().reshape(-1) for f in frames]
        pcm = np.concatenate(out) if len(out) != 1 else out[0]
        if len(pcm) != DECODE_RATE_HZ * FRAME_MS // 1000:
            ms = 1000 * len(pcm) / DECODE_RATE_HZ
            raise OpusPacketError(f"an Opus packet of {ms:g} ms: each must hold 20 ms")
        y: npt.NDArray[np.float32] = pcm.astype(np.float32, copy=False)  # (no copy: float)
        if pcm.dtype == np.int16:  # (a build that ignored the request gives s16)
            y *= np.float32(1 / 32768)
        return y if self._decimator is None else self._decimator.process(y)

    def decode(self, packet: bytes) -> Int16Array:
        """One packet -> exactly `frame_samples` s16 samples (rounded and saturated, as
        libopus' `opus_decode` does). Blocking. Raises `OpusPacketError` as `decode_float`."""
        y = self.decode_float(packet) * np.float32(32768.0)
        out: Int16Array = np.clip(np.rint(y), -32768, 32767).astype("<i2")
        return out
