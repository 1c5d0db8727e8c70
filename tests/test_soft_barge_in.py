"""Soft barge-in (`vad.barge_in_mode: "soft"`, SPEC.md §4.6.1, §5.12): the decision on its
own, then end to end on a real Session (MockClock, the real VAD, the real Whisper run inline so
virtual time stands still while it decodes, the VITS voice on both sides)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from harness import inline_uplink_services, open_pair
from test_duplex_session import AGENT, Client, utterance_end, wait_for

from duplexd._uplink.asr import Transcriber
from duplexd._uplink.soft import Settled, SoftBargeIn, WordsCheck, is_backchannel
from duplexd._uplink.vad import WINDOW
from duplexd._uplink.window import Heard
from duplexd.client.session import ClientSession, session_over
from duplexd.protocol import frames as fr
from duplexd.protocol.codec import RemoteProtocolError
from duplexd.protocol.options import DEFAULT_BACKCHANNELS, VadOptions, parse_options

Outcome, Reason = fr.BargeInOutcome, fr.BargeInReason
MS = 16  # 16 kHz samples per ms


# --------------------------------------------------------------------------- the decision


def soft(transcripts: bool = True, **kw: Any) -> SoftBargeIn:
    return SoftBargeIn(VadOptions(barge_in_mode="soft", **kw), transcripts=transcripts)


def run(s: SoftBargeIn, pattern: str, start: int) -> tuple[int, Settled | WordsCheck | None]:
    """Feed windows ("s" speech, "." silence) from `start`; the first decision and its window."""
    pos = start
    for ch in pattern:
        got = s.window(pos, ch == "s")
        if got is not None:
            return pos, got
        pos += WINDOW
    return pos, None


def test_backchannel_words() -> None:
    bc = DEFAULT_BACKCHANNELS
    for text in ("Mm-hmm.", "Yeah.", "Yeah, okay.", "MMM.", "Got it.", "Uh-huh", " Right! "):
        assert is_backchannel(text, bc), text
    for text in ("Wait, stop.", "No.", "Hold on.", "Yeah, but no.", "Okay, stop."):
        assert not is_backchannel(text, bc), text
    # an allowed hyphenated word cut short past its hyphen ("Uh-" is "uh" already)
    for text in ("Uh-h", "Uh-hu.", "Uh-"):
        assert is_backchannel(text, bc), text
        assert not is_backchannel(text, ("yeah", "okay")), text
    for text in ("Uh-oh.", "Uh-huh-no", "Mm-mm."):  # (not a cut "uh-huh"; a hummed "no")
        assert not is_backchannel(text, bc), text
    assert is_backchannel("Stop.", ("stop",))
    assert is_backchannel("", bc)  # no words at all: nothing that takes the turn
    # a hum, however Whisper spells it, where the list allows hums; not where it does not
    # (spelled letter by letter too, the letters together one hum: "N M M." is "nmm")
    for text in ("MmMmM.", "M-H-M.", "Mmmmm", "Hmmm?", "Mhmm.", "Mm-hmm-hmm.", "M h m.", "N Mm."):
        assert is_backchannel(text, bc), text
        assert not is_backchannel(text, ("yeah", "okay")), text
    # not hums: "no" hummed, a clipped "no" (alone or twice), hums with words
    for text in (
        "Mm-mm.",
        "Nn-nn.",
        "N.",
        "N n.",
        "N Mm-mm.",
        "Mm, no.",
        "Hmm, wait.",
        "MMO.",
        "Hm, stop",
    ):
        assert not is_backchannel(text, bc), text


def test_a_short_sound_resumes_without_asking() -> None:
    s = soft()
    s.start(1000, 1000 + 3 * WINDOW)  # ~96 ms of speech, then silence: under 150 ms
    pos, got = run(s, "." * 10, 1000 + 3 * WINDOW)
    assert got == Settled(1000, True, Reason.TOO_SHORT)
    assert pos == 1000 + 3 * WINDOW + 6 * WINDOW  # the window that completes 200 ms of silence
    assert not s.open


def test_a_longer_sound_asks_for_its_words_then_decides_on_them() -> None:
    s = soft()
    s.start(4800, 4800 + WINDOW)
    _, got = run(s, "sssss" + "." * 10, 4800 + WINDOW)
    assert isinstance(got, WordsCheck)
    silence = 4800 + 6 * WINDOW
    assert (got.start, got.end, got.stop) == (4800 - 150 * MS, silence + 150 * MS, silence)
    assert s.answer(got.id, "Mm-hmm.") == Settled(4800, True, Reason.BACKCHANNEL, "Mm-hmm.")
    for text, resume, reason in (
        (" ", True, Reason.NO_WORDS),
        ("Wait, stop.", False, Reason.WORDS),
    ):
        s.start(4800, 4800 + WINDOW)
        _, check = run(s, "sssss" + "." * 10, 4800 + WINDOW)
        assert isinstance(check, WordsCheck)
        assert s.answer(check.id, text) == Settled(4800, resume, reason, text.strip())


def test_an_answer_is_stale_once_the_user_speaks_on() -> None:
    s = soft()
    s.start(0, WINDOW)
    pos, check = run(s, "sssss" + "." * 7, WINDOW)
    assert isinstance(check, WordsCheck)
    assert s.window(pos + WINDOW, True) is None  # speaks again before the answer
    assert s.answer(check.id, "Yeah.") is None
    assert s.open
    _, again = run(s, "." * 7, pos + 2 * WINDOW)
    assert isinstance(again, WordsCheck) and again.id != check.id
    assert s.answer(again.id, "Okay.") is not None


def test_long_speech_and_the_window_commit() -> None:
    s = soft(soft_max_speech_ms=500)
    s.start(0, WINDOW)
    pos, got = run(s, "s" * 40, WINDOW)
    assert got == Settled(0, False, Reason.LONG)
    assert pos + WINDOW - 0 >= 500 * MS > pos  # the window that reached 500 ms of speech
    s = soft(soft_window_ms=1000)  # speech on and off, never long enough, never decided
    s.start(0, WINDOW)
    _, got = run(s, "ss...." * 20, WINDOW)
    assert got == Settled(0, False, Reason.TIMEOUT)


def test_without_transcripts_a_sound_that_is_not_short_commits() -> None:
    s = soft(transcripts=False)
    s.start(0, WINDOW)
    _, got = run(s, "sssss" + "." * 10, WINDOW)
    assert got == Settled(0, False, Reason.UNHEARD)


def test_soft_options() -> None:
    vad = parse_options(
        json.dumps({"vad": {"barge_in_mode": "soft", "backchannels": ["Mhm", "yes please"]}})
    ).vad
    assert vad.barge_in_mode == "soft" and vad.backchannels == ("mhm", "yes please")
    assert parse_options("").vad.barge_in_mode == "immediate"
    for bad in (
        {"barge_in_mode": "gentle"},
        {"barge_in_mode": 1},
        {"backchannels": "mhm"},
        {"backchannels": ["ok", 3]},
        {"backchannels": [""]},
        {"backchannels": ["x" * 33]},
        {"backchannels": ["a"] * 65},
        {"soft_window_ms": 50},
    ):
        with pytest.raises(RemoteProtocolError) as err:
            parse_options(json.dumps({"vad": bad}))
        assert err.value.error_code is fr.ErrorCode.BAD_OPTIONS


# --------------------------------------------------------------------------- end to end


class InlineTranscriber(Transcriber):
    """The real Whisper, run on the trio thread: a MockClock stands still while it decodes (in
    the daemon it runs in a worker thread, and the audio keeps flowing meanwhile)."""

    async def hear(
        self,
        audio: Any,
        prompt: str | None = None,
        cut_loops: bool = False,
        end_mark: bool = False,
        wanted: Any = None,
    ) -> Heard:
        await trio.lowlevel.checkpoint()
        return self.hear_sync(audio, prompt, cut_loops, end_mark, wanted)


_TRANSCRIBER: list[Transcriber] = []


def transcriber() -> Transcriber:
    if not _TRANSCRIBER:
        _TRANSCRIBER.append(InlineTranscriber(cpu_threads=2))
    return _TRANSCRIBER[0]


def soft_hello(**vad: Any) -> fr.Hello:
    vad = {"barge_in_mode": "soft", **vad}
    return fr.Hello(sample_rate_hz=48_000, uplink_rate_hz=16_000, options=json.dumps({"vad": vad}))


class Mic:
    """The user's microphone: silence, and `say(clip)` plays a clip from the next frame."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.clip = np.zeros(0, dtype=np.float32)
        self.at = 0

    def say(self, clip: np.ndarray) -> int:
        self.clip, self.at = clip, self.client.seq * 320
        return self.at

    def __call__(self, k: int) -> np.ndarray:
        out = np.zeros(320, dtype=np.float32)
        lo = k * 320 - self.at
        if 0 <= lo < len(self.clip):
            part = self.clip[lo : lo + 320]
            out[: len(part)] = part
        return out


