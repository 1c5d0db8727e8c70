"""A hostile client, within every announced limit, cannot hurt a bystander (MockClock).

Each case is one of the attacks found against the daemon ("Safe on a network"): the attacker's
session gets the documented error (or is served, when what it sends is merely odd), and a
bystander session speaking at the same time keeps every frame exactly on its 20 ms grid. CPU
time is not virtual time, so these tests check the behaviour; tests/test_hostile_realtime.py
runs the same attacks on the real clock and measures the bystanders' gaps.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import trio
import trio.testing
from harness import TEST_LIMITS, Pair, open_pair
from test_bad_input import expect_error, handshake

from duplexd._ops.settings import SessionLimits
from duplexd._server.limits import SESSION_OPEN_S
from duplexd.engines.tone import ToneEngine, ToneVoice
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import encode

pytestmark = pytest.mark.unit
E = fr.ErrorCode
FRAME_S = 0.020
BYSTANDER_TEXT = "Hello there, how are you today?"  # 90 frames + the END pad


class Bystander:
    """A session speaking through an attack; it records when each audio frame arrived."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.audio: list[tuple[float, fr.Audio]] = []
        self.done = trio.Event()

    async def run(self) -> None:
        await handshake(self.pair)
        self.t0 = trio.current_time()
        await self.pair.send(fr.Text(1, BYSTANDER_TEXT, end=True))
        while True:
            frames = await self.pair.receive()
            now = trio.current_time()
            self.audio += [(now, f) for f in frames if isinstance(f, fr.Audio)]
            if any(isinstance(f, fr.UtteranceDone) for f in frames):
                break
        self.done.set()

    def assert_on_grid(self) -> None:
        assert [f.seq for _, f in self.audio] == list(range(91))
        assert [t for t, _ in self.audio] == [self.t0 + n * FRAME_S for n in range(91)]


async def attack_beside_a_bystander(
    attack: bytes | list[bytes],
    code: fr.ErrorCode | None,
    *,
    limits: SessionLimits = TEST_LIMITS,
    engine: ToneEngine | None = None,
    until: type = fr.UtteranceDone,
    hello: fr.Hello | None = None,
) -> list[fr.Frame]:
    """Send `attack` (one message or several) once the bystander is speaking; expect `code`
    (None: the session is served: read until a frame of type `until`). Returns what the
    attacker received."""
    async with open_pair(engine, limits, sessions=2) as (bad, good):
        bystander = Bystander(good)
        got: list[fr.Frame] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bystander.run)
            await handshake(bad, hello)
            await trio.sleep(0.1)  # mid-utterance for the bystander
            for message in [attack] if isinstance(attack, bytes) else attack:
                await bad.client.send_message(message)
            if code is not None:
                got = await expect_error(bad, code)
            else:
                with trio.fail_after(120):
                    while not any(isinstance(f, until) for f in got):
                        got += await bad.receive()
            await bystander.done.wait()
        bystander.assert_on_grid()
        return got


def spaces_message(n: int, piece: str = " ") -> bytes:
    return b"".join([encode(fr.Text(1, "a"))] + [encode(fr.Text(1, piece))] * n)


async def test_a_long_run_of_spaces_in_one_message(autojump_clock: trio.testing.MockClock) -> None:
    message = spaces_message(8_000) + encode(fr.Text(1, "b.", end=True))
    got = await attack_beside_a_bystander(message, None)
    done = [f for f in got if isinstance(f, fr.UtteranceDone)]
    assert done and done[0].chars_spoken == 8_003  # all of it was read, and it was spoken


async def test_a_long_run_of_cjk_marks_in_one_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    message = spaces_message(9_000, "\u3002") + encode(fr.Text(1, "", end=True))
    got = await attack_beside_a_bystander(message, None, until=fr.Audio)  # read, and speaking
    assert any(isinstance(f, fr.UtteranceStarted) for f in got)


