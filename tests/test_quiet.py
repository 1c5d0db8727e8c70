"""Where the voice fell quiet (quiet.py), and the detector counting a silence from there.

silero-vad hears the end of speech 120-260 ms late; the detector backdates the silence it
hears to where the level fell (at most `MAX_BACKDATE_MS`, never before the turn began). The
tracker on made-up levels (exact block positions), then on the bench's real speech.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from duplexd._uplink.quiet import BLOCK_SAMPLES, QuietTracker
from duplexd._uplink.vad import (
    MAX_BACKDATE_MS,
    SPECULATE_MS,
    WINDOW,
    BargeIn,
    Speculate,
    SpeechDetector,
    SpeechStop,
    Turn,
    VadEvent,
)
from duplexd.protocol.options import VadOptions

RATE = 16_000
MS = RATE // 1000
BLOCKS = WINDOW // BLOCK_SAMPLES


def tone(n: int, db: float) -> np.ndarray:
    """`n` samples of a 200 Hz sine at `db` dBFS RMS."""
    t = np.arange(n) / RATE
    return (np.sqrt(2) * 10 ** (db / 20) * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


def follow(tracker: QuietTracker, audio: np.ndarray) -> list[int | None]:
    """`quiet_since` at the end of each window of `audio`."""
    return [tracker.window(i, audio[i : i + WINDOW]) for i in range(0, len(audio), WINDOW)]


@pytest.mark.unit
def test_quiet_since_is_the_first_quiet_block_after_the_voice() -> None:
    noise = np.random.default_rng(1).normal(0.0, 1e-3, 40 * WINDOW).astype(np.float32)  # -60
    audio = noise.copy()
    voice_end = 10 * WINDOW + 3 * BLOCK_SAMPLES  # mid-window, on a block boundary
    audio[4 * WINDOW : voice_end] += tone(voice_end - 4 * WINDOW, -20.0)
    got = follow(QuietTracker(), audio)
    assert got[1:4] == [0] * 3  # the room before the voice (its first block is the floor)
    assert got[4:10] == [None] * 6  # the voice: never quiet
    assert got[10:] == [voice_end] * 30  # from the block after the voice, for good


@pytest.mark.unit
def test_a_voice_fading_out_is_quiet_only_35_db_under_its_peak() -> None:
    rng = np.random.default_rng(6)
    quiet = rng.normal(0.0, 10 ** (-75 / 20), 8 * WINDOW).astype(np.float32)  # a quiet room
    fade = np.concatenate([tone(4 * BLOCK_SAMPLES, db) for db in (-20, -40, -54, -56)])
    audio = np.concatenate([quiet, tone(8 * WINDOW, -20.0), fade, quiet])
    since = follow(QuietTracker(), audio)[-1]
    assert since == 16 * WINDOW + 3 * 4 * BLOCK_SAMPLES  # -56 dB: more than 35 dB under -20


@pytest.mark.unit
def test_in_a_loud_room_only_a_level_near_the_noise_floor_is_quiet() -> None:
    rng = np.random.default_rng(2)
    room = rng.normal(0.0, 10 ** (-40 / 20), 60 * WINDOW).astype(np.float32)  # -40 dBFS
    audio = room.copy()
    audio[20 * WINDOW : 30 * WINDOW] += tone(10 * WINDOW, -20.0)
    audio[30 * WINDOW : 34 * WINDOW] += tone(4 * WINDOW, -33.0)  # the voice trails off: heard
    got = follow(QuietTracker(), audio)
    assert got[29:34] == [None] * 5
    assert got[34:] == [34 * WINDOW] * 26


def feed(
    det: SpeechDetector, probs: list[float], quiet: list[int | None]
) -> list[tuple[int, VadEvent]]:
    out = []
    for i, (p, q) in enumerate(zip(probs, quiet, strict=True)):
        events = det.process(i * WINDOW, p, 0.5, q)
        out.extend(((i + 1) * WINDOW, ev) for ev in events if not isinstance(ev, BargeIn))
    return out


SPEECH = [0.9] * 20
LAG = [0.9] * 6  # silero still hears speech 192 ms into the silence
QUIET_AT = 20 * WINDOW + BLOCK_SAMPLES  # the voice fell quiet one block into window 20


@pytest.mark.unit
def test_a_silence_counts_from_where_the_voice_fell_quiet() -> None:
    det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=400.0), speculate=True)
    quiet = [None] * 20 + [QUIET_AT] * 20
    events = feed(det, SPEECH + LAG + [0.0] * 14, quiet)
    heard = 26 * WINDOW  # silero's first silent window
    (when_pad, padded), (when_heard, again), (when, stop), (_, turn) = [
        (t, e) for t, e in events if isinstance(e, Speculate | SpeechStop | Turn)
    ]
    # speculated on once the voice had been quiet the pad (the quiet line alone: not at
    # SPECULATE_MS, as it may cut a word's quiet tail in a noisy room), before silero heard
    # it, and once more when silero did (the same silence: made once, `quiet` ones only when
    # idle)
    pad_at = -(-(QUIET_AT + 150 * MS) // WINDOW) * WINDOW
    assert pad_at < heard
    assert padded == Speculate(0, pad_at, QUIET_AT, True, True) and when_pad == pad_at
    assert again == Speculate(0, heard + WINDOW, QUIET_AT, padded=True)
    assert when_heard == heard + WINDOW
    assert stop == SpeechStop(QUIET_AT)
    assert when == -(-(QUIET_AT + 400 * MS) // WINDOW) * WINDOW  # 400 ms after QUIET_AT
    # the transcript's audio still goes on to where silero heard the silence, + the pad
    assert turn == Turn(0, heard + 150 * MS, stop=QUIET_AT)


@pytest.mark.unit
def test_a_quiet_the_voice_goes_on_after_is_speculated_on_once_and_the_end_again() -> None:
    det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=300.0), speculate=True)
    pause = 20 * WINDOW  # the voice quiet for 5 windows (160 ms), silero hearing speech
    quiet = [None] * 20 + [pause] * 5 + [None] * 10 + [35 * WINDOW] * 20
    events = feed(det, SPEECH + [0.9] * 15 + LAG + [0.0] * 14, quiet)
    specs = [(e.stop, e.quiet, e.padded) for _, e in events if isinstance(e, Speculate)]
    assert specs == [  # (the quiet line alone: at the pad; the pause lasted 160 ms)
        *[(pause, True, True), (35 * WINDOW, True, True), (35 * WINDOW, False, True)],
    ]
    (stop,) = [e for _, e in events if isinstance(e, SpeechStop)]
    assert stop == SpeechStop(35 * WINDOW)


@pytest.mark.unit
def test_backdating_is_bounded_and_never_reaches_before_the_turn() -> None:
    long_ago = 5 * WINDOW  # a level quiet since long before silero's silence (a quiet voice)
    det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=300.0))
    events = feed(det, SPEECH + LAG + [0.0] * 14, [None] * 5 + [long_ago] * 35)
    (stop,) = [e for _, e in events if isinstance(e, SpeechStop)]
    assert stop == SpeechStop(26 * WINDOW - round(MAX_BACKDATE_MS * MS))
    # quiet since before the turn's speech began: the silence starts where silero heard it
    det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=300.0))
    events = feed(det, [0.0] * 4 + SPEECH + [0.0] * 14, [WINDOW] * 38)
    (stop,) = [e for _, e in events if isinstance(e, SpeechStop)]
    assert stop == SpeechStop(24 * WINDOW)


@pytest.mark.integration
def test_on_the_bench_speech_the_quiet_is_where_the_envelope_ends() -> None:
    from bench.speech import clip
    from bench.turns import speech_end

    rng = np.random.default_rng(3)
    for text in ("What time does the last train leave tonight?", "Thank you."):
        voice = clip(text)
        audio = np.concatenate((voice, np.zeros(RATE // 2, np.float32)))
        audio += rng.normal(0.0, 1e-3, len(audio)).astype(np.float32)
        audio = audio[: len(audio) // WINDOW * WINDOW]
        since = follow(QuietTracker(), audio)[-1]
        # (VITS ends a sentence with 30-50 ms of breath at -50..-54 dBFS: the voice's)
        assert since is not None and 0 <= since - speech_end(voice) < 40 * MS, text


@pytest.mark.integration
async def test_the_turn_model_is_asked_ahead_and_its_answer_ends_the_turn_in_time(
    autojump_clock: object,
) -> None:
    """A real Session (MockClock, the model inline): the model is asked once, when the voice
    has been quiet 150 ms (the pad); the end check at 200 ms of silence takes that answer."""
    from harness import inline_uplink_services
    from test_turn_end import shared_turn_model, speak

    from bench.speech import clip
    from duplexd.protocol import frames as fr

    services = inline_uplink_services(turn_model=shared_turn_model())
    speech = clip("What time does the last train leave tonight?")
    client, stats = await speak(speech, services, noise_seed=5)
    stops = [f for _, f in client.arrivals if isinstance(f, fr.SpeechStopped)]
    assert len(stops) == 1
    assert (stats["end_checks"], stats["end_checks_ahead"]) == (1, 1), stats


class _Decodes:
    """A transcriber test double: counts decodes, answers at once; `busy` as set."""

    def __init__(self) -> None:
        self.busy = False
        self.decoded: list[int] = []
        self.unwanted: list[int] = []  # decodes whose text was no longer wanted
        self.asked: list[tuple[str | None, bool]] = []  # each decode's (prompt, cut_loops)
        self.language = "en"

    async def hear(
        self,
        audio: np.ndarray,
        prompt: str | None = None,
        cut_loops: bool = False,
        end_mark: bool = False,
        wanted: Any = None,
    ) -> Any:
        from duplexd._uplink.window import Heard, Unwanted

        if wanted is not None and not wanted():  # (as after the encoder)
            self.unwanted.append(len(audio))
            raise Unwanted
        self.decoded.append(len(audio))
        self.asked.append((prompt, cut_loops))
        return Heard("Hello.", 0.9 if end_mark else None)


def _transcripts(
    double: _Decodes,
    counters: Any,
    heard: Callable[[int, str], None] = lambda c, t: None,
    send: Callable[[Any], None] = lambda frame: None,
) -> Any:
    """A session's `Transcripts` on `double`, the audio zeros, its frames to `send`."""
    from duplexd._uplink.transcripts import Transcripts

    return Transcripts(
        double,  # type: ignore[arg-type]
        counters=counters,
        scale=1,
        audio=lambda a, b: np.zeros(b - a, np.float32),
        send=send,
        heard=heard,
    )


