"""The echo reference's timing (`duplexd._uplink.reference.SentAudio`): every resampled sample
is dated when its input sample was sent, whatever blocks the streaming resampler answers in,
across a pause between utterances, and at every session rate."""

from __future__ import annotations

import numpy as np
import pytest

from duplexd._uplink.reference import SentAudio

pytestmark = pytest.mark.unit

FRAME_S = 0.020


def feed(
    sent: SentAudio, times: list[float], uid: int = 1
) -> list[tuple[float, np.ndarray, object]]:
    """Frames of a ramp (input sample i holds i) sent at `times`; every piece that came out."""
    n = round(sent.rate_hz * FRAME_S)
    pieces = []
    for seq, t in enumerate(times):
        base = sent._fed  # (the ramp goes on where the last frame ended)
        pcm = (base + np.arange(n)).astype(np.float32) / 1e6
        pieces += sent.add(t, pcm, (uid, seq))
    return pieces


@pytest.mark.parametrize("rate_hz", [16_000, 24_000, 48_000])
def test_each_piece_is_dated_when_its_first_sample_was_sent(rate_hz: int) -> None:
    """Frames sent back to back from t = 5 s: the piece starting at output sample j is dated
    5 s + j / 16 kHz, to the nanosecond, in whatever blocks the resampler answers (soxr at 24
    kHz gives nothing for one frame and one and a half for the next; at 48 kHz the decimator
    answers each frame at once)."""
    sent = SentAudio(rate_hz, 16_000)
    pieces = feed(sent, [5.0 + i * FRAME_S for i in range(50)])
    j = 0
    ratio = rate_hz / 16_000
    for at, samples, _ in pieces:
        assert at == pytest.approx(5.0 + j / 16_000, abs=1e-9)
        # ... and holds what was sent then: output sample j is input sample j x ratio (the
        # ramp's value; the resampler's first ~10 ms are its filter filling up)
        k = np.arange(j, j + len(samples))
        keep = k >= 160
        assert np.allclose(samples[keep], k[keep] * ratio / 1e6, atol=2e-7)
        j += len(samples)
    sizes = [len(s) for _, s, _ in pieces]
    if rate_hz == 24_000:  # soxr: uneven blocks, 7-37 ms held back
        assert 50 * 320 - 600 <= j < 50 * 320 and len(set(sizes)) > 1
    elif rate_hz == 48_000:  # the decimator: 320 samples a frame, each the last one's 10
        assert j == 50 * 320 - 10 and sizes == [310] + [10, 310] * 49  # held back and its own
    else:
        assert j == 50 * 320 and set(sizes) == {320}


def test_every_frame_starts_a_piece_with_its_id() -> None:
    sent = SentAudio(48_000, 16_000)
    pieces = feed(sent, [i * FRAME_S for i in range(30)], uid=7)
    ids = [frame for _, _, frame in pieces if frame is not None]
    assert ids == [(7, seq) for seq in range(len(ids))] and len(ids) >= 28


def test_the_utterance_before_a_pause_is_dated_before_it() -> None:
    """Ten frames from 0 s, then the next utterance at 1 s: what the resampler held of the
    first one comes out with the second's first frame, dated where it was sent (before 0.2 s),
    and the second utterance's first sample at exactly 1 s."""
    sent = SentAudio(48_000, 16_000)
    first = feed(sent, [i * FRAME_S for i in range(10)])
    made = sum(len(s) for _, s, _ in first)
    assert made < 10 * 320  # (some still in the resampler)
    second = feed(sent, [1.0 + i * FRAME_S for i in range(3)], uid=2)
    held = [p for p in second if p[0] < 1.0]
    assert held and all(at < 0.2 for at, _, _ in held)
    assert sum(len(s) for _, s, _ in held) == 10 * 320 - made
    new = [p for p in second if p[0] >= 1.0]
    assert new[0][0] == pytest.approx(1.0, abs=1e-9) and new[0][2] == (2, 0)


def test_the_frames_remembered_stay_bounded() -> None:
    sent = SentAudio(48_000, 16_000)
    feed(sent, [i * FRAME_S for i in range(500)])
    assert len(sent._frames) <= 3


class _Taken:
    """An echo canceller's reference side that keeps what it is handed."""

    def __init__(self) -> None:
        self.pieces: list[tuple[float, np.ndarray, object]] = []

    def add_reference(self, at: float, samples: np.ndarray, frame: object) -> None:
        self.pieces.append((at, samples.copy(), frame))


def test_each_utterance_in_opus_is_decoded_as_its_client_decodes_it() -> None:
    """With Opus the reference is the session's own packets decoded, and each utterance by a
    decoder of its own, as the server encodes it and as its clients (the SDK, opus.js) decode
    it: the second utterance's first frame is exactly what a fresh decoder gives, not what a
    decoder that went on from the first utterance's end would (its state differs there)."""
    from duplexd._opus import OpusDecoder, OpusEncoder
    from duplexd._uplink.reference import Reference
    from duplexd.protocol import frames as fr
    from duplexd.protocol.codec import encode

    rate, n = 16_000, 320  # (at 16 kHz the reference is not resampled: samples as decoded)
    t = np.arange(20 * n) / rate
    voice = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 2 * t) * 32767).astype("<i2")

    def packets() -> list[bytes]:  # (one utterance: one encoder, as the producer has it)
        encoder = OpusEncoder(rate)
        return [encoder.encode(voice[i * n : (i + 1) * n]) for i in range(20)]

    ref, taken = Reference(rate, opus=True), _Taken()
    for uid in (1, 2):
        for seq, packet in enumerate(packets()):
            message = encode(
                fr.Audio(epoch=0, utterance_id=uid, seq=seq, pcm=packet), packet_audio=True
            )
            ref.add(taken, 1.0 + 0.02 * (20 * (uid - 1) + seq), message)  # type: ignore[arg-type]
    second = [s for _, s, frame in taken.pieces if frame == (2, 0)]
    fresh, went_on = OpusDecoder(rate), OpusDecoder(rate)
    for packet in packets():
        went_on.decode_float(packet)
    first_packet = packets()[0]
    assert len(second) == 1 and second[0].dtype == np.float32
    np.testing.assert_array_equal(second[0], fresh.decode_float(first_packet))
    assert not np.array_equal(second[0], went_on.decode_float(first_packet))
