"""PLAYED and HEARD (SPEC.md §4.8, §5.11): what reached the speaker, to the word."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from harness import open_client

from duplexd.protocol import frames as fr

pytestmark = pytest.mark.unit
SPC = 2880  # the tone voice: 60 ms a character at 48 kHz
TEXT = "One two three four five six"  # one piece: word k ends at its last character


def heard(samples: int) -> int:
    """Characters of TEXT whose words' tones all lie in the first `samples`."""
    ends = [3, 7, 13, 18, 23, 27]
    return max([e for e in ends if e * SPC <= samples], default=0)


async def next_of(session: object, kind: type) -> object:
    while True:
        frame = await session.receive_frame()  # type: ignore[attr-defined]
        if isinstance(frame, kind):
            return frame


@pytest.mark.parametrize(("k", "played"), [(10, 9_000), (40, 30_000), (60, 50_000), (60, 80_000)])
async def test_heard_counts_the_words_played_whole_after_an_interrupt(
    k: int, played: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_client() as session:
        uid = await session.say(TEXT)
        frames = 0
        while frames < k:
            frames += isinstance(await session.receive_frame(), fr.Audio)
        answer = await session.interrupt()
        assert answer.utterance_id == uid
        await session.send_played(uid, played, clock_us=123, final=True)
        got = await next_of(session, fr.Heard)
    assert isinstance(got, fr.Heard) and got.utterance_id == uid and got.epoch == 0
    assert got.samples_played == min(played, answer.samples_sent)  # never more than sent
    assert got.chars_heard == heard(min(played, answer.samples_sent))
    if played <= k * 960:  # less than left the server: the listener heard less
        assert got.chars_heard <= answer.chars_spoken


async def test_reports_are_answered_only_when_final_and_known(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_client() as session:
        uid = await session.say(TEXT)
        spoken = await session.receive_utterance(uid)
        assert isinstance(spoken.end, fr.UtteranceDone)
        await session.send_played(uid, 10_000)  # not final: recorded, not answered
        await session.send_played(99, 10_000, final=True)  # unknown: ignored
        await session.send_played(uid, spoken.end.samples_sent, final=True)
        got = await next_of(session, fr.Heard)
        assert got == fr.Heard(0, uid, spoken.end.samples_sent, len(TEXT))
        await session.send_played(uid, 10_000, final=True)  # answered once: now forgotten
        with trio.move_on_after(1.0):
            await next_of(session, fr.Heard)
            pytest.fail("a second Heard for the same utterance")


async def test_only_the_last_ended_utterances_are_remembered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_client() as session:
        uids = [await session.say("ab") for _ in range(10)]
        for uid in uids:
            await session.receive_utterance(uid)
        await session.send_played(uids[0], 1, final=True)  # the 1st of 10: forgotten
        await session.send_played(uids[-1], 5760, final=True)
        got = await next_of(session, fr.Heard)
    assert isinstance(got, fr.Heard) and got.utterance_id == uids[-1] and got.chars_heard == 2


async def test_the_fade_tail_does_not_count_as_spoken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 18, deviation 2: cut with the tail at frame 80 of 81, the last word ("six",
    frames 72-80) was not heard whole: 23 characters ("One two three four five"), not 27."""
    async with open_client() as session:
        uid = await session.say(TEXT)
        frames = 0
        while frames < 80:
            frames += isinstance(await session.receive_frame(), fr.Audio)
        answer = await session.interrupt()
    assert answer.utterance_id == uid
    assert answer.samples_sent == 80 * 960 + 240  # 80 whole frames and the tail's 5 ms
    assert answer.chars_spoken == 23 == len("One two three four five")


async def test_heard_of_the_playing_utterance_is_never_more_than_was_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A final report on the utterance still playing: capped at the frames sent so far."""
    async with open_client() as session:
        uid = await session.say(TEXT)
        frames = 0
        while frames < 30:
            frames += isinstance(await session.receive_frame(), fr.Audio)
        await session.send_played(uid, 10**9, final=True)  # claims far more than it got
        got = await next_of(session, fr.Heard)
    assert isinstance(got, fr.Heard) and got.utterance_id == uid
    assert 30 * 960 <= got.samples_played <= 32 * 960  # what had left by then
    assert got.chars_heard == heard(got.samples_played) < len(TEXT)
