"""The chat's loudspeaker (duplexd/client/playback.py): its jitter buffer and PLAYED reports.

The buffer is the browser client's (web/jitter.js) for a sound card's callback: these tests
drive `render` as the card would, block by block on the card's clock, and check each sample
and each report exactly."""

from __future__ import annotations

import wave
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from duplexd.client.playback import PlaybackBuffer, Position, Speaker
from duplexd.client.said import SaidReplies
from duplexd.protocol import frames as fr

RATE = 48_000
N = fr.frame_samples(RATE)  # 960 samples a frame
BLOCK = 480  # the card's callback: 10 ms


def frame(uid: int, seq: int, *, last: bool = False, epoch: int = 0) -> fr.Audio:
    """Frame `seq` of utterance `uid`: its samples count on from seq x N (uid x 10,000 + i)."""
    i = np.arange(seq * N, (seq + 1) * N)
    return fr.Audio(epoch, uid, seq, (uid * 10_000 + i).astype("<i2").tobytes(), last)


def samples(pcm: bytes) -> list[int]:
    return [int(x) for x in np.frombuffer(pcm, "<i2")]


def us(block: int, sample: int = 0) -> int:
    """The card's clock (µs) at `sample` of callback `block` (block 0 at 1 s)."""
    return round(1e6 + (block * BLOCK + sample) * 1e6 / RATE)


def render(buf: PlaybackBuffer, block: int) -> tuple[list[int], list[Position]]:
    pcm, events = buf.render(BLOCK, 1.0 + block * BLOCK / RATE)
    assert len(pcm) == 2 * BLOCK
    return samples(pcm), events


def test_a_run_starts_once_50_ms_is_buffered_and_reports_its_first_sample() -> None:
    buf = PlaybackBuffer(RATE)
    buf.push(frame(1, 0))
    buf.push(frame(1, 1))  # 40 ms: not yet
    assert render(buf, 0) == ([0] * BLOCK, [])
    buf.push(frame(1, 2))
    got, events = render(buf, 1)
    assert got == [10_000 + i for i in range(BLOCK)]
    assert events == [Position(0, 1, 1, us(1))]


def test_a_short_utterance_does_not_wait_and_reports_its_end() -> None:
    buf = PlaybackBuffer(RATE)
    buf.push(frame(1, 0, last=True))
    got0, events0 = render(buf, 0)
    got1, events1 = render(buf, 1)
    assert got0 + got1 == [10_000 + i for i in range(N)]
    assert events0 == [Position(0, 1, 1, us(0))]
    assert events1 == [Position(0, 1, N, us(1, BLOCK - 1), final=True)]
    assert render(buf, 2) == ([0] * BLOCK, [])
    assert buf.underruns == 0  # (between utterances: no underrun)


def test_positions_every_200_ms_on_the_clock_of_their_last_sample() -> None:
    buf = PlaybackBuffer(RATE)
    for seq in range(30):
        buf.push(frame(1, seq))
    events = [e for b in range(50) for e in render(buf, b)[1]]
    per = 200 * RATE // 1000  # 9,600 samples, 20 blocks
    assert events == [
        Position(0, 1, 1, us(0)),
        Position(0, 1, per, us(19, BLOCK - 1)),
        Position(0, 1, 2 * per, us(39, BLOCK - 1)),
    ]


def test_a_buffer_that_runs_dry_restarts_a_run_and_reports_where_it_plays() -> None:
    buf = PlaybackBuffer(RATE)
    for seq in range(3):
        buf.push(frame(1, seq))
    for b in range(6):  # the 3 frames play out (60 ms, 6 blocks)
        render(buf, b)
    assert render(buf, 6) == ([0] * BLOCK, [])  # dry mid-utterance
    assert buf.underruns == 1
    for seq in range(3, 6):  # 50 ms again: the run restarts where the card is now
        buf.push(frame(1, seq))
    got, events = render(buf, 11)  # (110 ms after the last report)
    assert got[0] == 10_000 + 3 * N
    assert events == [Position(0, 1, 3 * N + 1, us(11))]


