"""Exact virtual-time behaviour of the pacer, writer and session (MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from duplexd import _frames as fr
from duplexd.engines.tone import ToneEngine

from harness import open_client, open_pair

pytestmark = pytest.mark.unit
FRAME_S = 0.020


async def test_frames_leave_at_exact_multiples_of_20_ms(autojump_clock: trio.testing.MockClock) -> None:
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
