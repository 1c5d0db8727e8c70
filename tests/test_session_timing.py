"""Exact virtual-time behaviour of the pacer, writer and session (MockClock)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from harness import Pair, bounded_stream_pair, open_client, open_pair
from trio_websocket import ConnectionClosed

from duplexd.protocol import frames as fr

pytestmark = pytest.mark.unit
FRAME_S = 0.020


async def test_frames_leave_at_exact_multiples_of_20_ms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    arrivals: list[tuple[float, fr.Frame]] = []
    async with open_client(on_frame=lambda f, t: arrivals.append((t, f))) as session:
        t_sent = trio.current_time()
        uid = await session.say("Hello there, how are you today?")
        spoken = await session.receive_utterance(uid)
    audio = [(t, f) for t, f in arrivals if isinstance(f, fr.Audio)]
    # pieces "Hello there," + "how are you today?": 30 chars x 60 ms = 90 frames, and the
    # END frame is pure padding (the audio ended exactly on a frame boundary)
    assert spoken.frames == len(audio) == 91
    t0 = audio[0][0]
    assert t0 == t_sent  # no pre-roll: the first frame leaves as soon as it exists
    for n, (t, frame) in enumerate(audio):
        assert frame.seq == n
        assert t == t0 + n * FRAME_S
    assert audio[-1][1].last
    assert isinstance(spoken.end, fr.UtteranceDone)
    assert spoken.end.samples_sent == 90 * 960
    assert spoken.end.chars_spoken == 31


# ---------------------------------------------------------------------------- helpers

TEXT = "Hello there, how are you today?"  # pieces of 12 + 18 chars: 36 + 54 frames, + END pad
TEXT_FRAMES = 91
TEXT_CHARS = len(TEXT)
Arrival = tuple[float, fr.Frame]


async def handshake(pair: Pair, hello: fr.Hello | None = None) -> fr.Welcome:
    await pair.send(hello or fr.Hello())
    (welcome,) = await pair.receive()
    assert isinstance(welcome, fr.Welcome)
    return welcome


async def receive_until(pair: Pair, log: list[Arrival], pred: Callable[[fr.Frame], bool]) -> None:
    """Receive messages (noting arrival times in `log`) until a frame matches `pred`."""
    while True:
        frames = await pair.receive()
        now = trio.current_time()
        log.extend((now, f) for f in frames)
        if any(pred(f) for f in frames):
            return


async def receive_for(pair: Pair, log: list[Arrival], seconds: float) -> None:
    """Receive everything that arrives in the next `seconds` (virtual)."""
    with trio.move_on_after(seconds):
        await receive_until(pair, log, lambda f: False)


def audio_of(log: list[Arrival], uid: int | None = None) -> list[tuple[float, fr.Audio]]:
    return [
        (t, f) for t, f in log if isinstance(f, fr.Audio) and (uid is None or f.utterance_id == uid)
    ]


def assert_on_grid(audio: list[tuple[float, fr.Audio]], t0: float) -> None:
    for n, (t, _) in enumerate(audio):
        assert t == t0 + n * FRAME_S, (n, t, t0)


def is_audio(uid: int, n: int) -> Callable[[fr.Frame], bool]:
    """Matches the `n`-th (from 1) audio frame of `uid`, counting from a fresh predicate."""
    seen = [0]

    def pred(f: fr.Frame) -> bool:
        if isinstance(f, fr.Audio) and f.utterance_id == uid:
            seen[0] += 1
        return seen[0] >= n

    return pred


# ---------------------------------------------------------------------------- grids


async def test_queued_utterances_continue_the_same_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Arrival] = []
    async with open_client(on_frame=lambda f, t: log.append((t, f))) as session:
        t_sent = trio.current_time()
        uid1 = await session.say(TEXT)
        uid2 = await session.say("Fine, thanks.")  # "Fine," + "thanks.": 36 frames + END pad
        one = await session.receive_utterance(uid1)
        two = await session.receive_utterance(uid2)
    assert (one.frames, two.frames) == (TEXT_FRAMES, 37)
    audio = audio_of(log)
    assert [f.utterance_id for _, f in audio] == [uid1] * 91 + [uid2] * 37
    assert audio[0][0] == t_sent
    assert_on_grid(audio, t_sent)  # the second utterance's first frame is due 20 ms after END
    # nothing but the Done/Started pair lies between the two utterances' audio
    between = [f for t, f in log if audio[90][0] <= t <= audio[91][0]][1:-1]
    assert [type(f) for f in between] == [fr.UtteranceDone, fr.UtteranceStarted]
    started = [t for t, f in log if isinstance(f, fr.UtteranceStarted) and f.utterance_id == uid2]
    assert started == [audio[91][0]]  # sent immediately before its first audio frame


async def test_later_utterance_starts_a_new_grid_at_its_send_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Arrival] = []
    async with open_client(on_frame=lambda f, t: log.append((t, f))) as session:
        t1 = trio.current_time()
        await session.receive_utterance(await session.say(TEXT))
        t_done = trio.current_time()
        await trio.sleep(1.2345)
        t2 = trio.current_time()
        uid2 = await session.say(TEXT)
        await session.receive_utterance(uid2)
    first, second = audio_of(log, 1), audio_of(log, uid2)
    assert_on_grid(first, t1)
    assert t_done == t1 + 90 * FRAME_S
    assert_on_grid(second, t2)  # not t1's grid: a new run anchored at the send instant
    assert (t2 - t1) / FRAME_S % 1 != 0
    assert [f for t, f in log if t_done < t < t2] == []  # idle: nothing at all is sent


async def test_streamed_text_speaks_after_the_first_clause(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tokens = ["Hello", " there", ",", " how", " are", " you", " today", "?"]

    async def llm() -> AsyncIterator[str]:  # 20 tokens a second: the rest comes in time
        for i, token in enumerate(tokens):
            if i:
                await trio.sleep(0.05)
            yield token

    log: list[Arrival] = []
    async with open_client(on_frame=lambda f, t: log.append((t, f))) as session:
        t_start = trio.current_time()
        uid = await session.stream_text(llm())
        t_text_end = trio.current_time()
        spoken = await session.receive_utterance(uid)
    audio = audio_of(log, uid)
    assert t_text_end == t_start + 0.35
    assert audio[0][0] == t_start + 0.1  # the comma completes "Hello there," at 0.1 s
    assert audio[0][0] < t_text_end
    assert_on_grid(audio, audio[0][0])  # the rest arrived in time: no underrun, no gap
    assert spoken.frames == TEXT_FRAMES  # every word spoken: 30 chars x 60 ms + END pad
    assert isinstance(spoken.end, fr.UtteranceDone)
    assert spoken.end.samples_sent == 90 * 960
    assert spoken.end.chars_spoken == TEXT_CHARS


# ---------------------------------------------------------------------------- interrupt


async def interrupt_after(k: int) -> tuple[fr.Interrupted, list[Arrival], float]:
    """Queue utterances 1, 2, 3; interrupt once `k` audio frames of 1 have arrived.
    Returns Interrupted, everything received until 5 s after it, and the Interrupt's instant."""
    log: list[Arrival] = []
    async with open_pair() as (pair,):
        await handshake(pair)
        await pair.send(
            fr.Text(1, TEXT, end=True), fr.Text(2, "Second one.", end=True), fr.Text(3, "Third.")
        )
        await receive_until(pair, log, is_audio(1, k))
        t_interrupt = trio.current_time()
        await pair.send(fr.Interrupt())
        await receive_until(pair, log, lambda f: isinstance(f, fr.Interrupted))
        (t_answer, answer), *_ = [(t, f) for t, f in log if isinstance(f, fr.Interrupted)]
        assert t_answer == t_interrupt  # memory streams have no latency: the same instant
        await receive_for(pair, log, 5.0)
        session = pair.sessions[0].session
        assert session is not None and not session.busy  # nothing of 1, 2, 3 is left behind
        # the next utterance plays at once, in the new epoch
        t_next = trio.current_time()
        await pair.send(fr.Text(4, "Next.", end=True))
        await receive_until(pair, log, lambda f: isinstance(f, fr.UtteranceDone))
    assert isinstance(answer, fr.Interrupted)
    fresh = audio_of(log, 4)
    assert [f.epoch for _, f in fresh] == [1] * len(fresh) and len(fresh) == 16  # 5 x 3 + pad
    assert_on_grid(fresh, t_next)
    return answer, log, t_interrupt