def test_a_run_restarted_within_100_ms_of_a_report_is_not_reported() -> None:
    """At most 10 reports a second (SPEC.md §4.8), however often the buffer runs dry."""
    buf = PlaybackBuffer(RATE)
    buf.push(frame(1, 0))
    buf.push(frame(1, 1))
    buf.push(frame(1, 2))
    assert render(buf, 0)[1] == [Position(0, 1, 1, us(0))]
    for b in range(1, 7):
        render(buf, b)  # played out at block 5; dry at 6
    for seq in range(3, 6):
        buf.push(frame(1, seq))
    assert render(buf, 7)[1] == []  # 70 ms after the last report
    assert render(buf, 8)[0][0] == 10_000 + 3 * N + BLOCK  # (it plays on meanwhile)


def test_a_flush_reports_what_played_and_zero_for_what_never_did() -> None:
    buf = PlaybackBuffer(RATE)
    for seq in range(3):
        buf.push(frame(1, seq))
    buf.push(frame(2, 0, last=True))
    render(buf, 0)
    render(buf, 1)
    events = buf.flush(1.05)
    assert events == [
        Position(0, 1, 2 * BLOCK, us(1, BLOCK - 1), final=True),
        Position(0, 2, 0, 1_050_000, final=True),
    ]
    assert buf.buffered_samples == 0
    assert render(buf, 2) == ([0] * BLOCK, [])
    buf.push(frame(1, 3))  # (a new epoch may reuse nothing: the seqs start over)
    assert buf.late_frames == 0


def test_a_frame_behind_its_utterance_is_dropped() -> None:
    buf = PlaybackBuffer(RATE)
    buf.push(frame(1, 0))
    buf.push(frame(1, 1))
    buf.push(frame(1, 1))
    buf.push(frame(1, 0))
    assert (buf.late_frames, buf.buffered_samples) == (2, 2 * N)


def test_an_utterance_that_ends_without_its_last_frame_is_final_when_the_next_plays() -> None:
    buf = PlaybackBuffer(RATE)
    buf.push(frame(1, 0))
    buf.push(frame(2, 0))
    buf.push(frame(2, 1, last=True))
    events = [e for b in range(6) for e in render(buf, b)[1]]
    assert events == [
        Position(0, 1, 1, us(0)),
        Position(0, 1, N, us(1, BLOCK - 1), final=True),
        Position(0, 2, 2 * N, us(5, BLOCK - 1), final=True),
    ]


class FakeStream:
    """sounddevice.RawOutputStream's test double: the test calls its callback as the card."""

    def __init__(self, *, samplerate: int, channels: int, dtype: str, callback: Any) -> None:
        assert (samplerate, channels, dtype) == (RATE, 1, "int16")
        self.callback = callback
        self.latency = 0.025
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def play(self, frames: int, dac_s: float) -> bytes:
        out = bytearray(2 * frames)
        t = SimpleNamespace(outputBufferDacTime=dac_s, currentTime=dac_s - 0.02)
        self.callback(memoryview(out), frames, t, None)
        return bytes(out)


def fake_sounddevice() -> Any:
    return SimpleNamespace(RawOutputStream=FakeStream)


def test_the_speaker_plays_on_the_cards_clock_and_hands_its_reports_over() -> None:
    spk = Speaker("", RATE, fake_sounddevice())
    stream: FakeStream = spk._stream
    got: list[Position] = []
    spk.report = got.extend
    assert spk.kind == "speaker" and stream.started
    for seq in range(3):
        spk.play(frame(1, seq))
    assert samples(stream.play(BLOCK, 12.5))[:2] == [10_000, 10_001]
    assert got == [Position(0, 1, 1, 12_500_000)]
    spk.flush()
    assert got[1:] == [Position(0, 1, BLOCK, round(12.5e6 + (BLOCK - 1) * 1e6 / RATE), True)]
    spk.close()
    assert stream.closed