class RecordingEngine(ToneEngine):
    """The tone engine plus a fast voice "rec" (1 ms per character) that remembers every text
    piece it was asked to speak."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []

    def voices(self) -> list[str]:
        return [*super().voices(), "rec"]

    def open_voice(self, name: str) -> ToneVoice:
        if name != "rec":
            return super().open_voice(name)
        engine = self

        class Recording(ToneVoice):
            def synthesize_stream(self, text: str) -> Iterator[np.ndarray]:
                engine.pieces.append(text)  # a piece, as the segmenter cut it
                yield from super().synthesize_stream(text)

        return Recording(
            "rec", 220.0, sample_rate_hz=48_000, ms_per_char=1.0, compute_ms_per_char=0.0
        )


async def test_an_unspaced_utterance_is_synthesized_in_bounded_pieces(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from duplexd._downlink.segment import DEFAULT_HARD_MAX_PIECE_CHARS

    engine = RecordingEngine()
    limits = SessionLimits(ring_frames=1024, max_text_bytes=32_768)
    message = encode(fr.Text(1, "a" * 32_768, end=True))
    await attack_beside_a_bystander(
        message, None, limits=limits, engine=engine, hello=fr.Hello(voice="rec")
    )
    long = [p for p in engine.pieces if len(p) > 100]
    assert sum(len(p) for p in long) >= 32_000  # the attacker's text, all of it spoken
    assert max(len(p) for p in engine.pieces) <= DEFAULT_HARD_MAX_PIECE_CHARS


@pytest.mark.parametrize(
    "frame",
    # requests that want an answer are read as fast as their answers go out (the reader waits
    # while 1024 wait), so they too end at the frame budget, their answers sent as they came
    [fr.Text(1, ""), fr.GetStats(), fr.Ping(7)],
    ids=["empty text", "stats", "ping"],
)
async def test_a_flood_of_frames_in_one_message_is_cut_short(
    frame: fr.ClientFrame, autojump_clock: trio.testing.MockClock
) -> None:
    from duplexd._downlink.writer import MAX_CONTROL_FRAMES

    limits = SessionLimits(ring_frames=1024, frame_burst=5_000)
    message = encode(frame) * ((1 << 20) // len(encode(frame)))  # as many as 1 MiB holds
    got = await attack_beside_a_bystander(message, E.LIMIT_EXCEEDED, limits=limits)
    error = got[-1]
    assert isinstance(error, fr.Error) and "5000 frames at once" in error.message
    if not isinstance(frame, fr.Text):  # those still waiting at the error are not sent
        assert len(got) - 2 >= 5_000 - MAX_CONTROL_FRAMES  # (Welcome and Error aside)


async def test_a_steady_stream_under_the_rate_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """900 frames a second for 3 s, in small messages: under the limit, never cut."""
    limits = SessionLimits(ring_frames=1024, max_frames_per_s=1000.0, frame_burst=1000)
    async with open_pair(limits=limits) as (pair,):
        await handshake(pair)
        for _ in range(300):
            await pair.send(*[fr.Ping(1)] * 9)
            await trio.sleep(0.01)
            await pair.receive()
        await pair.send(fr.Ping(2))
        assert [type(f) for f in await pair.receive()] == [fr.Pong]


async def fill_until_the_writer_waits(pair: Pair) -> float:
    """Ask for answers the client never reads until the server's writer waits on the full
    socket; returns how long it has been waiting."""
    session = pair.sessions[0].session
    assert session is not None
    for _ in range(20):
        await pair.send(*[fr.GetStats()] * 100)
        await trio.sleep(0.01)
        if (waited := session._downlink.send_blocked_s(trio.current_time())) > 0:
            return waited
    raise AssertionError("the writer never had to wait")


async def test_requests_behind_a_blocked_socket_stop_the_reading_then_slow_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that asks and never reads: its reading stops at 1024 answers waiting (the
    queue stays bounded), and it is a slow consumer, told so without a word about audio. (Its
    loop share is the whole loop here: the real CPU time its 2,500 Pings cost is charged on the
    virtual clock, and on a busy box 0.5 s of the default 2 % read only 960 of them.)"""
    import attrs
    from harness import bounded_stream_pair

    from duplexd._downlink.writer import MAX_CONTROL_FRAMES

    limits = attrs.evolve(TEST_LIMITS, input_share=1.0, input_burst_s=1.0)
    async with open_pair(limits=limits, stream_pair=lambda i: bounded_stream_pair(4096)) as (pair,):
        await handshake(pair)
        session = pair.sessions[0].session
        assert session is not None
        waited = await fill_until_the_writer_waits(pair)
        t = trio.current_time() - waited  # when the writer began to wait
        await pair.send(*[fr.Ping(1)] * 2_500)  # more requests than answers may wait
        await trio.sleep(0.5)
        assert len(session._downlink._control) == MAX_CONTROL_FRAMES  # the reader waits
        assert session._decoder.buffered_bytes > 0  # the rest of the message is unread
        with trio.fail_after(5):
            await pair.done.wait()
        assert pair.sessions[0].error_code is E.SLOW_CONSUMER
        assert 1.0 <= trio.current_time() - t <= 3.0  # noticed within a second, Error given 1 s
        error = pair.sessions[0]._end.error
        assert error is not None
        message = error[1]
        assert "frames waited to be sent" in message and "audio" not in message