def audio_of(client: Client, uid: int) -> list[fr.Audio]:
    return [f for _, f in client.frames_of(fr.Audio) if f.utterance_id == uid]


async def speak_over_agent(
    session: ClientSession, client: Client, mic: Mic, text: str, agent: str
) -> tuple[int, int, float]:
    """Start an utterance; 0.5 s into its audio the user says `text`. Returns the uid, the
    arrivals mark before it, and the time of the user's speech onset."""
    from bench.speech import clip, onset

    user = clip(text, other_speaker=True)
    mark = len(client.arrivals)
    uid = await session.say(agent)
    await wait_for(client, lambda f: isinstance(f, fr.UtteranceStarted), mark)
    await trio.sleep(0.5)
    at = mic.say(user)
    return uid, mark, client.sample_time(at + onset(user))


@contextlib.asynccontextmanager
async def soft_session(**vad: Any) -> AsyncIterator[tuple[ClientSession, Client, Mic]]:
    """A soft barge-in session on a real Session (the VITS voice at 48 kHz), its client and
    its microphone streaming (silence until `mic.say`)."""
    from bench.speech import engine

    services = inline_uplink_services(transcriber())
    async with open_pair(engine(), uplink_services=services) as (pair,):
        client = Client()
        client.downlink_rate = 48_000
        hello = soft_hello(**vad)
        async with session_over(pair.client, hello, on_frame=client.on_frame) as session:
            client.t0 = trio.current_time()
            mic = Mic(client)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.uplink, session, mic)
                yield session, client, mic
                nursery.cancel_scope.cancel()