def spoken_after(frames: int) -> int:
    """`TEXT`'s characters whose words' tones all lie in its first `frames` frames (pieces
    "Hello there," and "how are you today?", the second's audio right after the first's)."""
    ends = [(5, 5), (12, 12), (12 + 3, 13 + 3), (12 + 7, 13 + 7), (12 + 11, 13 + 11)]
    ends += [(12 + 18, TEXT_CHARS)]  # (end in tones, end in characters) of each word
    return max([chars for tones, chars in ends if tones * 3 <= frames], default=0)


async def test_interrupt_mid_utterance_stops_everything_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    spoken = []
    for k in (1, 20, 35, 36, 60, 88):
        answer, log, t_interrupt = await interrupt_after(k)
        before = [(t, f) for t, f in log if t <= t_interrupt]
        after = [f for t, f in log if t > t_interrupt]
        sent = audio_of(before, 1)
        # k paced frames, then the faded END tail in the same message, before Interrupted
        assert len(sent) == k + 1
        assert sent[-1][1].last and sent[-1][1].seq == k and sent[-1][0] == t_interrupt
        assert [type(f) for t, f in before[-2:]] == [fr.Audio, fr.Interrupted]
        assert answer.epoch == 1 and answer.utterance_id == 1
        # k whole frames and the tail's 5 ms of faded audio (240 samples at 48 kHz)
        assert answer.samples_sent == k * 960 + 240
        assert answer.cancelled_utterances == 2  # 2 and 3 were queued, 3's text still open
        # word-exact, the faded tail not counted: "Hello" (5 chars, 60 ms = 3 frames each)
        # is spoken once 15 whole frames went out, "Hello there," once 36 did...
        assert answer.chars_spoken == spoken_after(k)
        spoken.append(answer.chars_spoken)
        old = [f for f in after if getattr(f, "utterance_id", 0) in (1, 2, 3)]
        assert old == []  # no Audio/Started/Done of a cancelled utterance, ever
        assert all(f.epoch == 1 for f in after if isinstance(f, fr.Audio))
    assert spoken == sorted(spoken) and max(spoken) <= TEXT_CHARS


