"""Utterances longer than the ring: the backlog path, and sessions ending mid-backlog."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from harness import open_client, open_pair

from duplexd._ops.settings import SessionLimits
from duplexd.protocol import frames as fr
from duplexd.protocol.state import Phase

pytestmark = pytest.mark.unit

SMALL_RING = SessionLimits(ring_frames=8)  # 160 ms: every utterance overflows it


async def test_an_utterance_longer_than_the_ring_plays_on_the_grid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    arrivals: list[tuple[float, fr.Frame]] = []
    async with open_client(limits=SMALL_RING, on_frame=lambda f, t: arrivals.append((t, f))) as s:
        uid = await s.say("A fairly long sentence for a tiny ring.")
        spoken = await s.receive_utterance(uid)
        stats = await s.stats()
    audio = [(t, f) for t, f in arrivals if isinstance(f, fr.Audio)]
    assert len(audio) == spoken.frames > 8 * 10
    t0 = audio[0][0]
    assert [f.seq for _, f in audio] == list(range(len(audio)))
    assert all(t == t0 + n * 0.020 for n, (t, _) in enumerate(audio))
    assert stats["underruns"] == 0


async def test_interrupt_while_backlogged(autojump_clock: trio.testing.MockClock) -> None:
    async with open_client(limits=SMALL_RING) as s:
        uid = await s.say("Another fairly long sentence that gets interrupted.")
        n = 0
        async for frame in s:
            if isinstance(frame, fr.Audio):
                n += 1
                if n == 30:
                    break
        interrupted = await s.interrupt()
        assert interrupted.utterance_id == uid
        # a new utterance plays normally afterwards, in the new epoch
        uid2 = await s.say("Next.")
        spoken = await s.receive_utterance(uid2)
        assert isinstance(spoken.end, fr.UtteranceDone) and spoken.frames > 0


async def test_client_vanishing_mid_backlog_ends_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The session ends (no hang) when its peer disappears while frames wait for space."""
    async with open_pair(limits=SMALL_RING) as (pair,):
        await pair.send(fr.Hello(), fr.Text(utterance_id=1, text="x" * 200, end=True))
        (welcome,) = await pair.receive()
        assert isinstance(welcome, fr.Welcome)
        await pair.receive()  # the first audio is flowing
        await pair.client.aclose()
        with trio.fail_after(5):
            await pair.done.wait()
        (connection,) = pair.sessions
        assert connection.phase is Phase.CLOSED
        assert pair.pacer.scheduled == 0