def barge_ins(client: Client, mark: int) -> list[tuple[float, fr.BargeIn]]:
    return [(t, f) for t, f in client.arrivals[mark:] if isinstance(f, fr.BargeIn)]


@pytest.mark.integration
async def test_a_backchannel_holds_the_audio_then_it_goes_on_where_it_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with soft_session() as (session, client, mic):
        for i, text in enumerate(("Yeah.", "Mm-hmm.", "Okay.")):
            uid, mark, t_onset = await speak_over_agent(session, client, mic, text, AGENT[i])
            done = await utterance_end(client, uid, mark)
            assert isinstance(done, fr.UtteranceDone), (text, barge_ins(client, mark))
            (t_held, held), (t_res, resumed) = barge_ins(client, mark)
            assert held.outcome is Outcome.HELD and held.utterance_id == uid
            assert resumed.outcome is Outcome.RESUMED, (text, resumed)
            assert resumed.reason in (Reason.BACKCHANNEL, Reason.NO_WORDS)
            assert resumed.samples_sent == held.samples_sent > 0
            assert t_held - t_onset <= 0.1  # the audio stopped as fast as a cut
            frames = audio_of(client, uid)
            # nothing lost, nothing twice: every frame once, in order, to the END
            assert [f.seq for f in frames] == list(range(len(frames)))
            assert frames[-1].last
            assert done.samples_sent > held.samples_sent
            # while held, no audio went out
            sent_at = [t for t, f in client.arrivals[mark:] if isinstance(f, fr.Audio)]
            assert not [t for t in sent_at if t_held < t < t_res]
            await trio.sleep(1.0)
    # the backchannels were turns of their own, transcribed as such
    texts = [f.text for _, f in client.frames_of(fr.Transcript)]
    assert len(texts) == 3