@pytest.mark.parametrize("rate_hz", [16_000, 24_000, 48_000])
async def test_the_barge_in_fade_lasts_5_ms_at_the_session_rate(
    rate_hz: int, autojump_clock: trio.testing.MockClock
) -> None:
    """SPEC.md §6.3: the tail sent at a cut is the utterance's next frame, its first 5 ms
    faded to zero with a raised cosine, the rest silent; 5 ms at every rate."""
    k = 5  # interrupt once this many frames arrived: the tail is frame k

    async def run(interrupt: bool) -> list[fr.Audio]:
        log: list[Arrival] = []
        async with open_pair() as (pair,):
            await handshake(pair, fr.Hello(sample_rate_hz=rate_hz))
            await pair.send(fr.Text(1, TEXT, end=True))
            if not interrupt:
                await receive_until(pair, log, lambda f: isinstance(f, fr.UtteranceDone))
            else:
                await receive_until(pair, log, is_audio(1, k))
                await pair.send(fr.Interrupt())
                await receive_until(pair, log, lambda f: isinstance(f, fr.Interrupted))
        return [f for _, f in audio_of(log, 1)]

    whole, cut = await run(False), await run(True)
    tail = cut[-1]
    assert tail.seq == k and tail.last and tail.epoch == 0
    samples = np.frombuffer(tail.pcm, "<i2").astype(np.int64)
    original = np.frombuffer(whole[k].pcm, "<i2").astype(np.int64)
    assert len(samples) == fr.frame_samples(rate_hz)
    n = rate_hz * 5 // 1000  # 80, 120, 240 samples
    gain = 0.5 * (1 + np.cos(np.pi * np.arange(n) / (n - 1)))
    np.testing.assert_allclose(samples[:n], original[:n] * gain, atol=1.0)
    assert samples[n - 1] == 0 and not samples[n:].any()  # silent after 5 ms
    assert np.abs(original[n:]).max() > 1000  # (the tone was still sounding there)


