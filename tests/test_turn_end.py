"""End of turn: the fixed silence and the smart end (Smart Turn v3.2 asked at a short silence).

The detector's timing with made-up probabilities (pure); the turn model on real speech (the
VITS voice, complete sentences and sentences with a 600 ms pause cut in mid-sentence); and a
real Session under trio's MockClock with the model run inline, so the virtual times at which
the turn ends are exact.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from duplexd._uplink.turn import WINDOW_SAMPLES, TurnModel, bundled_model_path, model_input
from duplexd._uplink.vad import (
    WINDOW,
    BargeIn,
    EndCandidate,
    Speculate,
    SpeechDetector,
    SpeechStart,
    SpeechStop,
    Turn,
    VadEvent,
)
from duplexd._uplink.window import Heard
from duplexd.protocol.codec import RemoteProtocolError
from duplexd.protocol.frames import ErrorCode, TurnEndBy
from duplexd.protocol.options import VadOptions, parse_options

RATE = 16_000
MS = RATE // 1000


def feed(det: SpeechDetector, probs: list[float], at: int = 0) -> list[tuple[int, VadEvent]]:
    """(end sample of the window that made it, event) for windows from `at` on; barge-ins
    left out."""
    out = []
    for i, p in enumerate(probs):
        start = at + i * WINDOW
        events = det.process(start, p, 0.5)
        out.extend((start + WINDOW, ev) for ev in events if not isinstance(ev, BargeIn))
    return out


SPEECH = [0.9] * 20  # 640 ms of speech from sample 0
SILENCE_AT = 20 * WINDOW


@pytest.mark.unit
def test_fixed_end_after_min_silence() -> None:
    for options, silence_ms in (
        (VadOptions(smart_end=False), 500),  # the old default
        (VadOptions(smart_end=False, min_silence_ms=300), 300),
        (VadOptions(), 500),  # smart_end asked for, but no turn model: fixed
    ):
        det = SpeechDetector(options, smart=False)
        events = feed(det, SPEECH + [0.0] * 40)
        (when, stop), (_, turn) = [(t, e) for t, e in events if not isinstance(e, SpeechStart)]
        assert stop == SpeechStop(SILENCE_AT)
        assert isinstance(turn, Turn) and turn.end == SILENCE_AT + 150 * MS
        windows = -(-silence_ms * MS // WINDOW)  # whole windows of silence
        assert when == SILENCE_AT + windows * WINDOW


@pytest.mark.unit
def test_smart_end_asks_at_min_silence_and_ends_when_complete() -> None:
    det = SpeechDetector(VadOptions(), smart=True)
    assert det.min_silence_ms == 200
    events = feed(det, SPEECH + [0.0] * 7)  # 224 ms of silence
    (when, ask) = events[-1]
    assert ask == EndCandidate(0, 0, SILENCE_AT + 7 * WINDOW, SILENCE_AT) and when == ask.end
    assert feed(det, [0.0] * 3, at=SILENCE_AT + 7 * WINDOW) == []  # one question per silence
    stop, turn = det.verdict(0, complete=True)
    assert stop == SpeechStop(SILENCE_AT)  # where the silence began
    assert turn == Turn(0, SILENCE_AT + 150 * MS, stop=SILENCE_AT)
    assert not det.in_speech and det.verdict(0, complete=True) == []


@pytest.mark.unit
def test_smart_end_waits_for_max_silence_when_incomplete() -> None:
    det = SpeechDetector(VadOptions(max_silence_ms=800), smart=True)  # asked once
    events = feed(det, SPEECH + [0.0] * 7)
    assert isinstance(events[-1][1], EndCandidate)
    assert det.verdict(0, complete=False) == []
    later = feed(det, [0.0] * 30, at=SILENCE_AT + 7 * WINDOW)
    (when, stop), (_, turn) = later
    assert stop == SpeechStop(SILENCE_AT) and isinstance(turn, Turn)
    assert when == SILENCE_AT + 25 * WINDOW  # 800 ms: 25 windows


@pytest.mark.unit
def test_smart_end_asks_again_as_the_silence_grows() -> None:
    det = SpeechDetector(VadOptions(max_silence_ms=800, smart_reask_ms=200), smart=True)
    first = feed(det, SPEECH + [0.0] * 7)
    assert first[-1][1] == EndCandidate(0, 0, SILENCE_AT + 7 * WINDOW, SILENCE_AT)
    assert det.verdict(0, complete=False) == []
    later = feed(det, [0.0] * 30, at=SILENCE_AT + 7 * WINDOW)
    asks = [(when, e) for when, e in later if isinstance(e, EndCandidate)]
    # 400 and 600 ms of silence, in whole windows (13 and 19); the end regardless at 800 (25)
    assert asks == [
        (at, EndCandidate(k, 0, at, SILENCE_AT, again=True))
        for k, at in ((1, SILENCE_AT + 13 * WINDOW), (2, SILENCE_AT + 19 * WINDOW))
    ]
    stops = [(when, e) for when, e in later if isinstance(e, SpeechStop)]
    assert stops == [(SILENCE_AT + 25 * WINDOW, SpeechStop(SILENCE_AT))]


@pytest.mark.unit
def test_a_complete_answer_to_any_question_of_the_silence_ends_the_turn() -> None:
    for answered in (1, 0):  # the latest question, or an earlier one answered late
        det = SpeechDetector(VadOptions(smart_reask_ms=200), smart=True)
        feed(det, SPEECH + [0.0] * 13)  # asked at 224 and 416 ms: candidates 0 and 1
        stop, turn = det.verdict(answered, complete=True)
        assert stop == SpeechStop(SILENCE_AT) and isinstance(turn, Turn)
        assert det.verdict(1 - answered, complete=True) == []  # ended: nothing more


@pytest.mark.unit
def test_a_long_turn_cut_in_its_silence_is_still_asked_about_whole() -> None:
    """`max_turn_s` cuts the turn 384 ms into its silence: the questions after the cut are
    about the turn as the silence found it, not about the silence alone."""
    det = SpeechDetector(VadOptions(max_turn_s=1.0, smart_reask_ms=200), smart=True)
    events = feed(det, SPEECH + [0.0] * 13)
    cut = [e for _, e in events if isinstance(e, Turn)]
    assert [t.end for t in cut] == [32 * WINDOW]  # the 1 s cut, in the silence
    asks = [e for _, e in events if isinstance(e, EndCandidate)]
    assert [(a.id, a.start, a.again) for a in asks] == [(0, 0, False), (1, 0, True)]


@pytest.mark.unit
def test_an_answer_about_an_earlier_silence_is_stale() -> None:
    det = SpeechDetector(VadOptions(smart_reask_ms=200), smart=True)
    feed(det, SPEECH + [0.0] * 7)  # candidate 0
    resumed = SILENCE_AT + 7 * WINDOW
    feed(det, [0.9] * 10, at=resumed)
    second = feed(det, [0.0] * 7, at=resumed + 10 * WINDOW)
    assert second[-1][1].id == 1 and not second[-1][1].again  # the new silence's first
    assert det.verdict(0, complete=True) == []  # the old silence's answer, late: stale
    assert det.in_speech


@pytest.mark.unit
def test_asked_once_per_silence_by_default() -> None:
    det = SpeechDetector(VadOptions(), smart=True)
    events = feed(det, SPEECH + [0.0] * 31)  # 992 ms: under max_silence_ms
    assert [e.id for _, e in events if isinstance(e, EndCandidate)] == [0]
    assert not any(isinstance(e, SpeechStop) for _, e in events)


@pytest.mark.unit
def test_reask_shorter_than_a_window_asks_once_a_window() -> None:
    det = SpeechDetector(VadOptions(smart_reask_ms=1, max_silence_ms=400), smart=True)
    events = feed(det, SPEECH + [0.0] * 13)
    asked = [when - SILENCE_AT for when, e in events if isinstance(e, EndCandidate)]
    assert asked == [w * WINDOW for w in range(7, 13)]  # 224 ms on, until the end at 416


@pytest.mark.unit
def test_speaking_on_keeps_the_turn_and_makes_a_late_verdict_stale() -> None:
    det = SpeechDetector(VadOptions(), smart=True)
    feed(det, SPEECH + [0.0] * 7)  # candidate 0
    resumed = SILENCE_AT + 7 * WINDOW
    assert feed(det, [0.9] * 10, at=resumed) == []  # the same turn: no SpeechStart
    assert det.verdict(0, complete=True) == []  # answered too late: the user spoke on
    events = feed(det, [0.0] * 7, at=resumed + 10 * WINDOW)
    assert events[-1][1] == EndCandidate(1, 0, resumed + 17 * WINDOW, resumed + 10 * WINDOW)
    stop, turn = det.verdict(1, complete=True)
    assert stop == SpeechStop(resumed + 10 * WINDOW) and isinstance(turn, Turn)
    assert turn.start == 0  # one turn, both parts


@pytest.mark.unit
def test_max_silence_is_never_below_min_silence() -> None:
    det = SpeechDetector(VadOptions(min_silence_ms=640, max_silence_ms=100), smart=True)
    events = feed(det, SPEECH + [0.0] * 20)
    kinds = [type(e) for _, e in events]
    # ended at 640 ms, no question left (the Speculate at 64 ms: prepare for an end here)
    assert kinds == [SpeechStart, Speculate, SpeechStop, Turn]
    assert events[2][0] == SILENCE_AT + 20 * WINDOW


@pytest.mark.unit
def test_smart_options() -> None:
    vad = parse_options(
        '{"vad": {"smart_end": false, "max_silence_ms": 1500, "smart_threshold": 0.7}}'
    ).vad
    assert not vad.smart_end and vad.max_silence_ms == 1500 and vad.smart_threshold == 0.7
    assert vad.min_silence_ms is None  # resolved by the detector: 200 smart, 500 fixed
    defaults = VadOptions()
    assert defaults.smart_end and defaults.max_silence_ms == 1000
    assert defaults.smart_reask_ms == 0  # asked once per silence
    assert parse_options('{"vad": {"smart_reask_ms": 200}}').vad.smart_reask_ms == 200
    assert not defaults.end_reports  # TURN_END only when asked for
    assert parse_options('{"vad": {"end_reports": true}}').vad.end_reports
    for bad in (
        '{"vad": {"smart_end": 1}}',
        '{"vad": {"end_reports": "yes"}}',
        '{"vad": {"max_silence_ms": 10}}',
        '{"vad": {"smart_threshold": 1}}',
        '{"vad": {"smart_reask_ms": -1}}',
    ):
        with pytest.raises(RemoteProtocolError) as info:
            parse_options(bad)
        assert info.value.error_code is ErrorCode.BAD_OPTIONS


# --------------------------------------------------------------------------- the model


@pytest.mark.unit
def test_the_shipped_model_is_the_documented_one() -> None:
    path = bundled_model_path()
    readme = (path.parent / "README.md").read_text()
    documented = re.search(r"SHA-256: `([0-9a-f]{64})`", readme)
    assert documented is not None
    assert hashlib.sha256(path.read_bytes()).hexdigest() == documented.group(1)
    notice = (path.parent / "LICENSE-smart-turn").read_text()
    assert notice.startswith("BSD 2-Clause License") and "Daily" in notice


@pytest.mark.unit
def test_model_input_keeps_the_last_8_s_zeros_first() -> None:
    short = np.full(RATE, 0.5, dtype=np.float32)
    x = model_input(short)
    assert len(x) == WINDOW_SAMPLES
    assert np.all(x[: WINDOW_SAMPLES - RATE] == x[0]) and x[-1] > x[0]  # zeros, then the clip
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3
    ramp = np.arange(9 * RATE, dtype=np.float32)
    long = model_input(ramp)
    assert np.argmin(long) == 0 and np.argmax(long) == WINDOW_SAMPLES - 1  # the tail kept


@pytest.mark.integration
def test_complete_sentences_score_complete() -> None:
    from bench.speech import clip

    model = TurnModel()
    assert model.features(np.zeros(RATE, dtype=np.float32)).shape == (1, 80, 800)
    rng = np.random.default_rng(2)
    for text in (
        "Please book a table for two at seven thirty.",
        "I would like to order a large pizza with mushrooms.",
    ):
        speech = clip(text)
        audio = np.concatenate((speech, np.zeros(RATE // 4, dtype=np.float32)))
        audio += rng.normal(0.0, 1e-3, len(audio)).astype(np.float32)
        assert model.probability(audio) > 0.9, text


# --------------------------------------------------------------------------- a real session


async def one_turn(audio: np.ndarray, vad: dict[str, object]) -> list[tuple[float, object]]:
    """Speak `audio` (16 kHz, from 0.5 s) into a real Session (MockClock, uplink work and the
    turn model inline); the (virtual time, frame) of every SpeechStarted / SpeechStopped."""
    from harness import inline_uplink_services

    from duplexd.protocol import frames as fr

    services = inline_uplink_services(turn_model=shared_turn_model())
    client, _ = await speak(audio, services, noise_seed=5, vad=vad)
    return [
        (t - client.t0, f)
        for t, f in client.arrivals
        if isinstance(f, fr.SpeechStarted | fr.SpeechStopped)
    ]


_MODEL: list[TurnModel] = []


def shared_turn_model() -> TurnModel:
    if not _MODEL:
        _MODEL.append(TurnModel())
    return _MODEL[0]


async def speak(
    audio: np.ndarray,
    services: object,
    noise_seed: int | None = None,
    vad: dict[str, object] | None = None,
) -> tuple:
    """Speak `audio` (16 kHz, from 0.5 s, then 2 s of quiet; low noise under it all with
    `noise_seed`) into a real Session (MockClock, the uplink's work inline; `vad`: its HELLO
    options); (the client, the session's STATS at the end)."""
    from harness import open_pair
    from test_duplex_session import Client, hello

    from duplexd.client.session import session_over

    mic = np.zeros(RATE // 2 + len(audio) + 2 * RATE, dtype=np.float32)
    mic[RATE // 2 : RATE // 2 + len(audio)] = audio
    if noise_seed is not None:
        mic += np.random.default_rng(noise_seed).normal(0.0, 1e-3, len(mic)).astype(np.float32)
    async with open_pair(uplink_services=services) as (pair,):
        client = Client()
        options = hello(**(vad or {}))
        async with session_over(pair.client, options, on_frame=client.on_frame) as session:
            client.t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.uplink, session, lambda k: mic[k * 320 : (k + 1) * 320])
                await trio.sleep(len(mic) / RATE - 0.1)
                stats = await session.stats()
                nursery.cancel_scope.cancel()
    return client, stats


@pytest.mark.integration
@pytest.mark.parametrize(
    ("vad", "silence_ms"), [({}, 200), ({"smart_end": False}, 500)], ids=["smart", "fixed"]
)
async def test_a_complete_sentence_ends_after_a_short_silence(
    autojump_clock: trio.testing.MockClock, vad: dict[str, object], silence_ms: int
) -> None:
    from bench.speech import clip
    from duplexd.protocol import frames as fr

    speech = clip("Could you tell me what the weather will be like tomorrow?")
    frames = await one_turn(speech, vad)
    assert [type(f) for _, f in frames] == [fr.SpeechStarted, fr.SpeechStopped]
    when, stop = frames[1]
    assert isinstance(stop, fr.SpeechStopped)
    # the silence begins where the voice fell quiet (quiet.py), not where silero heard it
    # (120-260 ms later): within two blocks (16 ms) after the last sample of its envelope
    from bench.turns import speech_end

    assert 0 <= stop.uplink_sample - (RATE // 2 + speech_end(speech)) < 16 * MS
    # the turn ends with the first VAD window that completes `silence_ms` from there, at the
    # end of the uplink frame that completes that window (the echo canceller, with nothing
    # sent, passes the microphone through as it comes: not AEC3's 8 ms later, echo.py)
    decided = -(-(stop.uplink_sample + silence_ms * MS) // WINDOW) * WINDOW
    assert when == pytest.approx(-(-decided // 320) * 0.020)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("vad", "turns"), [({}, 1), ({"smart_end": False}, 2)], ids=["smart", "fixed"]
)
async def test_a_mid_sentence_pause_stays_one_turn_in_smart_mode(
    autojump_clock: trio.testing.MockClock, vad: dict[str, object], turns: int
) -> None:
    from bench.speech import paused_clip
    from duplexd.protocol import frames as fr

    spoken = paused_clip("I want to fly to Paris next week.", 5)  # "... fly to | Paris ..."
    frames = await one_turn(spoken.audio, vad)
    stops = [f for _, f in frames if isinstance(f, fr.SpeechStopped)]
    assert len(stops) == turns, frames
    assert stops[-1].uplink_sample >= RATE // 2 + spoken.end - 2 * WINDOW  # after "week"


@pytest.mark.unit
def test_passes_for_streaming_transcripts_only_while_the_user_speaks() -> None:
    det = SpeechDetector(VadOptions(smart_end=False), partial_ms=96, smart=False)  # 3 windows
    events = feed(det, SPEECH + [0.0] * 10 + SPEECH[:6] + [0.0] * 40)
    partials = [(t, e) for t, e in events if isinstance(e, Turn) and not e.final]
    (final,) = [e for _, e in events if isinstance(e, Turn) and e.final]
    started = 5 * WINDOW  # SpeechStarted after 150 ms of speech: the 5th window
    resumed = SILENCE_AT + 10 * WINDOW  # speech again after 320 ms: the same turn
    assert [t for t, _ in partials] == [
        *range(started + 3 * WINDOW, SILENCE_AT + 1, 3 * WINDOW),  # none in the silence
        resumed + WINDOW,  # 3 windows since the last one have passed: the next speech window
        resumed + 4 * WINDOW,
    ]
    assert all(e.start == final.start and e.end == t for t, e in partials)


@pytest.mark.unit
def test_speculation_once_per_silence_and_the_turn_says_where_it_stopped() -> None:
    from duplexd._uplink.vad import SPECULATE_MS

    det = SpeechDetector(VadOptions(min_silence_ms=250.0), speculate=True)
    # speech, a short pause (speculated on, then the user speaks on), speech, the end
    events = feed(det, SPEECH + [0.0] * 6 + [0.9] * 10 + [0.0] * 10)
    specs = [(end, ev) for end, ev in events if isinstance(ev, Speculate)]
    # after SPECULATE_MS of silence, and again once it has lasted the turn's pad (150 ms: a
    # held sound's words are transcribed from that one)
    early, padded = -(-round(SPECULATE_MS * MS) // WINDOW), -(-150 * MS // WINDOW)
    second = SILENCE_AT + 16 * WINDOW
    assert [(end - ev.stop, ev.stop, ev.padded) for end, ev in specs] == [
        (early * WINDOW, SILENCE_AT, False),
        (padded * WINDOW, SILENCE_AT, True),
        (early * WINDOW, second, False),
        (padded * WINDOW, second, True),
    ]
    (turn,) = [ev for _, ev in events if isinstance(ev, Turn)]
    assert turn.stop == specs[-1][1].stop and turn.start == specs[-1][1].start
    # off unless asked (a session without transcripts)
    quiet = SpeechDetector(VadOptions(min_silence_ms=200.0))
    assert not [ev for _, ev in feed(quiet, SPEECH + [0.0] * 10) if isinstance(ev, Speculate)]


@pytest.mark.unit
def test_a_silence_is_transcribed_ahead_at_64_ms_and_judged_at_the_pad() -> None:
    """With the turn model (smart) the same silence comes twice: transcribed ahead after
    SPECULATE_MS (Whisper's text is ready sooner), judged once it has lasted the turn's pad
    (the model hears that much silence); the model alone asks only at the pad."""
    from duplexd._uplink.vad import SPECULATE_MS

    pad = 150 * MS
    det = SpeechDetector(VadOptions(), smart=True, speculate=True)
    specs = [(end, ev) for end, ev in feed(det, SPEECH + [0.0] * 8) if isinstance(ev, Speculate)]
    first = -(-round(SPECULATE_MS * MS) // WINDOW) * WINDOW
    assert [(end - SILENCE_AT, ev.stop, ev.padded) for end, ev in specs] == [
        (first, SILENCE_AT, False),
        (-(-pad // WINDOW) * WINDOW, SILENCE_AT, True),
    ]
    assert all(ev.end == end for end, ev in specs)
    det = SpeechDetector(VadOptions(), smart=True)  # no transcripts
    specs = [(end, ev) for end, ev in feed(det, SPEECH + [0.0] * 8) if isinstance(ev, Speculate)]
    assert [(end - SILENCE_AT, ev.padded) for end, ev in specs] == [
        (-(-pad // WINDOW) * WINDOW, True)
    ]


@pytest.mark.integration
async def test_a_turn_that_ends_where_it_was_speculated_on_sends_that_transcript(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from harness import inline_uplink_services
    from test_soft_barge_in import transcriber

    from bench.speech import clip
    from duplexd.protocol import frames as fr

    text = "Please book a table for two at seven thirty."
    services = inline_uplink_services(transcriber(), turn_model=shared_turn_model())
    client, stats = await speak(clip(text), services)
    (final,) = [f for _, f in client.frames_of(fr.Transcript)]
    t_stop = client.frames_of(fr.SpeechStopped)[0][0]
    t_final = next(t for t, f in client.arrivals if f is final)
    assert "table" in final.text.lower()
    assert stats["asr_speculations_used"] == 1
    # Whisper ran before the turn ended (on the trio thread here: virtual time stood still),
    # so the final goes out with SpeechStopped, not a decode later
    assert t_final == t_stop


class Scripted(TurnModel):
    """A turn model that answers from a list, counting its runs."""

    def __init__(self, answers: list[float]) -> None:  # (no model to load)
        self.answers = answers
        self.calls = 0

    def probability(self, audio: np.ndarray) -> float:
        self.calls += 1
        return self.answers.pop(0)


async def test_an_answer_made_ahead_answers_only_the_first_question_of_its_silence() -> None:
    from duplexd._uplink.ends import AHEAD, EndCheck

    model = Scripted([0.2, 0.9])  # ahead, at the pad: "not yet"; asked again later: "complete"
    ends, answers = words_first(model, inline, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ends.run)
        # the first question was replaced before it was taken (a slow model): the one asked
        # again gets a run of its own, not the answer made at the pad
        await asking(ends, EndCheck(AHEAD, AUDIO, stop=100), EndCheck(1, AUDIO, 100, again=True))
        nursery.cancel_scope.cancel()
    assert answers == [(1, True, TurnEndBy.MODEL)] and model.calls == 2
    assert ends.counters.end_checks_ahead == 0


class HeldWords:
    """The speculative transcripts of an `EndOfTurn` (a test double of `Transcripts`): a silence's
    text is made when the test says so."""

    def __init__(self) -> None:
        self.made: dict[int, Heard] = {}
        self.coming: set[int] = set()
        self._lot = trio.lowlevel.ParkingLot()

    def make(self, stop: int, heard: Heard) -> None:
        self.made[stop] = heard
        self._lot.unpark_all()

    def speculated_now(self, stop: int) -> Heard | None:
        return self.made.get(stop)

    async def speculated(self, stop: int) -> Heard | None:
        while stop not in self.made and stop in self.coming:
            await self._lot.park()
        return self.made.get(stop)


AUDIO = np.zeros(WINDOW, np.float32)  # (what an `EndCheck` asks about: the models here ignore it)


async def asking(ends: Any, *checks: Any) -> None:
    """Ask `ends` each of `checks` in turn, each answered (or waiting) before the next."""
    for check in checks:
        ends.ask(check)
        await trio.testing.wait_all_tasks_blocked()


async def inline(fn: Any, *args: Any) -> Any:
    """An offload that runs `fn` on the trio thread (virtual time stands still)."""
    return fn(*args)


def words_first(
    model: TurnModel, offload: Any, words: HeldWords | None
) -> tuple[Any, list[tuple[int, bool, TurnEndBy]]]:
    """An `EndOfTurn` asking `model` through `offload`, with `words` for its transcripts (the
    session's defaults: 0.5, 0.7, 0.9), and the answers it gives (id, complete, by)."""
    from duplexd._uplink.counters import UplinkCounters
    from duplexd._uplink.ends import EndOfTurn

    answers: list[tuple[int, bool, TurnEndBy]] = []
    ends = EndOfTurn(
        model,
        offload=offload,
        busy=lambda: False,
        threshold=0.5,
        end_mark_threshold=0.7,
        end_mark_sure=0.9,
        counters=UplinkCounters(),
        transcripts=words,  # type: ignore[arg-type]
        answer=lambda check, complete, by: answers.append((check.id, complete, by)),
    )
    return ends, answers


@pytest.mark.parametrize(
    ("end_mark", "waits_for_model", "complete"),
    [(0.97, False, True), (0.4, False, False), (0.8, True, False)],
    ids=["sure", "unsure", "model-decides"],
)
async def test_words_that_decide_alone_do_not_wait_for_the_model(
    end_mark: float, waits_for_model: bool, complete: bool
) -> None:
    """The model's run asked ahead at the pad is still going when the question comes; the
    transcript of the silence comes next. Sure of its end mark (or unsure), the words answer at
    once; in between, the answer waits for the model (which says "incomplete" here)."""
    from duplexd._uplink.ends import AHEAD, EndCheck

    release = trio.Event()

    async def slow(fn: Any, *args: Any) -> Any:
        await release.wait()
        return fn(*args)

    model = Scripted([0.2])
    words = HeldWords()
    words.coming.add(100)
    ends, answers = words_first(model, slow, words)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ends.run)
        await asking(ends, EndCheck(AHEAD, AUDIO, stop=100), EndCheck(1, AUDIO, stop=100))
        words.make(100, Heard("What time does the last train leave tonight?", end_mark))
        await trio.testing.wait_all_tasks_blocked()
        by = TurnEndBy.MODEL if waits_for_model else TurnEndBy.WORDS
        assert answers == ([] if waits_for_model else [(1, complete, by)])
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert answers == [(1, complete, by)]
    assert model.calls == 1  # the run asked ahead, used or not
    assert ends.counters.end_checks_words == (0 if waits_for_model else 1)


async def test_words_made_before_the_pad_that_decide_ask_the_model_nothing() -> None:
    from duplexd._uplink.ends import AHEAD, EndCheck

    model = Scripted([])
    words = HeldWords()
    words.make(100, Heard("I'd like a table for...", 0.01))
    ends, answers = words_first(model, inline, words)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ends.run)
        # the pad, the question, and the same silence asked again
        checks = (EndCheck(i, AUDIO, 100, again=i > 1) for i in (AHEAD, 1, 2))
        await asking(ends, *checks)
        nursery.cancel_scope.cancel()
    assert answers == [(1, False, TurnEndBy.WORDS), (2, False, TurnEndBy.WORDS)]
    assert model.calls == 0
    assert ends.counters.end_checks_unfinished == ends.counters.end_checks_words == 1


class AlwaysComplete(TurnModel):
    """A turn model fooled by every pause (as Smart Turn was by "I'd like a table for")."""

    def __init__(self) -> None:  # (no model to load)
        self.calls = 0

    def probability(self, audio: np.ndarray) -> float:
        self.calls += 1
        return 1.0


@pytest.mark.integration
@pytest.mark.parametrize("words", [True, False], ids=["words", "model-alone"])
async def test_a_transcript_that_stops_mid_sentence_keeps_the_turn_open(
    autojump_clock: trio.testing.MockClock, words: bool
) -> None:
    """The turn model calls the pause complete; the speculative transcript of the same silence
    ends on "for" (unfinished.py), so the turn waits and the user's "four" is in it. Without
    transcripts, the model alone ends the turn at the pause."""
    from harness import inline_uplink_services
    from test_soft_barge_in import transcriber

    from bench.speech import paused_clip
    from duplexd.protocol import frames as fr

    spoken = paused_clip("I'd like a table for four.", 5)  # "... for | four."
    asr = transcriber() if words else None
    model = AlwaysComplete()
    services = inline_uplink_services(asr, turn_model=model)
    vad = {"smart_reask_ms": 200} if words else None  # asked again as the pause grows
    client, stats = await speak(spoken.audio, services, noise_seed=5, vad=vad)
    stops = client.frames_of(fr.SpeechStopped)
    if not words:
        assert len(stops) == 2 and stats["end_checks_unfinished"] == 0
        return
    assert len(stops) == 1, stops
    # the pause's question, and those asked again as it grew (smart_reask_ms), were answered
    # by the unfinished words alone: the model could not change that, and (its transcript made
    # before the pad here: the decode is inline) was run only for the end
    assert stats["end_checks_unfinished"] == stats["end_checks_words"] == 1, stats
    assert model.calls == stats["end_checks"] == 1, (model.calls, stats)
    (final,) = [f for _, f in client.frames_of(fr.Transcript)]
    assert "table for four" in final.text.lower().replace("4", "four"), final.text


@pytest.mark.integration
@pytest.mark.parametrize("threshold", [None, 0.0], ids=["end-mark", "words-alone"])
async def test_words_that_could_end_but_were_said_mid_sentence_keep_the_turn_open(
    autojump_clock: trio.testing.MockClock, threshold: float | None
) -> None:
    """The turn model calls the pause complete and the speculative transcript, "Can you
    play?", passes the words' check; but Whisper is unsure of its end mark (0.40-0.45 on this
    voice, `vad.end_mark_threshold` 0.7: `bench.end_marks`), so the turn waits and "some quiet
    music" is in it; at the sentence's end it is sure (0.93) and the turn ends there. With the
    mark not asked (0), the words alone end the turn at the pause."""
    from harness import inline_uplink_services
    from test_soft_barge_in import transcriber

    from bench.speech import paused_clip
    from duplexd.protocol import frames as fr

    spoken = paused_clip("Can you play some quiet music in the kitchen?", 3)  # "play | some"
    model = AlwaysComplete()
    services = inline_uplink_services(transcriber(), turn_model=model)
    vad: dict[str, object] = {"smart_reask_ms": 200}  # asked again as the pause grows
    if threshold is not None:
        vad["end_mark_threshold"] = threshold
    client, stats = await speak(spoken.audio, services, noise_seed=5, vad=vad)
    stops = client.frames_of(fr.SpeechStopped)
    finals = [f.text for _, f in client.frames_of(fr.Transcript)]
    if threshold == 0.0:
        assert len(stops) == 2 and stats["end_checks_unsure"] == 0, (stops, finals)
        assert finals[0].lower().startswith("can you play"), finals
        return
    assert len(stops) == 1, (stops, finals)
    assert stats["end_checks_unsure"] == 1 and stats["end_checks_unfinished"] == 0, stats
    # Whisper unsure at the pause, sure at the end: the words decided both, the model never ran
    assert stats["end_checks_words"] == 2 and stats["end_checks_sure"] == 1, stats
    assert model.calls == stats["end_checks"] == 0, (model.calls, stats)
    assert "play some quiet music in the kitchen" in finals[0].lower(), finals
    # the end itself was sure: the turn ended at its first question, not `max_silence_ms` later
    ((when, stop),) = stops
    assert when - client.t0 - stop.uplink_sample / RATE < 0.4, (when, stop)  # 232 ms


class NeverComplete(AlwaysComplete):
    """A turn model that doubts every end (as Smart Turn did some sentences' true ends)."""

    def probability(self, audio: np.ndarray) -> float:
        self.calls += 1
        return 0.0


@pytest.mark.integration
@pytest.mark.parametrize(("sure", "silence_ms"), [(None, 200), (1.0, 1000)], ids=["sure", "never"])
async def test_a_sentence_whisper_heard_end_ends_the_turn_whatever_the_model_says(
    autojump_clock: trio.testing.MockClock, sure: float | None, silence_ms: int
) -> None:
    """The turn model calls the end incomplete; Whisper's end mark after "... tonight?" is
    0.97 (`vad.end_mark_sure` 0.9), so the turn ends at the first question, 200 ms into the
    silence (and the VAD's window, the echo canceller's latency); with `end_mark_sure` 1 it
    waits `max_silence_ms`."""
    from harness import inline_uplink_services
    from test_soft_barge_in import transcriber

    from bench.speech import clip
    from duplexd.protocol import frames as fr

    model = NeverComplete()
    services = inline_uplink_services(transcriber(), turn_model=model)
    vad: dict[str, object] = {"end_reports": True}
    if sure is not None:
        vad["end_mark_sure"] = sure
    speech = clip("What time does the last train leave tonight?")
    client, stats = await speak(speech, services, noise_seed=5, vad=vad)
    ((when, stop),) = client.frames_of(fr.SpeechStopped)
    # (as test_a_complete_sentence_ends_after_a_short_silence: whole windows, whole frames)
    decided = -(-(stop.uplink_sample + silence_ms * MS) // WINDOW) * WINDOW
    assert when - client.t0 == pytest.approx(-(-decided // 320) * 0.020)
    assert stats["end_checks_sure"] == (1 if sure is None else 0), stats
    (final,) = [f.text for _, f in client.frames_of(fr.Transcript)]
    assert "last train leave tonight" in final.lower(), final
    # TURN_END, right before SPEECH_STOPPED, says which ended it, after how much silence (whole
    # windows), and how long after that audio came (0: the decode ran inline, in no time)
    i = next(i for i, (_, f) in enumerate(client.arrivals) if f is stop)
    (_, report) = client.arrivals[i - 1]
    by = fr.TurnEndBy.WORDS if sure is None else fr.TurnEndBy.MAX_SILENCE
    heard = -(-(stop.uplink_sample + silence_ms * MS) // WINDOW) * WINDOW - stop.uplink_sample
    assert report == fr.TurnEnd(by, stop.uplink_sample, heard, 0)


@pytest.mark.integration
async def test_turn_end_times_the_model_from_its_question(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A turn model that takes 70 ms (virtual), asked ahead at the pad (150 ms of silence) and
    waited for at the question (200 ms): TURN_END says MODEL, the silence up to the question,
    and the wait from the question's audio to SPEECH_STOPPED, exactly as the client saw it."""
    import dataclasses

    from harness import inline_uplink_services

    from bench.speech import clip
    from duplexd.protocol import frames as fr

    async def slow(fn: Any, *args: Any) -> Any:
        await trio.sleep(0.070)
        return fn(*args)

    model = AlwaysComplete()
    services = dataclasses.replace(inline_uplink_services(turn_model=model), turn_offload=slow)
    speech = clip("Could you tell me what the weather will be like tomorrow?")
    client, _ = await speak(speech, services, noise_seed=5, vad={"end_reports": True})
    ((when, stop),) = client.frames_of(fr.SpeechStopped)
    ((_, report),) = client.frames_of(fr.TurnEnd)
    asked = -(-(stop.uplink_sample + 200 * MS) // WINDOW) * WINDOW  # the question's audio
    asked_at = -(-asked // 320) * 0.020  # ... came in then (passed through: nothing sent)
    assert report.by is fr.TurnEndBy.MODEL and report.uplink_sample == stop.uplink_sample
    assert report.silence_samples == asked - stop.uplink_sample
    assert report.decided_us == round((when - client.t0 - asked_at) * 1e6)
    assert 0 < report.decided_us <= 70_000, report  # (the run asked ahead had begun)
