"""`{"downlink": {"paced": false}}` in Hello.options (SPEC §4.6.2): every frame goes out as soon
as it is synthesized, in order, with its UtteranceStarted and UtteranceDone; a barge-in still
cuts it; a paced session beside it keeps its 20 ms grid. On the MockClock."""

from __future__ import annotations

import itertools
import json

import pytest
import trio
import trio.testing
from harness import open_pair

from duplexd._ops.settings import SessionLimits
from duplexd.protocol import frames as fr

pytestmark = pytest.mark.unit
UNPACED = fr.Hello(options=json.dumps({"downlink": {"paced": False}}))
TEXT = "Hello there, how are you today?"  # tone: ~1.9 s of audio, ~90 frames
LIMITS = SessionLimits(ring_frames=64, idle_timeout_s=86_400.0, resume_window_s=0.0)


async def utterance(pair: object, hello: fr.Hello) -> tuple[list[fr.Audio], list[float], float]:
    """Hello, speak TEXT; the audio frames, when each arrived, and when it started."""
    await pair.send(hello)  # type: ignore[attr-defined]
    (welcome,) = await pair.receive()  # type: ignore[attr-defined]
    assert isinstance(welcome, fr.Welcome)
    t0 = trio.current_time()
    await pair.send(fr.Text(1, TEXT, end=True))  # type: ignore[attr-defined]
    audio: list[fr.Audio] = []
    times: list[float] = []
    while True:
        frames = await pair.receive()  # type: ignore[attr-defined]
        for f in frames:
            if isinstance(f, fr.Audio):
                audio.append(f)
                times.append(trio.current_time())
        if any(isinstance(f, fr.UtteranceDone) for f in frames):
            return audio, times, t0


async def test_unpaced_audio_comes_as_fast_as_it_is_made(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_pair(limits=LIMITS, sessions=2) as (unpaced, paced):
        fast, fast_times, t0 = await utterance(unpaced, UNPACED)
        slow, slow_times, _ = await utterance(paced, fr.Hello())
    assert [f.seq for f in fast] == list(range(len(slow))) == [f.seq for f in slow]
    assert [f.pcm for f in fast] == [f.pcm for f in slow]  # the same audio
    assert fast[-1].last and slow[-1].last
    assert fast_times[-1] - t0 == 0.0  # (the test's synthesis takes no virtual time)
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(slow_times[1:])}
    assert gaps == {0.02}  # the paced one beside it: on its grid


async def test_a_barge_in_cuts_unpaced_audio_too(autojump_clock: trio.testing.MockClock) -> None:
    async with open_pair(limits=LIMITS) as (pair,):
        await pair.send(UNPACED)
        await pair.receive()
        await pair.send(fr.Text(1, TEXT * 20, end=True))  # longer than the ring and a piece
        while not any(isinstance(f, fr.Audio) for f in await pair.receive()):
            pass
        await pair.send(fr.Interrupt())
        frames: list[fr.Frame] = []
        while not any(isinstance(f, fr.Interrupted) for f in frames):
            frames += await pair.receive()
        interrupted = next(f for f in frames if isinstance(f, fr.Interrupted))
        assert interrupted.utterance_id == 1 and interrupted.samples_sent > 0
        await pair.send(fr.Ping(7))
        after: list[fr.Frame] = []
        while not any(isinstance(f, fr.Pong) for f in after):
            after += await pair.receive()
        assert not [f for f in after if isinstance(f, fr.Audio) and f.epoch == 0]  # nothing old


def test_the_option_is_checked() -> None:
    from duplexd.protocol.codec import RemoteProtocolError
    from duplexd.protocol.options import parse_options

    assert parse_options('{"downlink": {"paced": false}}').downlink.paced is False
    assert parse_options("").downlink.paced is True
    for bad in ('{"downlink": {"paced": 0}}', '{"downlink": []}'):
        with pytest.raises(RemoteProtocolError, match=r"options\.downlink"):
            parse_options(bad)