async def test_interrupt_with_nothing_playing_and_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Arrival] = []
    async with open_pair() as (pair,):
        await handshake(pair)
        await pair.send(fr.Interrupt())
        assert await pair.receive() == [fr.Interrupted(1, 0, 0, 0, 0)]
        await pair.send(fr.Text(1, TEXT, end=True))
        await receive_until(pair, log, is_audio(1, 10))
        t = trio.current_time()
        await pair.send(fr.Interrupt(), fr.Interrupt())  # one message, two interrupts
        await receive_until(pair, log, lambda f: isinstance(f, fr.Interrupted))
        if len([f for _, f in log if isinstance(f, fr.Interrupted)]) < 2:
            await receive_until(pair, log, lambda f: isinstance(f, fr.Interrupted))
        answers = [(s, f) for s, f in log if isinstance(f, fr.Interrupted)]
        assert [s for s, _ in answers] == [t, t]
        # 11 frames whole, then the tail's 5 ms; "Hello" is not spoken before frame 15
        assert answers[0][1] == fr.Interrupted(2, 1, 10 * 960 + 240, 0, 0)
        assert answers[1][1] == fr.Interrupted(3, 0, 0, 0, 0)  # exactly one answer each
        await receive_for(pair, log, 3.0)
    assert [f for s, f in log if s > t] == []


async def test_text_of_an_interrupted_utterance_is_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Arrival] = []
    async with open_pair() as (pair,):
        await handshake(pair)
        await pair.send(fr.Text(1, "Hello there, how"))  # text still open
        await receive_until(pair, log, is_audio(1, 5))
        await pair.send(fr.Interrupt())
        await receive_until(pair, log, lambda f: isinstance(f, fr.Interrupted))
        mark = len(log)
        # the client was still streaming utterance 1: silently dropped, no error, no audio
        await pair.send(fr.Text(1, " are you"), fr.Text(1, " today?", end=True))
        await receive_for(pair, log, 2.0)
        assert log[mark:] == []
        await pair.send(fr.Text(2, "Next.", end=True))
        await receive_until(pair, log, lambda f: isinstance(f, fr.UtteranceDone))
    interrupted = [f for _, f in log if isinstance(f, fr.Interrupted)]
    assert interrupted == [fr.Interrupted(1, 1, 5 * 960 + 240, 0, 0)]  # 5 whole + tail
    assert [f.epoch for _, f in audio_of(log, 2)] == [1] * 16
    assert not any(isinstance(f, fr.Error) for _, f in log)


# ---------------------------------------------------------------------------- pause, ping, stats


async def test_pause_and_resume_lose_no_frame_and_start_a_new_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Arrival] = []
    async with open_pair() as (pair,):
        await handshake(pair)
        t0 = trio.current_time()
        await pair.send(fr.Text(1, TEXT, end=True))
        await receive_until(pair, log, is_audio(1, 25))
        t_pause = trio.current_time()
        await pair.send(fr.Pause())
        assert await pair.receive() == [fr.Paused()]
        assert trio.current_time() == t_pause
        mark = len(log)
        await receive_for(pair, log, 3.0)
        assert log[mark:] == []  # nothing at all while paused
        await pair.send(fr.Pause())  # idempotent: answered, changes nothing
        assert await pair.receive() == [fr.Paused()]
        t_resume = trio.current_time()
        await pair.send(fr.Resume())
        await receive_until(pair, log, lambda f: isinstance(f, fr.UtteranceDone))
    resumed = [t for t, f in log if isinstance(f, fr.Resumed)]
    assert resumed == [t_resume]
    audio = audio_of(log, 1)
    assert [f.seq for _, f in audio] == list(range(TEXT_FRAMES))  # none lost, none repeated
    assert_on_grid(audio[:25], t0)
    assert_on_grid(audio[25:], t_resume)  # the next frame leaves at the resume instant
    done = [f for _, f in log if isinstance(f, fr.UtteranceDone)]
    assert done == [fr.UtteranceDone(0, 1, 90 * 960, TEXT_CHARS)]  # same as never paused


