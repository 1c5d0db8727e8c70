"""The synthesis side of an utterance (`duplexd._downlink.producer`): an engine chunk becomes
one block of whole wire frames pushed in one call, what does not fit waits in the backlog as
blocks, and the frames that come out are exactly what the codec would have built one by one."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexd._downlink.producer import PieceMap, UtteranceProducer, audio_headers
from duplexd._downlink.ring import FrameRing
from duplexd._downlink.segment import Piece
from duplexd.engines.base import Voice, VoiceKind, WordMark, voice_kind
from duplexd.engines.tone import ToneEngine
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder, pack_audio_header_into

pytestmark = pytest.mark.unit
RATE_HZ = 24_000
FRAME_SAMPLES = fr.frame_samples(RATE_HZ)
FRAME_BYTES = fr.AUDIO_HEADER_BYTES + FRAME_SAMPLES * fr.BYTES_PER_SAMPLE


@given(
    first_seq=st.integers(0, 2**32 - 50),
    n=st.integers(0, 40),
    epoch=st.integers(0, 0xFFFF),
    uid=st.integers(0, 2**32 - 1),
    samples=st.integers(0, 2000),
    last=st.booleans(),
)
def test_headers_are_the_codecs_n_at_a_time(
    first_seq: int, n: int, epoch: int, uid: int, samples: int, last: bool
) -> None:
    nbytes = 2 * samples
    got = audio_headers(first_seq, n, epoch=epoch, utterance_id=uid, nbytes=nbytes, last=last)
    want = bytearray(fr.AUDIO_HEADER_BYTES * n)
    for i in range(n):
        end = last and i == n - 1
        pack_audio_header_into(
            want, i * fr.AUDIO_HEADER_BYTES, epoch, uid, first_seq + i, nbytes, end
        )
    assert got.tobytes() == bytes(want)


def _producer(ring: FrameRing, kicks: list[int], voice: Voice | None = None) -> UtteranceProducer:
    return UtteranceProducer(
        voice=voice or ToneEngine().open_voice("sine"),
        ring=ring,
        out_rate_hz=RATE_HZ,
        frame_samples=FRAME_SAMPLES,
        epoch=3,
        utterance_id=7,
        pieces=PieceMap(),
        cancel=threading.Event(),
        kick=lambda: kicks.append(1),
    )


def test_a_piece_longer_than_the_ring_waits_in_the_backlog_as_blocks() -> None:
    ring = FrameRing(16, FRAME_BYTES)
    kicks: list[int] = []
    producer = _producer(ring, kicks)
    text = "a sentence long enough to outlast a ring of sixteen frames by far"
    producer.render(Piece(text, 0, len(text)))
    producer.finish(len(text))
    assert ring.count == 16 and producer.backlog_frames > 0
    # blocks wait, not frames: one per engine chunk (4, 8, 16, 32 and 6 characters), the
    # resampler's tail, the END frame; and one kick per block that went in, not per frame
    assert len(producer.backlog) <= 7 < producer.backlog_frames
    assert 1 <= len(kicks) <= 5
    decoder = Decoder(peer="server")
    frames: list[fr.Audio] = []
    while True:
        while (raw := ring.pop()) is not None:
            decoder.receive_data(raw)
            (frame,) = decoder.frames()
            assert isinstance(frame, fr.Audio)
            frames.append(frame)
        if not producer.push_backlog() and not ring.count:
            break
    assert producer.backlog_frames == 0 and not producer.backlog
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert [f.last for f in frames] == [False] * (len(frames) - 1) + [True]
    assert {(f.epoch, f.utterance_id, len(f.pcm)) for f in frames} == {
        (3, 7, FRAME_SAMPLES * fr.BYTES_PER_SAMPLE)
    }
    real = producer.pieces.total_samples
    # (audio that ends on a frame boundary gets a silent END frame of its own)
    assert (len(frames) - 1) * FRAME_SAMPLES <= real <= len(frames) * FRAME_SAMPLES


def test_frames_go_straight_into_a_ring_with_room() -> None:
    ring = FrameRing(1024, FRAME_BYTES)
    producer = _producer(ring, [])
    producer.render(Piece("hello there", 0, 11))
    producer.finish(11)
    assert producer.backlog_frames == 0 and not producer.backlog
    assert ring.count == producer.pieces.total_samples // FRAME_SAMPLES + 1


class _PlainVoice:
    """A voice with `synthesize` only (a plugin's simplest)."""

    name = "plain"
    sample_rate_hz = RATE_HZ  # (no resampling: the frames are exactly its samples)

    def synthesize(self, text: str) -> np.ndarray:
        return np.zeros(FRAME_SAMPLES // 2 * len(text), dtype=np.float32)


class _StreamingVoice(_PlainVoice):
    def synthesize_stream(self, text: str) -> Iterator[np.ndarray]:
        yield self.synthesize(text)


def test_what_a_voice_can_do_is_looked_up_once_per_class() -> None:
    tone = ToneEngine().open_voice("sine")
    assert voice_kind(tone) == VoiceKind(streaming=True, timed=True)
    assert voice_kind(_PlainVoice()) == VoiceKind(streaming=False, timed=False)
    assert voice_kind(_StreamingVoice()) == VoiceKind(streaming=True, timed=False)
    assert voice_kind(_StreamingVoice()) is voice_kind(_StreamingVoice())  # (the class's)


@pytest.mark.parametrize("voice", [_PlainVoice(), _StreamingVoice()], ids=["plain", "streaming"])
def test_a_voice_without_word_timing_is_rendered_whole(voice: _PlainVoice) -> None:
    ring = FrameRing(64, FRAME_BYTES)
    producer = _producer(ring, [], voice)
    producer.render(Piece("Hi there.", 0, 9))
    assert ring.count == 9 // 2  # whole frames of its audio (4.5 frames); the rest waits for more


class _ScopedVoice(_PlainVoice):
    """A voice that hands each utterance a voice of its own (as a model process's does), and
    notes what each one spoke and when it was released (test double)."""

    def __init__(self) -> None:
        self.handed: list[_ScopedVoice] = []
        self.texts: list[str] = []
        self.released = 0

    def for_utterance(self) -> _ScopedVoice:
        handle = _ScopedVoice()
        self.handed.append(handle)
        return handle

    def synthesize(self, text: str) -> np.ndarray:
        self.texts.append(text)
        return super().synthesize(text)

    def release(self) -> None:
        self.released += 1


class _FailingClose(_ScopedVoice):
    """A handed voice whose stream raises as it is closed early (test double)."""

    def for_utterance(self) -> _ScopedVoice:
        handle = _FailingClose()
        self.handed.append(handle)
        return handle

    def synthesize_words(self, text: str) -> Iterator[tuple[np.ndarray, tuple[WordMark, ...]]]:
        try:
            yield self.synthesize(text), ()
            yield self.synthesize(text), ()
        finally:
            raise RuntimeError("the engine failed as its stream closed")


def test_a_handed_voice_is_released_even_if_closing_its_stream_raises() -> None:
    voice = _FailingClose()
    producer = _producer(FrameRing(64, FRAME_BYTES), [], voice)
    assert not producer.render_step(Piece("one two", 0, 7))  # a chunk made, the next not yet
    (handle,) = voice.handed
    with pytest.raises(RuntimeError, match="failed as its stream closed"):
        producer.end()  # (a barge-in: the stream is closed early)
    assert handle.released == 1
    producer.end()
    assert handle.released == 1


@pytest.mark.parametrize("finished", [True, False])
def test_an_utterance_speaks_through_the_voice_it_was_handed_and_lets_it_go(
    finished: bool,
) -> None:
    voice = _ScopedVoice()
    producer = _producer(FrameRing(64, FRAME_BYTES), [], voice)
    producer.render(Piece("one", 0, 3))
    producer.render(Piece("two", 3, 6))
    (handle,) = voice.handed
    assert handle.texts == ["one", "two"] and not voice.texts and handle.released == 0
    if finished:
        producer.finish(6)  # its last engine call is over: the voice goes at once
        assert handle.released == 1
    producer.end()  # (the session's, done or cancelled): once, whatever came first
    assert handle.released == 1 and voice.released == 0
