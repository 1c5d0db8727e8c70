"""The synthesis side of an utterance: text pieces -> engine -> s16 frames at the session's
rate -> ring.

`UtteranceProducer` runs in a worker thread (`trio.to_thread.run_sync`), one piece per call, and
is the ring's only producer while it runs. Frames are written as complete wire frames (audio
header + PCM) so the writer only pops and sends. A worker thread never waits for ring space:
what does not fit goes to `backlog`, which the session pushes from the trio thread as the
writer frees space (no thread sleeps, polls or competes for the GIL while audio plays out).

Cancellation crosses the thread boundary through `cancel` (a `threading.Event` set by the
session right before it cancels the utterance's scope): the producer stops before the next
piece and between the chunks of a streaming voice. An engine call already running finishes
first; frames it pushed after the cancel carry the old epoch and are dropped by the writer.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable, Generator, Iterator

import numpy as np

from ..engines.base import FloatAudio, StreamingVoice, Voice
from ..protocol.codec import pack_audio_header_into
from ..protocol.frames import AUDIO_HEADER_BYTES, BYTES_PER_SAMPLE
from .resample import FrameChunker, StreamResampler, float_to_s16le
from .ring import FrameRing
from .segment import Piece


class SynthesisCancelled(Exception):
    """The utterance was cancelled while its producer was working."""


class PieceMap:
    """Which characters of an utterance's text are covered by its first N output samples.

    Appended to by the producer thread, read by the writer on the trio thread. Appends of whole
    tuples to a list are atomic under the GIL; readers only see complete entries.
    """

    def __init__(self) -> None:
        self._ends: list[int] = []  # output sample where piece i ends (non-decreasing)
        self._chars: list[int] = []  # character where piece i ends
        self.total_chars = 0
        self.total_samples = 0  # real (unpadded) samples, known once the producer finished

    def add(self, end_sample: int, end_char: int) -> None:
        self._chars.append(end_char)
        self._ends.append(end_sample)

    def chars_spoken(self, samples_sent: int) -> int:
        """Characters whose audio lies entirely within the first `samples_sent` samples."""
        i = bisect.bisect_right(self._ends[: len(self._chars)], samples_sent)
        return self._chars[i - 1] if i else 0


class UtteranceProducer:
    """Produces one utterance's frames. Not thread-safe: one worker thread at a time."""

    def __init__(
        self,
        *,
        voice: Voice,
        ring: FrameRing,
        out_rate_hz: int,
        frame_samples: int,
        epoch: int,
        utterance_id: int,
        pieces: PieceMap,
        cancel: threading.Event,
        kick: Callable[[], None],
    ) -> None:
        self._voice = voice
        self._ring = ring
        self._out_rate = out_rate_hz
        self._in_rate = voice.sample_rate_hz
        self._resampler = StreamResampler(voice.sample_rate_hz, out_rate_hz)
        self._chunker = FrameChunker(frame_samples)
        self._frame_samples = frame_samples
        self._epoch = epoch
        self._uid = utterance_id
        self._cancel = cancel
        self._kick = kick
        self._seq = 0
        self._in_samples = 0
        self._slot = bytearray(AUDIO_HEADER_BYTES + frame_samples * BYTES_PER_SAMPLE)
        self.pieces = pieces
        # frames that did not fit in the ring (it holds `ring.capacity` frames, a long piece
        # may hold more): the trio side pushes them as the pacer drains the ring
        self.backlog: collections.deque[bytes] = collections.deque()
        self.engine_s = 0.0  # time spent in the engine, for RTF
        self.audio_s = 0.0

    def render(self, piece: Piece) -> None:
        """Synthesize one piece and push its whole frames. Blocking (worker thread).

        A `StreamingVoice`'s chunks are pushed as they come, with a cancel check between them.

        Raises `SynthesisCancelled` if the utterance was cancelled before or during the push.
        """
        self._check_cancel()
        voice = self._voice
        chunks: Iterator[FloatAudio]
        if isinstance(voice, StreamingVoice):  # push each chunk as it comes: earlier audio
            chunks = voice.synthesize_stream(piece.text)
        else:
            chunks = (voice.synthesize(text) for text in (piece.text,))
        try:
            while True:
                t0 = time.perf_counter()
                audio = next(chunks, None)
                self.engine_s += time.perf_counter() - t0
                if audio is None:
                    break
                self.audio_s += len(audio) / self._in_rate
                self._check_cancel()
                self._in_samples += len(audio)
                self._push_samples(self._resampler.process(audio))
        finally:
            if isinstance(chunks, Generator):  # a cancelled stream releases its engine state
                chunks.close()
        end_sample = self._in_samples * self._out_rate // self._in_rate
        self.pieces.add(end_sample, piece.end_char)

    def finish(self, total_chars: int) -> None:
        """Flush the resampler and push the last frame (zero-padded, flagged END)."""
        self._check_cancel()
        self.pieces.total_chars = total_chars
        self._push_samples(self._resampler.flush())
        pending = self._chunker.pending_samples
        pcm, _real = self._chunker.flush(pad=True)
        self.pieces.total_samples = self._seq * self._frame_samples + pending
        if not pcm:
            pcm = bytes(self._frame_samples * BYTES_PER_SAMPLE)
        self._push_frame(pcm, last=True)

    def _push_samples(self, samples: np.ndarray) -> None:
        if len(samples) == 0:
            return
        for pcm in self._chunker.push(np.frombuffer(float_to_s16le(samples), dtype="<i2")):
            self._push_frame(pcm, last=False)

    def _push_frame(self, pcm: bytes, *, last: bool) -> None:
        slot = self._slot
        pack_audio_header_into(slot, 0, self._epoch, self._uid, self._seq, len(pcm), last)
        slot[AUDIO_HEADER_BYTES:] = pcm
        ring = self._ring
        if self.backlog or not ring.push(slot):
            self.backlog.append(bytes(slot))  # never wait in the thread: the trio side pushes it
        elif self._seq == 0 or ring.count == 1:
            self._kick()
        self._seq += 1

    def push_backlog(self) -> int:
        """Push backlogged frames while they fit; returns how many are left.

        Call it on the trio thread, only while no worker thread is running this producer (the
        ring has a single producer at a time). Never blocks.
        """
        ring = self._ring
        backlog = self.backlog
        while backlog and ring.push(backlog[0]):
            backlog.popleft()
        return len(backlog)

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise SynthesisCancelled
