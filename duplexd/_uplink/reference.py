"""The echo reference's timing: the server time each sample of the sent audio was sent at.

The echo canceller wants what the session sent at 16 kHz, each sample where it was sent. The
downlink is resampled on the way (48 kHz by default), by a streaming resampler (soxr), and soxr
answers in blocks: fed one 20 ms frame at a time at 48 kHz it gives 0, 490, 0, 489, 489, 0, ...
samples, holding 6-37 ms back (measured), and the first answer after a pause holds the end of
the utterance before. Placed at the send time of the frame whose feeding brought it out, each
utterance's reference was 6-37 ms late, by another amount each time: the echo path AEC3 had
learned jumped, and the first syllables' echo leaked through to barge in (the agent
interrupting itself, live).

soxr keeps the signal's timing (only its answers come late): output sample j is input sample
j x in/out. So `SentAudio.add` cuts what comes out at the input frames' boundaries and dates
each piece by the frame its input came in: the frame's send time, plus where in it the piece
starts. The utterance's end that comes out after a pause is dated where it was sent, before it.

Dated right, soxr's answers still came late: the reference of a sample sent at T was there only
6-37 ms after T, and an echo back sooner than that met zeros where its reference should have
been (a 48 kHz session's echo 0-62 ms after sending: 3-14 dB taken out where 16 kHz sessions
had 21, `bench.uplink_cpu.scenario`). At a whole ratio (48 kHz, the default; 32 kHz) the
downlink goes through the uplink's `Decimator` instead, which holds back only its filter's
delay (10 samples at 16 kHz, dropped from the stream's start so that output j is still input
j x in/out); soxr stays for the other rates (24 kHz, and those under 16 kHz).

One instance per session (it holds the resampler's state); not thread-safe (the session's
uplink worker calls it). `Reference` is the uplink's glue: the session's AUDIO frames (PCM, or
its own Opus packets) to the echo canceller, dated, and the client's PLAYED reports as the
frame and the sample they name.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from .._downlink.resample import Decimator, StreamResampler
from .._opus import OpusDecoder
from ..protocol import frames as fr
from ..protocol.codec import AUDIO_HEADER, iter_frames
from .vad import VAD_RATE_HZ

if TYPE_CHECKING:
    from .echo import EchoCanceller

FloatArray = npt.NDArray[np.float32]
Frame = tuple[int, int]  # (utterance id, seq)
Piece = tuple[float, FloatArray, Frame | None]  # (sent at, samples, frame it starts)

_MAX_FRAMES: Final = 64  # frames remembered for samples still in the resampler (it holds ~2)
S16_SCALE: Final = 1.0 / 32768.0  # an s16 sample to a float in -1..1 (the uplink's too)


class SentAudio:
    """The downlink at `rate_hz` in, dated pieces at `out_rate_hz` out (`add`)."""

    def __init__(self, rate_hz: int, out_rate_hz: int) -> None:
        self.rate_hz = rate_hz
        self.out_rate_hz = out_rate_hz
        self._resampler: StreamResampler | Decimator | None = None
        self._skip = 0  # (the decimator's delay, dropped from the stream's start)
        if rate_hz % out_rate_hz == 0 and rate_hz != out_rate_hz:
            self._resampler = Decimator(rate_hz // out_rate_hz)
            self._skip = self._resampler.delay
        elif rate_hz != out_rate_hz:
            self._resampler = StreamResampler(rate_hz, out_rate_hz)
        self._fed = 0  # input samples fed
        self._made = 0  # output samples made
        # input frames whose output is not all out yet: (first input sample, end, sent at, id)
        self._frames: collections.deque[tuple[int, int, float, Frame]] = collections.deque()

    def _out_index(self, position: int) -> int:
        """The first output sample at or after input sample `position`."""
        return -(-position * self.out_rate_hz // self.rate_hz)

    def add(self, now: float, pcm: FloatArray, frame: Frame) -> list[Piece]:
        """Frame `frame` (its samples at `rate_hz`, float) was sent at server time `now`: the
        resampled audio that is ready, as pieces (sent at, samples, the frame whose first
        sample starts the piece or None), in order; they may belong to earlier frames."""
        start = self._fed
        self._fed += len(pcm)
        frames = self._frames
        frames.append((start, self._fed, now, frame))
        if len(frames) > _MAX_FRAMES:  # (never: the resampler holds a frame or two)
            frames.popleft()
        out = pcm if self._resampler is None else self._resampler.process(pcm)
        if self._skip:
            k = min(self._skip, len(out))
            out, self._skip = out[k:], self._skip - k
        first = self._made
        self._made += len(out)
        pieces: list[Piece] = []
        k = 0
        while k < len(out) and frames:
            begin, end, sent, fid = frames[0]
            stop = self._out_index(end) - first  # the output of this frame ends here
            if stop <= k:
                frames.popleft()
                continue
            j = first + k  # the output sample the piece starts with ...
            at = sent + (j * self.rate_hz / self.out_rate_hz - begin) / self.rate_hz
            starts = fid if j == self._out_index(begin) else None  # (... its frame's first?)
            pieces.append((at, out[k : min(stop, len(out))], starts))
            k = min(stop, len(out))
        return pieces


class Reference:
    """The session's sent audio, as its echo canceller's reference (in the uplink worker)."""

    def __init__(self, downlink_rate_hz: int, *, opus: bool) -> None:
        self._opus = opus
        # (Opus) the utterance being decoded and its decoder: a fresh one per utterance, as
        # the server encodes and its clients decode (the SDK's `SessionAudio`, opus.js), so
        # that each utterance's first milliseconds are what a client played of them
        self._decoding: tuple[tuple[int, int], OpusDecoder] | None = None
        self._sent = SentAudio(downlink_rate_hz, VAD_RATE_HZ)
        self._frame_samples = fr.frame_samples(downlink_rate_hz)
        self._rate_hz = downlink_rate_hz

    def add(self, echo: EchoCanceller, now: float, message: bytes) -> None:
        """A message the session sent at `now`: its AUDIO frames, each sample where it was
        sent, to `echo`."""
        for raw in iter_frames(message):  # the session's own frames: whole and well formed
            if raw.type == fr.FrameType.AUDIO:
                _, _, _, epoch, uid, seq = AUDIO_HEADER.unpack_from(raw.data)
                body = raw.audio_pcm
                if not self._opus:
                    pcm = np.frombuffer(body, "<i2").astype(np.float32) * S16_SCALE
                else:  # our own Opus packets: always whole
                    if self._decoding is None or self._decoding[0] != (epoch, uid):
                        self._decoding = ((epoch, uid), OpusDecoder(self._rate_hz))
                    pcm = self._decoding[1].decode_float(bytes(body))
                for at, piece, frame in self._sent.add(now, pcm, (uid, seq)):
                    echo.add_reference(at, piece, frame)

    def played(
        self, echo: EchoCanceller, now: float, uid: int, samples: int, clock_us: int, final: bool
    ) -> None:
        """A PLAYED report that came at `now`: `samples` of utterance `uid` played by the
        client's clock `clock_us`, to `echo` as the frame and the offset of its last sample."""
        if samples <= 0:
            return
        n = self._frame_samples
        seq = (samples - 1) // n  # the frame of the last sample played ...
        offset = (samples - seq * n) * VAD_RATE_HZ // self._rate_hz  # ... and its end
        echo.note_played(now, (uid, seq), offset, clock_us, final=final)