async def test_ping_is_answered_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with open_pair() as (pair,):
        await handshake(pair)
        t = trio.current_time()
        await pair.send(fr.Ping(nonce=0x1122334455667788))
        (pong,) = await pair.receive()
        assert trio.current_time() == t
        assert isinstance(pong, fr.Pong) and pong.nonce == 0x1122334455667788
        assert pong.server_time_ns > 0
        # also in the middle of audio: the answer goes out between two frames, not paced
        await pair.send(fr.Text(1, "Hi there.", end=True))
        await receive_until(pair, [], is_audio(1, 3))
        t = trio.current_time()
        await pair.send(fr.Ping(nonce=7))
        assert [type(f) for f in await pair.receive()] == [fr.Pong]
        assert trio.current_time() == t


async def test_get_stats_reports_frames_and_pacing_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_client() as session:
        assert await session.ping() == 0.0
        await session.receive_utterance(await session.say(TEXT))
        stats = await session.stats()
    assert stats["frames_sent"] == TEXT_FRAMES
    assert stats["utterances_done"] == 1
    pacing = stats["pacing_error_ms"]
    assert pacing["count"] == TEXT_FRAMES - 1  # the first frame is first audio's (kicked)
    assert pacing["max"] == 0.0 and pacing["p99"] == 0.0  # virtual time: exactly on the grid


# ---------------------------------------------------------------------------- many sessions


async def test_many_sessions_keep_exact_grids_and_a_slow_one_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    n = 20
    slow = 7
    streams: dict[int, Any] = {}

    def streams_for(i: int) -> tuple[Any, Any]:
        if i != slow:
            return trio.testing.memory_stream_pair()
        streams[i] = bounded_stream_pair(16384)
        return streams[i]

    logs: list[list[Arrival]] = [[] for _ in range(n)]
    starts: list[float] = [0.0] * n
    text = TEXT + " " + TEXT  # pieces of 12, 18 and 31 chars: 183 frames + END pad, 3.7 s
    async with open_pair(sessions=n, stream_pair=streams_for) as pairs:
        for pair in pairs:
            await handshake(pair)

        async def talk(i: int) -> None:
            await trio.sleep(i * 0.0031)  # twenty different grids
            starts[i] = trio.current_time()
            await pairs[i].send(fr.Text(1, text, end=True))
            if i != slow:
                await receive_until(pairs[i], logs[i], lambda f: isinstance(f, fr.UtteranceDone))

        t_decided: list[float] = []
        close_code: list[int] = []

        async def watch_slow() -> None:
            # the slow client reads nothing until its session has given up on it, then
            # drains what was buffered: the Error frame and the close come last
            session = None
            while session is None or session.error_code is None:
                await trio.sleep(0.001)
                session = pairs[slow].sessions[0] if pairs[slow].sessions else None
            t_decided.append(trio.current_time())
            with pytest.raises(ConnectionClosed) as closed:
                await receive_until(pairs[slow], logs[slow], lambda f: False)
            assert closed.value.reason is not None
            close_code.append(closed.value.reason.code)
            await pairs[slow].done.wait()

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(talk, i)
            nursery.start_soon(watch_slow)
        await trio.sleep(0.1)  # a writer leaves the schedule at the tick after its END
        assert pairs[0].pacer.scheduled == 0  # every slot released, the failed one's too
    blocked_at = streams[slow][1].outgoing.blocked_at
    assert blocked_at is not None
    # the slow writer blocked on a frame at a tick of its grid; 51 ticks later (> 50 frames,
    # 1 s, behind) it was declared slow
    ticks = (blocked_at - starts[slow]) / FRAME_S
    assert ticks == pytest.approx(round(ticks), abs=1e-9) and ticks >= 1
    assert 0 <= t_decided[0] - (blocked_at + 51 * FRAME_S) < 0.001  # (polled every 1 ms)
    assert pairs[slow].sessions[0].error_code is fr.ErrorCode.SLOW_CONSUMER
    tail = logs[slow][-1][1]
    assert isinstance(tail, fr.Error) and tail.code is fr.ErrorCode.SLOW_CONSUMER
    assert "read nothing for 1 s while audio was due" in tail.message  # the right cause
    assert close_code == [4002]
    for i in range(n):
        if i == slow:
            continue
        audio = audio_of(logs[i], 1)
        assert len(audio) == 184
        assert_on_grid(audio, starts[i])