@pytest.mark.unit
async def test_a_silence_is_transcribed_ahead_once_and_the_levels_only_when_idle() -> None:
    import trio
    import trio.testing

    from duplexd._uplink.counters import UplinkCounters

    double = _Decodes()
    counters = UplinkCounters()
    words = _transcripts(double, counters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(words.run)
        words.speculate(Speculate(0, 16_000, 14_000, quiet=True))  # the level's
        words.speculate(Speculate(0, 17_000, 14_000))  # silero's, the same silence: its
        assert (await words.speculated(14_000)).text == "Hello."  # audio, as not started yet
        assert double.decoded == [17_000]
        words.speculate(Speculate(0, 18_000, 14_000))  # made: it stands
        words.speculate(Speculate(0, 30_000, 28_000, quiet=True))
        await trio.testing.wait_all_tasks_blocked()  # (made)
        words.speculate(Speculate(0, 31_000, 28_000))  # silero's, after the level's was made
        assert (await words.speculated(28_000)).text == "Hello."
        assert words.speculated_now(28_000) == (await words.speculated(28_000))  # made: no wait
        assert words.speculated_now(14_000) is None  # (not the latest made)
        assert double.decoded == [17_000, 30_000]  # once each
        double.busy = True
        words.speculate(Speculate(0, 40_000, 38_000, quiet=True))  # busy: not worth a decode
        assert counters.speculations_skipped == 1
        assert await words.speculated(38_000) is None
        words.speculate(Speculate(0, 41_000, 38_000))  # silero's: always
        assert (await words.speculated(38_000)).text == "Hello."
        assert double.decoded == [17_000, 30_000, 41_000]
        nursery.cancel_scope.cancel()


class _GatedDecodes(_Decodes):
    """`_Decodes` whose decodes wait for `gate` first (their encoder, as it were)."""

    def __init__(self) -> None:
        super().__init__()
        import trio

        self.gate = trio.Event()

    async def hear(self, audio: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        await self.gate.wait()
        return await super().hear(audio, *args, **kwargs)


@pytest.mark.unit
async def test_a_later_silence_of_the_turn_makes_the_speculation_in_flight_moot() -> None:
    """The closure before a last "k" begins a silence, its speculative transcript begins;
    the "k" and the real silence follow before that decode is done: its decoder is not run
    (the turn cannot end at its silence), and the real one is decoded next. A later silence
    of another turn leaves the one in flight alone (its turn may end there)."""
    import trio
    import trio.testing

    from duplexd._uplink.counters import UplinkCounters

    double = _GatedDecodes()
    counters = UplinkCounters()
    words = _transcripts(double, counters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(words.run)
        words.speculate(Speculate(0, 16_000, 14_000))  # the closure before "k"
        await trio.testing.wait_all_tasks_blocked()  # (its decode begun)
        words.speculate(Speculate(0, 18_000, 16_000))  # after the "k"
        double.gate.set()
        assert await words.speculated(14_000) is None  # moot: no text
        assert (await words.speculated(16_000)).text == "Hello."
        assert double.unwanted == [16_000] and double.decoded == [18_000]
        assert counters.speculations_moot == 1 and counters.speculations == 1
        double.gate = trio.Event()
        words.speculate(Speculate(0, 30_000, 28_000))
        await trio.testing.wait_all_tasks_blocked()
        words.speculate(Speculate(40_000, 60_000, 58_000))  # another turn's
        double.gate.set()
        assert (await words.speculated(58_000)).text == "Hello."
        assert double.decoded == [18_000, 30_000, 20_000]  # both made
        assert counters.speculations_moot == 1
        nursery.cancel_scope.cancel()


@pytest.mark.unit
async def test_the_turn_model_is_busy_while_any_session_asks_it() -> None:
    from duplexd._uplink.services import UplinkServices

    services = UplinkServices.create(None, threads=1)  # type: ignore[arg-type]
    assert not services.turn_busy() and services.turn_limiter is not None
    await services.turn_limiter.acquire_on_behalf_of("a question")
    assert services.turn_busy()
    services.turn_limiter.release_on_behalf_of("a question")
    assert not services.turn_busy()
    inline = UplinkServices(vad_model=None, offload=None)  # type: ignore[arg-type]
    assert not inline.turn_busy()  # tests' inline services: never busy


@pytest.mark.integration
async def test_with_speculation_off_the_turn_is_judged_ahead_but_not_transcribed(
    autojump_clock: object,
) -> None:
    import json

    import trio
    from harness import inline_uplink_services, open_pair
    from test_duplex_session import Client
    from test_soft_barge_in import transcriber
    from test_turn_end import shared_turn_model

    from bench.speech import clip
    from duplexd.client.session import session_over
    from duplexd.protocol import frames as fr

    services = inline_uplink_services(transcriber(), turn_model=shared_turn_model())
    speech = clip("What time does the last train leave tonight?")
    mic = np.zeros(RATE // 2 + len(speech) + 2 * RATE, dtype=np.float32)
    mic[RATE // 2 : RATE // 2 + len(speech)] = speech
    mic += np.random.default_rng(5).normal(0.0, 1e-3, len(mic)).astype(np.float32)
    options = json.dumps({"asr": {"speculate": False}})
    hello = fr.Hello(sample_rate_hz=16_000, uplink_rate_hz=16_000, options=options)
    async with open_pair(uplink_services=services) as (pair,):
        client = Client()
        over = session_over(pair.client, hello, on_frame=client.on_frame)
        async with over as session, trio.open_nursery() as nursery:
            nursery.start_soon(client.uplink, session, lambda k: mic[k * 320 : (k + 1) * 320])
            await trio.sleep(len(mic) / RATE - 0.1)
            stats = await session.stats()
            nursery.cancel_scope.cancel()
    assert len(client.frames_of(fr.Transcript)) == 1  # the final, decoded at the end
    assert stats["asr_speculations"] == 0  # the client said no
    assert (stats["end_checks"], stats["end_checks_ahead"]) == (1, 1)


@pytest.mark.unit
def test_a_gap_of_digital_silence_is_quiet_but_not_the_rooms_floor() -> None:
    rng = np.random.default_rng(4)
    room = rng.normal(0.0, 10 ** (-45 / 20), 60 * WINDOW).astype(np.float32)  # -45 dBFS
    audio = room.copy()
    audio[10 * WINDOW : 20 * WINDOW] = 0.0  # the uplink's gap, filled with zeros
    audio[30 * WINDOW : 40 * WINDOW] += tone(10 * WINDOW, -15.0)
    got = follow(QuietTracker(), audio)
    assert got[19] is not None and got[19] <= 10 * WINDOW + BLOCK_SAMPLES  # zeros: quiet
    assert got[30:40] == [None] * 10  # the voice
    # the room after the voice is quiet again at once: its floor is the room's, not -100 dB
    assert all(since is not None and 40 * WINDOW <= since < 41 * WINDOW for since in got[41:])


@pytest.mark.unit
def test_the_level_is_certain_only_with_the_voice_30_db_over_the_floor() -> None:
    rng = np.random.default_rng(7)
    for room_db, certain in ((-60.0, True), (-45.0, False)):
        tracker = QuietTracker()
        room = rng.normal(0.0, 10 ** (room_db / 20), 8 * WINDOW).astype(np.float32)
        follow(tracker, room)
        assert not tracker.certain  # no voice yet: nothing to be 30 dB under
        follow(tracker, tone(8 * WINDOW, -20.0) + room)
        follow(tracker, room)
        assert tracker.certain is certain, room_db


@pytest.mark.unit
def test_silent_is_the_rooms_floor_in_a_quiet_room_and_a_bump_does_not_move_it() -> None:
    """`silent_since`: blocks within ABOVE_FLOOR_DB of the floor, once the loudest recent
    sound is 30 dB over it. A bump raises the peak (and the quiet line, 35 dB under it) over
    a soft voice, not the floor: the voice is never silent (a review's case)."""
    rng = np.random.default_rng(8)
    room = rng.normal(0.0, 10 ** (-70 / 20), 40 * WINDOW).astype(np.float32)
    audio = room.copy()
    audio[8 * WINDOW : 28 * WINDOW] += tone(20 * WINDOW, -45.0)  # a soft voice
    audio[16 * WINDOW : 16 * WINDOW + BLOCK_SAMPLES] += tone(BLOCK_SAMPLES, -3.0)  # a bump
    tracker = QuietTracker()
    got = []
    for i in range(0, len(audio), WINDOW):
        quiet = tracker.window(i, audio[i : i + WINDOW])
        got.append((quiet, tracker.silent_since))
    assert all(silent is None for _, silent in got[:8])  # nothing 30 dB over the floor yet
    assert all(silent is None for _, silent in got[8:28])  # the voice: never silent ...
    assert any(quiet is not None for quiet, _ in got[17:28])  # ... though "quiet" after the bump
    assert all(silent == 28 * WINDOW for _, silent in got[29:])  # the room again: silent


@pytest.mark.unit
def test_a_certain_level_starts_the_silence_before_silero_hears_it() -> None:
    """In a quiet room (`silent_since`), the first window wholly silent in a turn is silence
    though silero still hears speech: the end comes `min_silence_ms` after the quiet began,
    not after silero's lag (here 320 ms); without it, as before."""
    quiet = [None] * 20 + [QUIET_AT] * 24
    probs = SPEECH + [0.9] * 10 + [0.0] * 14
    out: dict[bool, list[tuple[int, VadEvent]]] = {}
    for certain in (True, False):
        det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=200.0))
        out[certain] = []
        for i, (p, q) in enumerate(zip(probs, quiet, strict=True)):
            events = det.process(i * WINDOW, p, 0.5, q, q if certain else None)
            out[certain] += [((i + 1) * WINDOW, e) for e in events if not isinstance(e, BargeIn)]
    # window 21 is the first wholly quiet one: the silence from QUIET_AT, heard there (the
    # transcript's audio goes on the pad after it); the end 200 ms after QUIET_AT
    assert [(t, e) for t, e in out[True] if isinstance(e, SpeechStop | Turn)] == [
        (27 * WINDOW, SpeechStop(QUIET_AT)),
        (27 * WINDOW, Turn(0, 21 * WINDOW + 150 * MS, stop=QUIET_AT)),
    ]
    assert QUIET_AT + 200 * MS <= 27 * WINDOW < QUIET_AT + 200 * MS + WINDOW
    # and it is transcribed ahead from SPECULATE_MS on (then again, padded, at the pad)
    det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=200.0), speculate=True)
    specs = []
    for i, (p, q) in enumerate(zip(probs, quiet, strict=True)):
        events = det.process(i * WINDOW, p, 0.5, q, q)
        specs += [((i + 1) * WINDOW, e) for e in events if isinstance(e, Speculate)]
    early = -(-(QUIET_AT + round(SPECULATE_MS * MS)) // WINDOW) * WINDOW
    padded = -(-(QUIET_AT + 150 * MS) // WINDOW) * WINDOW
    assert specs == [
        (early, Speculate(0, early, QUIET_AT)),
        (padded, Speculate(0, padded, QUIET_AT, padded=True)),
    ]
    # silero alone: heard at window 30, backdated 250 ms at most (so 200 ms have passed),
    # the end with that window: 128 ms later
    began = 30 * WINDOW - round(MAX_BACKDATE_MS * MS)
    assert [(t, e) for t, e in out[False] if isinstance(e, SpeechStop | Turn)] == [
        (31 * WINDOW, SpeechStop(began)),
        (31 * WINDOW, Turn(0, 31 * WINDOW, stop=began)),  # (the audio so far)
    ]


@pytest.mark.unit
def test_a_certain_quiet_the_voice_goes_on_after_is_no_end() -> None:
    det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=200.0))
    pause = 20 * WINDOW  # quiet for 5 windows (160 ms), then the voice again, then the end
    quiet = [None] * 20 + [pause] * 5 + [None] * 10 + [35 * WINDOW] * 20
    probs = SPEECH + [0.9] * 15 + [0.0] * 20
    stops = []
    for i, (p, q) in enumerate(zip(probs, quiet, strict=True)):
        stops += [e for e in det.process(i * WINDOW, p, 0.5, q, q) if isinstance(e, SpeechStop)]
    assert stops == [SpeechStop(35 * WINDOW)]
    # a breath after the end (the level up, silero unsure: 0.4) does not start it over
    det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=200.0))
    quiet = [None] * 20 + [QUIET_AT] * 3 + [None] * 2 + [25 * WINDOW] * 10
    probs = SPEECH + [0.9] * 3 + [0.4] * 2 + [0.0] * 10
    timed = []
    for i, (p, q) in enumerate(zip(probs, quiet, strict=True)):
        events = det.process(i * WINDOW, p, 0.5, q, q)
        timed += [((i + 1) * WINDOW, e) for e in events if isinstance(e, SpeechStop)]
    assert timed == [(27 * WINDOW, SpeechStop(QUIET_AT))]  # 200 ms after QUIET_AT, as ever
    # a level quiet since before the turn began is not the turn's silence
    det = SpeechDetector(VadOptions(smart_end=False, min_silence_ms=200.0))
    events = [det.process(i * WINDOW, 0.9, 0.5, 0, 0) for i in range(20)]
    assert not [e for evs in events for e in evs if isinstance(e, SpeechStop)]


