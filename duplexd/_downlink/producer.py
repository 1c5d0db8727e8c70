"""The synthesis side of an utterance: text pieces -> engine -> s16 frames at the session's
rate -> ring.

`UtteranceProducer` runs in a worker thread (`trio.to_thread.run_sync`), one piece per call, and
is the ring's only producer while it runs. Frames are written as complete wire frames (audio
header + PCM) so the writer only pops and sends. There is no Python per frame on this side:
an engine chunk becomes one block of whole frames (numpy), its headers one numpy array, and
both go into the ring in one C call (`FrameRing.push_many`, which releases the GIL while it
copies), so a burst of whole replies synthesized at once does not hold the pacer back. A
worker thread never waits for ring space: what does not fit stays in `backlog` as blocks,
which the session pushes from the trio thread (again one call per block) as the writer frees
space (no thread sleeps, polls or competes for the GIL while audio plays out).

With Opus downlink (Hello.options codec, SPEC §4.6.3) each whole frame is encoded here, in
the worker thread, into one packet as it is made (an `OpusEncoder` per utterance, made on the
utterance's first frame: its first packet starts from a clean encoder). Packets differ in
length, so they go into the ring one `FrameRing.push` each (the ring keeps each slot's
length): the Python per frame is ~1 µs next to the ~200 µs the encoder takes, so a C variant
of `push_many` taking per-frame lengths would save nothing measurable. What does not fit goes
to the backlog as a list of whole wire frames, pushed later in the same way.

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
import unicodedata
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Final, cast

import numpy as np

from .._opus import OpusEncoder
from ..engines.base import (
    FloatAudio,
    StreamingVoice,
    Voice,
    WordMark,
    WordTimedVoice,
    voice_kind,
)
from ..protocol.codec import AUDIO_HEADER
from ..protocol.frames import (
    AUDIO_HEADER_BYTES,
    BYTES_PER_SAMPLE,
    FLAG_BIT,
    LENGTH_PREFIX_BYTES,
    FrameType,
)
from .resample import FrameChunker, StreamResampler, fade_out, float_to_s16
from .ring import FrameRing
from .segment import Piece

# the Audio frame header (protocol/SPEC.md §5.2, codec.AUDIO_HEADER) as a numpy record
AUDIO_HEADER_DTYPE: Final = np.dtype(
    [
        ("length", "<u4"),
        ("type", "u1"),
        ("flags", "u1"),
        ("epoch", "<u2"),
        ("utterance_id", "<u4"),
        ("seq", "<u4"),
    ]
)
assert AUDIO_HEADER_DTYPE.itemsize == AUDIO_HEADER_BYTES


def audio_headers(
    first_seq: int, n: int, *, epoch: int, utterance_id: int, nbytes: int, last: bool
) -> np.ndarray:
    """The headers of `n` Audio frames of `nbytes` of PCM each, seqs from `first_seq`, the
    last flagged END if `last`: what `codec.pack_audio_header_into` writes, n at a time."""
    heads = np.empty(n, dtype=AUDIO_HEADER_DTYPE)
    heads["length"] = AUDIO_HEADER_BYTES - LENGTH_PREFIX_BYTES + nbytes
    heads["type"] = FrameType.AUDIO
    heads["flags"] = 0
    heads["epoch"] = epoch
    heads["utterance_id"] = utterance_id
    heads["seq"] = np.arange(first_seq, first_seq + n, dtype=np.uint32)
    if last and n:
        heads["flags"][-1] = FLAG_BIT
    return heads


# A piece that ends mid-sentence (the utterance runner cut it early, at a phrase boundary)
# would end with the silence a voice puts after a sentence: a pause where the listener hears
# none. Its audio ends this long after its last word instead (the voice's word marks say
# where), faded out over TRIM_FADE_MS.
OPEN_END_TAIL_MS: Final = 30
TRIM_FADE_MS: Final = 5.0


def _ends_open(text: str) -> bool:
    """Whether `text` ends mid-sentence: its last character a letter or a digit, no
    punctuation that earns a pause."""
    return bool(text) and unicodedata.category(text[-1])[0] in "LN"


class SynthesisCancelled(Exception):
    """The utterance was cancelled while its producer was working."""


class PieceMap:
    """What an utterance's first N output samples say, at the session's rate.

    Entries (end sample, end character) of every piece, and of every word when the voice
    times its words (`WordTimedVoice`), for `chars_spoken`; and the words' marks, for WORDS
    frames. Appended to by the producer thread, read on the trio thread: appends to a list
    are atomic under the GIL, and readers only look at complete entries.
    """

    def __init__(self) -> None:
        self._ends: list[int] = []  # output sample where entry i ends (non-decreasing)
        self._chars: list[int] = []  # character where entry i ends (non-decreasing)
        # (start_char, end_char, start_sample, end_sample) of each word, in order
        self.words: list[tuple[int, int, int, int]] = []
        self.total_chars = 0
        self.total_samples = 0  # real (unpadded) samples, known once the producer finished

    def add(self, end_sample: int, end_char: int) -> None:
        """A piece (or a word) whose audio ends at `end_sample` and text at `end_char`."""
        self._chars.append(end_char)
        self._ends.append(end_sample)

    def add_word(self, start_char: int, end_char: int, start_sample: int, end_sample: int) -> None:
        """A word's mark (characters of the utterance's text, samples of its audio)."""
        self.words.append((start_char, end_char, start_sample, end_sample))
        self.add(end_sample, end_char)

    def chars_spoken(self, samples: int) -> int:
        """Characters whose audio lies entirely within the first `samples` samples: up to
        the end of the last word (or piece) whose audio ends there or before."""
        # no copy: an entry's character is appended before its sample, so every end seen
        # has its character
        i = bisect.bisect_right(self._ends, samples)
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
        opus: Callable[[], OpusEncoder] | None = None,
    ) -> None:
        """`opus`: makes the utterance's Opus encoder (downlink Opus); None: frames are PCM.
        A voice that offers `for_utterance()` (a model process's) speaks the utterance through
        what that gives, released by `end`."""
        for_utterance = getattr(voice, "for_utterance", None)
        self._voice = for_utterance() if for_utterance is not None else voice
        self._release: Callable[[], None] | None = (  # (only a voice handed for the utterance)
            getattr(self._voice, "release", None) if for_utterance is not None else None
        )
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
        self.pieces = pieces
        # blocks of frames (headers, PCM) that did not fit in the ring (it holds
        # `ring.capacity` frames, a long piece may hold more): the trio side pushes them as
        # the pacer drains the ring
        # (PCM: blocks of headers and PCM; Opus: lists of whole frames)
        self.backlog: collections.deque[tuple[np.ndarray, np.ndarray] | list[bytes]] = (
            collections.deque()
        )
        self._new_encoder = opus
        self._encoder: OpusEncoder | None = None  # made on the first frame, in the worker
        self.backlog_frames = 0
        self._chunks: Iterator[tuple[FloatAudio, Sequence[WordMark]]] | None = None
        self._piece_in_start = 0  # input samples before the piece in progress
        self._kind = voice_kind(voice)  # (streaming, word-timed)
        # a piece cut mid-sentence: its audio ends this many input samples into the piece
        # (`OPEN_END_TAIL_MS` after its last word), once that word's mark is known
        self._open_end = False  # the piece in progress is such a piece
        self._cut_at: int | None = None
        self.engine_s = 0.0  # time spent in the engine, for RTF
        self.audio_s = 0.0

    def render(self, piece: Piece) -> None:
        """Synthesize one piece and push its whole frames. Blocking (worker thread).

        Raises `SynthesisCancelled` if the utterance was cancelled before or during the push.
        """
        while not self.render_step(piece):
            pass

    def render_step(self, piece: Piece) -> bool:
        """Synthesize the next chunk of `piece` (a `StreamingVoice`'s next chunk; a plain
        voice's whole piece) and push its whole frames; True once the piece is done. Blocking
        (worker thread). Call it again with the same piece until it returns True: between the
        calls the worker thread is free for other sessions' chunks.

        Raises `SynthesisCancelled` if the utterance was cancelled before or during the push
        (the engine's stream is then closed).
        """
        chunks = self._chunks
        if chunks is None:
            self._check_cancel()
            chunks = self._chunks = self._open(piece.text)
            self._piece_in_start = self._in_samples
            self._open_end = self._kind.timed and _ends_open(piece.text)
            self._cut_at = None
        try:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            self.engine_s += time.perf_counter() - t0
            if chunk is not None:
                audio, marks = chunk
                self.audio_s += len(audio) / self._in_rate
                self._check_cancel()
                if marks:
                    self._add_words(piece, marks)
                if self._cut_at is not None:
                    audio = self._trim(audio)
                self._in_samples += len(audio)
                self._push_samples(self._resampler.process(audio))
                return False
        except BaseException:
            self.close()
            raise
        self.close()
        end_sample = self._in_samples * self._out_rate // self._in_rate
        self.pieces.add(end_sample, piece.end_char)
        return True

    def _open(self, text: str) -> Iterator[tuple[FloatAudio, Sequence[WordMark]]]:
        """The piece's chunks and word marks (none from a voice that does not time words)."""
        voice = self._voice
        if self._kind.timed:
            return cast(WordTimedVoice, voice).synthesize_words(text)
        if self._kind.streaming:  # push each chunk as it comes: earlier audio
            stream = cast(StreamingVoice, voice).synthesize_stream(text)
            return ((audio, ()) for audio in stream)
        return ((voice.synthesize(t), ()) for t in (text,))

    def _trim(self, audio: FloatAudio) -> FloatAudio:
        """`audio` (the piece's next chunk) without what lies past `_cut_at`, faded out."""
        assert self._cut_at is not None
        keep = self._cut_at - (self._in_samples - self._piece_in_start)
        if keep >= len(audio):
            return audio
        if keep <= 0:
            return audio[:0]
        return fade_out(audio[:keep], self._in_rate, TRIM_FADE_MS)

    def _add_words(self, piece: Piece, marks: Sequence[WordMark]) -> None:
        """Record the marks, moved into the utterance's text and audio at the session's rate;
        the last word of a piece cut mid-sentence sets where its audio ends."""
        base_char = piece.start_char + piece.lead
        base, out_rate, in_rate = self._piece_in_start, self._out_rate, self._in_rate
        last = marks[-1]
        if self._open_end and last.end_char >= len(piece.text):
            self._cut_at = last.end_sample + in_rate * OPEN_END_TAIL_MS // 1000
        for m in marks:
            self.pieces.add_word(
                base_char + m.start_char,
                base_char + m.end_char,
                (base + m.start_sample) * out_rate // in_rate,
                (base + m.end_sample) * out_rate // in_rate,
            )

    def close(self) -> None:
        """Close the engine's stream of the piece in progress, if any (a stream stopped early
        releases its engine state). Idempotent; any thread, but not during `render_step`."""
        chunks, self._chunks = self._chunks, None
        if isinstance(chunks, Generator):
            chunks.close()

    def end(self) -> None:
        """The utterance is over (done or cancelled): `close`, and let its voice go (the
        `for_utterance` one's `release`, called once, even if closing the stream raised).
        Idempotent; not during `render_step`."""
        try:
            self.close()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()

    def finish(self, total_chars: int) -> None:
        """Flush the resampler and push the last frame (zero-padded, flagged END); `end`."""
        self._check_cancel()
        self.pieces.total_chars = total_chars
        self._push_samples(self._resampler.flush())
        pending = self._chunker.pending_samples
        pcm, _real = self._chunker.flush(pad=True)
        self.pieces.total_samples = self._seq * self._frame_samples + pending
        tail = np.frombuffer(pcm, dtype="<i2") if pcm else np.zeros(self._frame_samples, "<i2")
        self._push_block(tail.reshape(1, -1), last=True)
        self.end()  # (no engine call after this one: its voice may go now)

    def _push_samples(self, samples: np.ndarray) -> None:
        if len(samples) == 0:
            return
        block = self._chunker.push_block(float_to_s16(samples))
        if len(block):
            self._push_block(block, last=False)

    def _push_block(self, pcm: np.ndarray, *, last: bool) -> None:
        """Push a (frames, frame_samples) block with its headers in one call; what does not
        fit goes to the backlog (never wait in the thread: the trio side pushes it)."""
        if self._new_encoder is not None:
            self._push_packets(pcm, last=last)
            return
        n = len(pcm)
        heads = audio_headers(
            self._seq,
            n,
            epoch=self._epoch,
            utterance_id=self._uid,
            nbytes=self._frame_samples * BYTES_PER_SAMPLE,
            last=last,
        )
        self._seq += n
        pushed = 0 if self.backlog else self._ring.push_many(heads, pcm, n)
        if pushed < n:
            self.backlog.append((heads[pushed:], pcm[pushed:]))
            self.backlog_frames += n - pushed
        if pushed:
            self._kick()  # once per block: the writer may be idle, waiting for audio

    def _push_packets(self, pcm: np.ndarray, *, last: bool) -> None:
        """Opus: encode each frame of the block into its packet and push the frames one by
        one; from the first that does not fit on, they go to the backlog."""
        encoder = self._encoder
        if encoder is None:
            assert self._new_encoder is not None
            encoder = self._encoder = self._new_encoder()
        n = len(pcm)
        frames: list[bytes] = []
        for i in range(n):
            if i:
                # a burst of encoding (a whole reply of a fast engine) lets the event loop's
                # thread have the GIL between frames (what it costs: bench/results/README.md)
                time.sleep(0)
            packet = encoder.encode(pcm[i])
            flags = FLAG_BIT if last and i == n - 1 else 0
            size = AUDIO_HEADER_BYTES - LENGTH_PREFIX_BYTES + len(packet)
            header = AUDIO_HEADER.pack(
                size, FrameType.AUDIO, flags, self._epoch, self._uid, self._seq + i
            )
            frames.append(header + packet)
        self._seq += n
        ring = self._ring
        pushed = 0
        if not self.backlog:
            while pushed < n and ring.push(frames[pushed]):
                pushed += 1
        if pushed < n:
            self.backlog.append(frames[pushed:])
            self.backlog_frames += n - pushed
        if pushed:
            self._kick()

    def push_backlog(self) -> int:
        """Push backlogged frames while they fit (one call per block); returns how many are
        left.

        Call it on the trio thread, only while no worker thread is running this producer (the
        ring has a single producer at a time). Never blocks.
        """
        ring = self._ring
        backlog = self.backlog
        while backlog:
            block = backlog[0]
            if isinstance(block, list):  # Opus: whole frames, one push each
                done = 0
                while done < len(block) and ring.push(block[done]):
                    done += 1
                self.backlog_frames -= done
                if done < len(block):
                    backlog[0] = block[done:]
                    break
                backlog.popleft()
                continue
            heads, pcm = block
            pushed = ring.push_many(heads, pcm, len(pcm))
            self.backlog_frames -= pushed
            if pushed < len(pcm):
                backlog[0] = (heads[pushed:], pcm[pushed:])
                break
            backlog.popleft()
        return self.backlog_frames

    def _check_cancel(self) -> None:
        if self._cancel.is_set():
            raise SynthesisCancelled
