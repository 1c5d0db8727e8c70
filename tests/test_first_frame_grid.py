"""An utterance's grid starts with its first frame (`Downlink`, `Pacer.restart`): a first frame
that goes out late moves the grid with it, so the next frames are not sent early to catch up."""

from __future__ import annotations

import numpy as np
import pytest
import trio
import trio.testing
from test_pacer import Recorder, _PreciseOnMockClock

from duplexd._downlink.pacer import SHARE_MIN_STREAMS, open_pacer
from duplexd._downlink.producer import audio_headers
from duplexd._downlink.ring import FrameRing
from duplexd._downlink.writer import FIRST_LATE_S, KICKED_LATE_S, Downlink
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import Decoder

pytestmark = pytest.mark.unit

RATE_HZ = 16_000
SAMPLES = fr.frame_samples(RATE_HZ)
ANSWER = b"an answer"  # (the fake send tells it from audio)


class Events:
    """What a session answers the writer (an utterance of `frames` frames, no words)."""

    def __init__(self, frames: int) -> None:
        self.frames = frames

    def chars_spoken(self, utterance_id: int, samples: int) -> int:
        return 0

    def totals(self, utterance_id: int) -> tuple[int, int]:
        return (self.frames * SAMPLES, 10)

    def word_marks(self, utterance_id: int) -> None:
        return None

    def audio_started(self, utterance_id: int) -> None:
        pass

    def sending(self, frame: object) -> None:
        pass

    def slow_consumer(self) -> bool:
        return False

    def answered(self, spent_s: float) -> None:
        pass


def push_utterance(ring: FrameRing, frames: int, uid: int = 1) -> None:
    nbytes = SAMPLES * fr.BYTES_PER_SAMPLE
    heads = audio_headers(0, frames, epoch=0, utterance_id=uid, nbytes=nbytes, last=True)
    assert ring.push_many(heads, np.zeros((frames, SAMPLES), "<i2"), frames) == frames


async def sent_times(
    control_send_s: float, *, timer: object = None, crowd: int = 0
) -> tuple[list[tuple[float, int]], Downlink]:
    """Queue an answer whose send takes `control_send_s`, then an utterance of 5 frames: when
    each audio frame was sent, by seq."""
    sent: list[tuple[float, int]] = []

    async def send(data: bytes) -> None:
        if data == ANSWER:
            await trio.sleep(control_send_s)  # a client reading slowly: this send waits
            return
        decoder = Decoder(peer="server")
        decoder.receive_data(data)
        frames = iter(decoder.next_frame, None)
        audio = [f for f in frames if isinstance(f, fr.Audio)]
        sent.extend((trio.current_time(), f.seq) for f in audio)

    ring = FrameRing(16, fr.AUDIO_HEADER_BYTES + SAMPLES * fr.BYTES_PER_SAMPLE)
    async with open_pacer(timer=timer) as pacer, trio.open_nursery() as nursery:  # type: ignore[arg-type]
        dl = Downlink(ring=ring, send=send, pacer=pacer, rate_hz=RATE_HZ, events=Events(5))
        nursery.start_soon(dl.run)
        await trio.sleep(1.0)
        dl.send_control(ANSWER)  # taken at once: the writer is busy with it ...
        await trio.lowlevel.checkpoint()
        push_utterance(ring, 5)
        dl.kick()  # ... when the first frame's tick comes (now)
        for _ in range(crowd):  # more utterances start meanwhile (a burst): density
            pacer.schedule(Recorder(limit=10**6), 1.0 + 0.02)
        await trio.sleep(1.0)
        dl.stop(grace_s=0.1)
    return sent, dl


async def test_a_late_first_frame_starts_the_grid_where_it_went_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent, dl = await sent_times(0.007)
    assert [seq for _, seq in sent] == [0, 1, 2, 3, 4]
    t0 = sent[0][0]
    assert t0 == pytest.approx(1.007)  # 7 ms after its tick: the answer was in the way
    assert [t for t, _ in sent] == pytest.approx([t0 + n * 0.020 for n in range(5)])
    assert dl.counters.grids_restarted == 1
    assert dl.counters.pacing_error.count == 4  # the first frame's delay is first audio's


async def test_a_kicked_first_frame_a_little_late_moves_its_grid_to_where_it_went_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # under FIRST_LATE_S, as the 20 first frames of a burst are, each behind the others: the
    # player takes its grid from the first frame, so the next frames follow that one exactly
    sent, dl = await sent_times(FIRST_LATE_S / 2)
    t0 = sent[0][0]
    assert t0 == pytest.approx(1.0 + FIRST_LATE_S / 2)
    assert [t for t, _ in sent[1:]] == pytest.approx([t0 + n * 0.020 for n in range(1, 5)])
    assert dl.counters.grids_restarted == 1
    assert dl.counters.pacing_error.count == 4


async def test_a_kicked_first_frame_late_at_density_starts_its_grid_at_its_very_send_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # kicked with the pacer nearly idle, sent 0.3 ms late once a burst's other utterances
    # were scheduled: its grid is at its send time, not on the 0.5 ms slot before it (the
    # next frames would leave 0.3 ms early against it, which the player hears as jitter)
    sent, dl = await sent_times(0.0003, timer=_PreciseOnMockClock(), crowd=SHARE_MIN_STREAMS)
    t0 = sent[0][0]
    assert t0 == pytest.approx(1.0003)
    assert [t for t, _ in sent[1:]] == pytest.approx([t0 + n * 0.020 for n in range(1, 5)])
    assert dl.counters.grids_restarted == 1


async def test_a_kicked_first_frame_on_time_keeps_its_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent, dl = await sent_times(KICKED_LATE_S / 2)
    assert sent[0][0] == pytest.approx(1.0 + KICKED_LATE_S / 2)
    assert [t for t, _ in sent[1:]] == pytest.approx([1.0 + n * 0.020 for n in range(1, 5)])
    assert dl.counters.grids_restarted == 0


async def test_the_first_frame_is_sent_without_a_tick_of_the_pacer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The kick makes an utterance's first frame due at once: the pacer ticks from the
    second on, on the grid the first frame started."""
    sent: list[tuple[float, int]] = []

    async def send(data: bytes) -> None:
        decoder = Decoder(peer="server")
        decoder.receive_data(data)
        sent.extend(
            (trio.current_time(), f.seq)
            for f in iter(decoder.next_frame, None)
            if isinstance(f, fr.Audio)
        )

    ring = FrameRing(16, fr.AUDIO_HEADER_BYTES + SAMPLES * fr.BYTES_PER_SAMPLE)
    async with open_pacer() as pacer, trio.open_nursery() as nursery:
        dl = Downlink(ring=ring, send=send, pacer=pacer, rate_hz=RATE_HZ, events=Events(3))
        nursery.start_soon(dl.run)
        await trio.sleep(1.0)
        push_utterance(ring, 3)
        dl.kick()
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [(1.0, 0)] and pacer.ticks == 0  # out, and no tick was needed
        await trio.sleep(1.0)
        dl.stop(grace_s=0.1)
    assert sent == [(1.0 + n * 0.020, n) for n in range(3)]
    assert pacer.ticks == 3  # the second and third frames', and one that finds the end