@pytest.mark.integration
async def test_words_that_are_not_a_backchannel_interrupt_at_the_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with soft_session() as (session, client, mic):
        for i, text in enumerate(("Wait, stop, I want a pizza please.", "Hold on.")):
            uid, mark, t_onset = await speak_over_agent(session, client, mic, text, AGENT[i])
            with trio.move_on_after(20):
                await wait_for(client, lambda f: isinstance(f, fr.Interrupted), mark)
            events = [f for _, f in client.arrivals[mark:] if not isinstance(f, fr.Audio)]
            inter = next((f for f in events if isinstance(f, fr.Interrupted)), None)
            assert inter is not None, (text, events)
            (t_held, held), (_, committed) = barge_ins(client, mark)
            assert held.outcome is Outcome.HELD and t_held - t_onset <= 0.1
            assert committed.outcome is Outcome.COMMITTED, (text, committed)
            assert committed.reason in (Reason.WORDS, Reason.LONG)
            # INTERRUPTED counts what was sent before the hold, and nothing came after
            assert inter.vad and inter.utterance_id == uid
            assert inter.samples_sent == held.samples_sent
            sent = sum(len(f.pcm) // 2 for f in audio_of(client, uid))
            assert sent == held.samples_sent
            await wait_for(client, lambda f: isinstance(f, fr.Transcript), mark)


@pytest.mark.integration
async def test_an_interrupt_or_a_pause_during_a_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with soft_session() as (session, client, mic):
        # the client interrupts while the audio is held: the hold ends, no BARGE_IN
        uid, mark, _ = await speak_over_agent(session, client, mic, "Yeah.", AGENT[0])
        await wait_for(client, lambda f: isinstance(f, fr.BargeIn), mark)
        await session.interrupt()
        inter = await wait_for(client, lambda f: isinstance(f, fr.Interrupted), mark)
        assert not inter.vad and inter.utterance_id == uid
        await trio.sleep(2.0)
        assert [f.outcome for _, f in barge_ins(client, mark)] == [Outcome.HELD]
        # ... and the next utterance plays at once
        mark = len(client.arrivals)
        uid2 = await session.say(AGENT[1])
        done = await wait_for(client, lambda f: isinstance(f, fr.UtteranceDone), mark)
        assert done.utterance_id == uid2
        # PAUSE during a hold: the backchannel resumes nothing until RESUME
        uid3, mark, _ = await speak_over_agent(session, client, mic, "Okay.", AGENT[2])
        await wait_for(client, lambda f: isinstance(f, fr.BargeIn), mark)
        await session.pause()
        resumed = await wait_for(
            client,
            lambda f: isinstance(f, fr.BargeIn) and f.outcome is not Outcome.HELD,
            mark,
        )
        assert resumed.outcome is Outcome.RESUMED
        n = len(audio_of(client, uid3))
        await trio.sleep(1.0)
        assert len(audio_of(client, uid3)) == n  # still paused by the client
        await session.resume()
        done = await wait_for(client, lambda f: isinstance(f, fr.UtteranceDone), mark)
        assert done.utterance_id == uid3
        frames = audio_of(client, uid3)
        assert [f.seq for f in frames] == list(range(len(frames)))


@pytest.mark.integration
async def test_noises_over_the_agent_never_interrupt_in_soft_mode(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from bench.backchannels import NOISES, noise
    from bench.speech import engine

    services = inline_uplink_services(transcriber())
    async with open_pair(engine(), uplink_services=services) as (pair,):
        client = Client()
        client.downlink_rate = 48_000
        async with session_over(pair.client, soft_hello(), on_frame=client.on_frame) as session:
            client.t0 = trio.current_time()
            mic = Mic(client)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.uplink, session, mic)
                for i, name in enumerate(NOISES):
                    mark = len(client.arrivals)
                    uid = await session.say(AGENT[i % len(AGENT)])
                    await wait_for(client, lambda f: isinstance(f, fr.UtteranceStarted), mark)
                    await trio.sleep(0.5)
                    mic.say(noise(name))
                    done = await utterance_end(client, uid, mark)
                    assert isinstance(done, fr.UtteranceDone), (name, barge_ins(client, mark))
                    # held or not (silero hears most noises as no speech at all), it went on
                    outcomes = [f.outcome for _, f in barge_ins(client, mark)]
                    assert outcomes in ([], [Outcome.HELD, Outcome.RESUMED]), (name, outcomes)
                nursery.cancel_scope.cancel()