async def test_a_burst_of_pings_from_a_client_that_reads_gets_every_pong(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """2,500 Pings, more than the 1024 answers that may wait: in one message, then one Ping a
    message; every Pong arrives, in order, and the session goes on."""
    async with open_pair() as (pair,):
        await handshake(pair)
        for messages in (
            [[fr.Ping(n) for n in range(2_500)]],
            [[fr.Ping(n)] for n in range(2_500)],
        ):
            pongs: list[int] = []

            async def read(pongs: list[int]) -> None:
                while len(pongs) < 2_500:
                    pongs.extend(f.nonce for f in await pair.receive() if isinstance(f, fr.Pong))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, pongs)
                for frames in messages:
                    await pair.send(*frames)
            assert pongs == list(range(2_500))
        assert pair.sessions[0].error_code is None
        await pair.send(fr.Ping(9))
        assert [f.nonce for f in await pair.receive() if isinstance(f, fr.Pong)] == [9]


async def test_a_client_that_reads_nothing_is_a_slow_consumer_even_in_silence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from harness import bounded_stream_pair

    async with open_pair(stream_pair=lambda i: bounded_stream_pair(4096)) as (pair,):
        await handshake(pair)
        waited = await fill_until_the_writer_waits(pair)  # and no audio at all
        t = trio.current_time() - waited  # when the writer began to wait
        with trio.fail_after(10):
            await pair.done.wait()
        assert pair.sessions[0].error_code is E.SLOW_CONSUMER
        assert 1.0 <= trio.current_time() - t <= 3.0  # noticed within a second, Error given 1 s


async def test_an_idle_session_is_closed_after_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = SessionLimits(ring_frames=1024, idle_timeout_s=30.0)
    async with open_pair(limits=limits, sessions=2) as (idle, busy):
        await handshake(idle)
        t0 = trio.current_time()
        await handshake(busy)
        await busy.send(fr.Text(1, "x" * 3_000, end=True))  # 180 s of speech, no frame sent
        await expect_error(idle, E.LIMIT_EXCEEDED)
        assert trio.current_time() == t0 + 30.0
        await busy.receive()
        assert busy.sessions[0].error_code is None  # speaking is not idling
        await trio.sleep(60)
        assert busy.sessions[0].error_code is None


async def test_a_session_ends_at_max_session_s(autojump_clock: trio.testing.MockClock) -> None:
    from trio_websocket import ConnectionClosed

    limits = SessionLimits(ring_frames=1024, max_session_s=100.0)
    async with open_pair(limits=limits) as (pair,):
        await handshake(pair)
        t0 = trio.current_time()
        frames: list[fr.Frame] = []
        closed: list[tuple[float, int]] = []
        with pytest.raises(ConnectionClosed):
            while True:  # active all along: a ping every 10 s, every answer read
                await trio.sleep(10)
                await pair.send(fr.Ping(1))
                frames += await pair.receive()
        closed.append((trio.current_time(), fr.CloseCode.LIMIT))
        errors = [f for f in frames if isinstance(f, fr.Error)]
        assert [e.code for e in errors] == [E.LIMIT_EXCEEDED]
        assert "at most 100 s" in errors[0].message
        assert pair.sessions[0].error_code is E.LIMIT_EXCEEDED
        assert closed[0][0] - t0 <= 110.0


async def test_deeply_nested_json_is_malformed_not_internal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from duplexd.protocol.jsonmode import JsonTranslator

    with pytest.raises(Exception) as info:
        JsonTranslator().frames("[" * 100_000)
    assert getattr(info.value, "error_code", None) is E.MALFORMED