def test_a_card_without_dac_times_is_timed_by_the_monotonic_clock_and_its_latency() -> None:
    spk = Speaker("", RATE, fake_sounddevice())
    got: list[Position] = []
    spk.report = got.extend
    spk.play(frame(1, 0, last=True))
    import time

    before = time.monotonic()
    spk._stream.play(BLOCK, 0.0)
    after = time.monotonic()
    assert before + 0.025 <= got[0].clock_us / 1e6 <= after + 0.025


def test_a_wav_file_gets_every_sample_and_no_reports(tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    spk = Speaker(str(out), RATE, fake_sounddevice())
    spk.play(frame(1, 0))
    spk.play(frame(1, 1, last=True))
    spk.close()
    assert spk.kind == "file" and spk._stream is None
    with wave.open(str(out), "rb") as w:
        assert samples(w.readframes(w.getnframes())) == [10_000 + i for i in range(2 * N)]


@pytest.mark.trio
async def test_the_chat_sends_what_the_card_reports_from_its_thread() -> None:
    """The card's thread hands its reports to trio (`Chat._played`), which sends them as
    PLAYED, in order."""
    from duplexd.client.chat import Chat

    sent: list[tuple[int, int, int, bool]] = []
    both = trio.Event()

    class Session:
        async def send_played(
            self, uid: int, n: int, *, clock_us: int = 0, final: bool = False
        ) -> None:
            sent.append((uid, n, clock_us, final))
            if len(sent) == 2:
                both.set()

    chat = Chat.__new__(Chat)
    chat.speaker = Speaker("", RATE, fake_sounddevice())
    stream: FakeStream = chat.speaker._stream
    for seq in range(2):
        chat.speaker.play(frame(7, seq, last=seq == 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat._played, Session())
        await trio.testing.wait_all_tasks_blocked()

        def card() -> None:
            for b in range(4):
                stream.play(BLOCK, 3.0 + b * BLOCK / RATE)

        await trio.to_thread.run_sync(card)  # (the card's thread)
        with trio.fail_after(5):
            await both.wait()
        nursery.cancel_scope.cancel()
    assert sent == [
        (7, 1, 3_000_000, False),
        (7, 2 * N, round(3e6 + (2 * N - 1) * 1e6 / RATE), True),
    ]
    assert chat.speaker.report is None


@pytest.mark.trio
async def test_the_chat_tells_what_was_heard_of_a_reply_cut_short(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """HEARD after a barge-in: the chat prints the reply's text up to `chars_heard` (the demo
    responder's real reply, as it was sent) and gives it to the responder (the agent's
    context); a reply heard whole is not told again."""
    import argparse

    from duplexd.client.agent import DemoResponder
    from duplexd.client.chat import Chat

    frames: trio.MemorySendChannel[Any]
    frames, received = trio.open_memory_channel[Any](8)
    sent: list[tuple[int, str]] = []

    class Session:
        sample_rate_hz = RATE

        def __init__(self) -> None:
            self.uid = 4

        def new_utterance_id(self) -> int:
            self.uid += 1
            return self.uid

        async def send_text(self, uid: int, text: str, *, end: bool = False) -> None:
            sent.append((uid, text))

        def __aiter__(self) -> Any:
            return received

    class Responder(DemoResponder):
        def __init__(self) -> None:
            self.cuts: list[tuple[str, str]] = []

        def heard(self, said: str, heard: str) -> None:
            self.cuts.append((said, heard))

    chat = Chat.__new__(Chat)
    chat.args = argparse.Namespace(max_turns=0)
    chat.responder = responder = Responder()
    chat.speaker = Speaker("", RATE, fake_sounddevice())
    chat.replies, chat.replies_done, chat.replying = set(), 0, 0
    chat.waiting_audio, chat.reply_scope, chat.epoch = {}, None, 0
    chat.said = SaidReplies(responder.heard)
    session = Session()
    await chat._reply(session, "What is the weather?", float("nan"))
    await chat._reply(session, "Hello", float("nan"))
    reply, hello = ("".join(t for uid, t in sent if uid == u) for u in (5, 6))
    assert reply == "I cannot see outside, but I hope it is sunny where you are. "
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat._frames, session)
        await frames.send(fr.Heard(1, 5, 55_200, len("I cannot see outside,")))
        await frames.send(fr.Heard(1, 6, 150_000, len(hello)))  # (another reply: whole)
        await frames.send(fr.Heard(1, 99, 1_000, 3))  # (not one of ours)
        await frames.aclose()
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("[heard]")] == [
        '[heard] you heard "I cannot see outside," of utterance 5 (21 of 60 characters,'
        " 1.15 s played)"
    ]
    assert len(chat.said) == 0
    assert responder.cuts == [(reply, "I cannot see outside,")]  # (the agent's context)


@pytest.mark.trio
async def test_without_a_card_a_reply_cut_while_its_text_comes_keeps_what_was_sent() -> None:
    """No sound card, so no HEARD: INTERRUPTED's `chars_spoken` is what the context keeps,
    applied once the reply's text stops coming (the barge-in cancels it mid-stream)."""
    import argparse
    from collections.abc import AsyncGenerator

    from duplexd.client.chat import Chat

    frames: trio.MemorySendChannel[Any]
    frames, received = trio.open_memory_channel[Any](8)
    halfway = trio.Event()

    class Responder:
        def __init__(self) -> None:
            self.cuts: list[tuple[str, str]] = []

        async def reply(self, text: str) -> AsyncGenerator[str, None]:
            yield "Once upon a time, "
            yield "there was a lighthouse. "
            halfway.set()
            await trio.sleep_forever()  # (an LLM still thinking)
            yield "never sent"

        def heard(self, said: str, heard: str) -> None:
            self.cuts.append((said, heard))

    class Session:
        sample_rate_hz = RATE

        def new_utterance_id(self) -> int:
            return 3

        async def send_text(self, uid: int, text: str, *, end: bool = False) -> None:
            pass

        def __aiter__(self) -> Any:
            return received

    chat = Chat.__new__(Chat)
    chat.args = argparse.Namespace(max_turns=0)
    chat.responder = responder = Responder()
    chat.speaker = Speaker("", RATE, None)
    assert chat.speaker.kind == "none"
    chat.replies, chat.replies_done, chat.replying = set(), 0, 0
    chat.waiting_audio, chat.reply_scope, chat.epoch = {}, None, 0
    chat.said = SaidReplies(responder.heard)
    session = Session()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chat._reply, session, "Tell me a story.", float("nan"))
        nursery.start_soon(chat._frames, session)
        await halfway.wait()
        await frames.send(fr.Interrupted(1, 3, 48_000, len("Once upon a time,"), 0, True))
        await frames.aclose()
    said = "Once upon a time, there was a lighthouse. "
    assert responder.cuts == [(said, "Once upon a time,")]
    assert len(chat.said) == 0


def test_the_chat_keeps_the_last_replies_texts_and_cuts_each_once() -> None:
    cuts: list[tuple[str, str]] = []
    said = SaidReplies(lambda a, b: cuts.append((a, b)))
    for uid in range(1, 41):
        said.started(uid).extend([f"Reply {uid}, ", "at length."])
        said.ended(uid)
    assert len(said) == 32 and said.text(8) is None and said.text(9) == "Reply 9, at length."
    said.heard_up_to(8, 5)  # (forgotten: nothing to cut)
    said.heard_up_to(9, len("Reply 9, at length. "))  # heard whole: nothing to cut
    said.heard_up_to(10, len("Reply 10,"))
    said.heard_up_to(10, 3)  # (told once)
    said.heard_up_to(11, 0)
    assert cuts == [("Reply 10, at length.", "Reply 10,"), ("Reply 11, at length.", "")]
    assert len(said) == 29