@pytest.mark.unit
async def test_a_held_sound_is_transcribed_from_its_padded_silence() -> None:
    """While the agent's audio is held (soft barge-in), the early speculation (64 ms of quiet)
    is not made: the sound's words check hears the pad's worth of silence, as a check of its
    own would ("Right." heard at 64 ms was "write" in 3 of 4 trials of bench.backchannels)."""
    from harness import inline_uplink_services

    from duplexd._uplink.uplink import Uplink
    from duplexd.protocol.options import AsrOptions, SessionOptions

    uplink = Uplink(
        rate_hz=RATE,
        downlink_rate_hz=RATE,
        options=SessionOptions(VadOptions(barge_in_mode="soft"), AsrOptions(transcripts=True)),
        services=inline_uplink_services(transcriber=_Decodes()),
        send=lambda frame: None,
        barge_in=lambda delay_s: None,
        hold=lambda delay_s, onset: True,
        settle=lambda settled, onset: None,
    )
    words, holds = uplink._transcripts, uplink._holds
    assert words is not None and holds is not None
    uplink._deliver(0.0, Speculate(0, 16_000, 14_000))  # nothing held: at once
    assert words._speculation == Speculate(0, 16_000, 14_000)
    uplink._deliver(0.0, BargeIn(10_000))  # a sound from there is being judged
    assert holds.held == 10_000 and words.holding
    uplink._deliver(0.0, Speculate(0, 30_000, 28_000))
    assert words._speculation == Speculate(0, 16_000, 14_000)  # not this one
    uplink._deliver(0.0, Speculate(0, 31_000, 28_000, padded=True))
    assert words._speculation == Speculate(0, 31_000, 28_000, padded=True)