async def test_a_daemon_stall_is_not_blamed_on_the_clients(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The loop stops for 1.5 s (virtual: the clock jumps with nothing running). Before, every
    playing session was killed with SLOW_CONSUMER; now they go on, re-anchored after it."""
    async with open_pair(sessions=3) as pairs:
        bystanders = [Bystander(p) for p in pairs]
        async with trio.open_nursery() as nursery:
            for b in bystanders:
                nursery.start_soon(b.run)
            await trio.sleep(0.5)
            autojump_clock.jump(1.5)  # nothing runs meanwhile: the daemon stalled
        pacer = pairs[0].pacer
        assert pacer.stalls >= 1 and pacer.stall_s >= 1.4
    for b in bystanders:
        assert b.pair.sessions[0].error_code is None
        seqs = [f.seq for _, f in b.audio]
        assert seqs == list(range(91))  # every frame, in order, none lost
        times = [t for t, _ in b.audio]
        gaps = np.diff(times)
        assert max(gaps) == pytest.approx(1.5 + FRAME_S, abs=FRAME_S)  # one gap: the stall
        assert sorted(gaps)[-2] == pytest.approx(FRAME_S)  # no burst after it


async def test_a_drain_refuses_new_sessions_and_new_utterances(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SIGTERM's drain lets what was said finish; it does not wait for what comes next: a
    connection still in its handshake, or a session starting a new utterance, gets GOING_AWAY."""
    draining = False
    async with open_pair(sessions=3, draining=lambda: draining) as (late, talker, playing):
        await handshake(talker)
        await handshake(playing)
        await playing.send(fr.Text(1, "Hi there.", end=True))
        await playing.receive()  # audio is flowing
        draining = True
        await late.send(fr.Hello())  # upgraded before the drain, Hello after it
        await expect_error(late, E.GOING_AWAY)
        await talker.send(fr.Text(1, "One more thing."))
        await expect_error(talker, E.GOING_AWAY)
        frames: list[fr.Frame] = []
        while not any(isinstance(f, fr.UtteranceDone) for f in frames):
            frames += await playing.receive()  # what was already said plays to its end
        assert playing.sessions[0].error_code is None


async def test_a_client_over_its_share_of_the_loop_is_slowed_down_not_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Within every frame limit, a client whose frames cost more loop time than its share waits
    before its next ones are read; the bystander's grid does not move."""
    # a burst that pays for opening the session and 1 ms more
    limits = SessionLimits(
        ring_frames=1024, input_share=0.001, input_burst_s=SESSION_OPEN_S + 0.001
    )
    heavy = [encode(fr.Text(1, "")) * 5_000 for _ in range(4)]  # 20,000 frames, 4 messages
    async with open_pair(limits=limits, sessions=2) as (bad, good):
        bystander = Bystander(good)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bystander.run)
            await handshake(bad)
            await bad.send(fr.Text(1, "a"))
            for message in heavy:
                await bad.client.send_message(message)
            await bad.send(fr.Ping(3))
            frames: list[fr.Frame] = []
            while not any(isinstance(f, fr.Pong) for f in frames):
                frames += await bad.receive()
            await bystander.done.wait()
        session = bad.sessions[0].session
        assert session is not None and bad.sessions[0].error_code is None
        assert session.observer.input_throttled_s > 0
    bystander.assert_on_grid()


async def test_starting_and_interrupting_long_utterances_waits_for_the_synthesis_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that starts long utterances and interrupts each at once has the engine render
    audio nobody hears: past `synthesis_burst_s`, its next piece waits until it is back
    within `synthesis_speed`; the bystander's grid does not move."""
    limits = SessionLimits(
        ring_frames=1024, synthesis_speed=1.0, synthesis_burst_s=6.0, resume_window_s=0.0
    )
    long_text = "a" * 100  # one piece, 6 s of audio at the tone's 60 ms a character
    async with open_pair(limits=limits, sessions=2) as (bad, good):
        bystander = Bystander(good)
        first_audio: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bystander.run)
            await handshake(bad)
            session = bad.sessions[0].session
            assert session is not None
            opened_at = session._opened_at
            for uid in (1, 2, 3):
                await bad.send(fr.Text(uid, long_text, end=True))
                frames: list[fr.Frame] = []
                while not any(isinstance(f, fr.Audio) for f in frames):
                    frames += await bad.receive()
                first_audio.append(trio.current_time())
                await bad.send(fr.Interrupt())
                while not any(isinstance(f, fr.Interrupted) for f in frames):
                    frames += await bad.receive()
            await bystander.done.wait()
        throttled_s = session.observer.synthesis_throttled_s
        assert bad.sessions[0].error_code is None
    # 6 s of budget at open, 6 s spent by each utterance, 1 s earned a second: the third
    # piece is rendered once the session is 12 - 6 = 6 s old, not before.
    assert first_audio[1] - opened_at < 1.0
    assert throttled_s > 4.0
    assert first_audio[2] >= opened_at + 6.0
    assert first_audio[2] < opened_at + 6.0 + 2 * FRAME_S
    bystander.assert_on_grid()