@pytest.mark.unit
async def test_a_held_sounds_check_after_its_turns_final_takes_the_finals_words() -> None:
    """The turn ended on the held sound's silence first: the final took the speculative
    transcript; the words check of that silence that comes after is answered from the final,
    not decoded a second time."""
    import trio
    import trio.testing

    from duplexd._uplink.counters import UplinkCounters
    from duplexd._uplink.transcripts import HoldCheck

    double = _Decodes()
    counters = UplinkCounters()
    heard: list[tuple[int, str]] = []
    words = _transcripts(double, counters, lambda check, text: heard.append((check, text)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(words.run)
        words.speculate(Speculate(0, 17_000, 14_000, padded=True))
        assert (await words.speculated(14_000)).text == "Hello."
        words.queue_turn(Turn(0, 17_000, final=True, stop=14_000))
        await trio.testing.wait_all_tasks_blocked()
        assert counters.speculations_used == 1 and double.decoded == [17_000]
        words.check_words(HoldCheck(7, np.zeros(17_000, np.float32), 14_000))
        await trio.testing.wait_all_tasks_blocked()
        assert heard == [(7, "Hello.")]
        assert double.decoded == [17_000]  # not decoded again
        assert counters.hold_checks_from_final == 1
        words.check_words(HoldCheck(8, np.zeros(30_000, np.float32), 28_000))  # another silence
        await trio.testing.wait_all_tasks_blocked()
        assert heard[-1] == (8, "Hello.") and double.decoded == [17_000, 30_000]
        nursery.cancel_scope.cancel()


class _Scripted(_Decodes):
    """A transcriber test double that answers `texts` in order (then "Hello.")."""

    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = list(texts)

    async def hear(self, audio: np.ndarray, prompt: str | None = None, **kw: Any) -> Any:
        from duplexd._uplink.window import Heard

        await super().hear(audio, prompt, **kw)
        return Heard(self.texts.pop(0) if self.texts else "Hello.", None)


@pytest.mark.unit
@pytest.mark.parametrize("ended", [False, True], ids=["speculated", "final"])
async def test_a_held_sounds_check_decodes_its_own_audio_when_the_transcript_at_hand_is_empty(
    ended: bool,
) -> None:
    """No words resumes the agent's audio over the user: an empty speculative transcript (or
    final) of the held sound's silence is not the check's answer; the check's own audio is
    decoded after the hold prompt (at ten sessions "Wait," came out empty 8 times in 96)."""
    import trio
    import trio.testing

    from duplexd._uplink.counters import UplinkCounters
    from duplexd._uplink.transcripts import HOLD_PROMPT, HoldCheck

    # (the final decodes an empty speculative transcript again: empty again here)
    double = _Scripted("", "", "Wait.") if ended else _Scripted("", "Wait.")
    counters = UplinkCounters()
    heard: list[tuple[int, str]] = []
    words = _transcripts(double, counters, lambda check, text: heard.append((check, text)))
    words.holding = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(words.run)
        words.speculate(Speculate(0, 17_000, 14_000, padded=True))
        assert (await words.speculated(14_000)).text == ""
        if ended:  # the turn ended on that silence first, its final empty too
            words.queue_turn(Turn(0, 17_000, final=True, stop=14_000))
            await trio.testing.wait_all_tasks_blocked()
            assert counters.speculations_empty == 1
        words.check_words(HoldCheck(7, np.zeros(19_400, np.float32), 14_000))
        await trio.testing.wait_all_tasks_blocked()
        assert heard == [(7, "Wait.")]
        # the check's own audio, pad and all
        assert double.decoded == [17_000, 17_000, 19_400] if ended else [17_000, 19_400]
        assert double.asked[-1] == (HOLD_PROMPT, True)
        assert counters.hold_checks_again == 1 and counters.hold_checks_from_final == 0
        nursery.cancel_scope.cancel()


@pytest.mark.unit
async def test_an_empty_speculative_transcript_is_not_the_final_the_turn_is_decoded() -> None:
    """Whisper tiny.en leaves a lone short word out now and then: a speculative transcript
    with no words is not taken as the turn's final; the turn's own audio is decoded."""
    import trio
    import trio.testing

    from duplexd._uplink.counters import UplinkCounters
    from duplexd.protocol import frames as fr

    double = _Scripted("", "Yes.")
    counters = UplinkCounters()
    sent: list[object] = []
    words = _transcripts(double, counters, send=sent.append)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(words.run)
        words.speculate(Speculate(0, 17_000, 14_000, padded=True))
        assert (await words.speculated(14_000)).text == ""
        words.queue_turn(Turn(0, 18_000, final=True, stop=14_000))
        await trio.testing.wait_all_tasks_blocked()
        assert sent == [fr.Transcript(start_sample=0, end_sample=18_000, text="Yes.")]
        assert double.decoded == [17_000, 18_000]  # the turn's own audio, decoded again
        assert counters.speculations_empty == 1 and counters.speculations_used == 0
        nursery.cancel_scope.cancel()


@pytest.mark.unit
async def test_while_the_agent_is_held_the_sounds_words_are_decoded_after_the_hold_prompt() -> None:
    """A held sound's speculative transcript and a words check of its own are decoded after
    `HOLD_PROMPT` with loops cut (a hum written as one, bounded work); a turn's transcript
    when nothing is held is decoded as before."""
    import trio
    import trio.testing

    from duplexd._uplink.counters import UplinkCounters
    from duplexd._uplink.transcripts import HOLD_PROMPT, HoldCheck

    double = _Decodes()
    words = _transcripts(double, UplinkCounters())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(words.run)
        words.speculate(Speculate(0, 17_000, 14_000, padded=True))
        await words.speculated(14_000)
        words.holding = True
        words.speculate(Speculate(20_000, 27_000, 24_000, padded=True))
        await words.speculated(24_000)
        words.check_words(HoldCheck(1, np.zeros(9_000, np.float32), 34_000))
        await trio.testing.wait_all_tasks_blocked()
        words.holding = False
        words.queue_turn(Turn(40_000, 47_000, final=True, stop=44_000))
        await trio.testing.wait_all_tasks_blocked()
        held = (HOLD_PROMPT, True)
        assert double.asked == [(None, False), held, held, (None, False)]
        nursery.cancel_scope.cancel()
