"""Opus with the real voice, through a real session (SPEC §4.6.3): what Whisper hears of the
VITS voice delivered as Opus is as good as of the PCM (WER within 1 point, at 16, 24 and
48 kHz), and an Opus uplink feeds the VAD and the ASR as PCM does."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import trio
import trio.testing
from harness import inline_uplink_services, open_pair
from test_duplex_session import Client, speak_until_transcribed
from test_intelligibility import SENTENCES

from bench.asr_helpers import normalize_text, transcribe, word_error_rate
from duplexd.client.session import session_over
from duplexd.protocol import frames as fr

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RATE = 16_000


async def _spoken(rate: int, codec: str) -> list[np.ndarray]:
    """Each of SENTENCES said by the VITS voice through a real session, as the SDK hands it
    out (PCM, decoded from Opus when `codec` is opus), float at `rate`."""
    from bench.speech import engine

    options = json.dumps({"codec": {"downlink": codec}})
    out = []
    async with (
        open_pair(engine()) as (pair,),
        session_over(pair.client, fr.Hello(sample_rate_hz=rate, options=options)) as session,
    ):
        assert json.loads(session.welcome.info)["codec"]["downlink"] == codec
        for text in SENTENCES:
            spoken = await session.receive_utterance(await session.say(text))
            out.append(np.frombuffer(spoken.pcm, "<i2").astype(np.float32) / 32768)
    return out


@pytest.mark.parametrize("rate", [16_000, 24_000, 48_000])
async def test_opus_downlink_is_as_intelligible_as_pcm(
    rate: int, autojump_clock: trio.testing.MockClock
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hyps = {codec: [] for codec in ("pcm", "opus")}
        for codec, audio in hyps.items():
            audio.extend(transcribe(a, rate) for a in await _spoken(rate, codec))
    wer = {codec: word_error_rate(SENTENCES, h) for codec, h in hyps.items()}
    print(f"\n{rate} Hz: WER pcm {wer['pcm']:.1%}, opus 32 kbit/s {wer['opus']:.1%}")
    for ref, hyp in zip(SENTENCES, hyps["opus"], strict=True):
        if normalize_text(ref) != normalize_text(hyp):
            print(f"  ref: {ref}\n  opus: {hyp}")
    assert wer["opus"] <= wer["pcm"] + 0.01


async def test_opus_uplink_feeds_vad_and_asr(autojump_clock: trio.testing.MockClock) -> None:
    from bench.speech import engine, spoken
    from duplexd._uplink.asr import Transcriber

    sentences = [
        "Could you tell me what the weather will be like tomorrow?",
        "Please book a table for two at seven thirty.",
    ]
    services = inline_uplink_services(Transcriber(cpu_threads=2))
    hello = fr.Hello(
        sample_rate_hz=16_000,
        uplink_rate_hz=48_000,
        options=json.dumps({"codec": {"uplink": "opus"}, "vad": {"smart_end": False}}),
    )
    async with open_pair(engine(), uplink_services=services) as (pair,):
        client = Client()
        async with session_over(pair.client, hello, on_frame=client.on_frame) as session:
            assert session.audio.opus_up  # send_audio encodes
            client.t0 = trio.current_time()
            audio, _ = spoken(sentences)
            await speak_until_transcribed(client, session, audio, len(sentences))
    hyps = [f.text for _, f in client.frames_of(fr.Transcript)]
    wer = word_error_rate(sentences, hyps)
    print(f"\nOpus uplink transcripts: {hyps}, WER {wer:.1%}")
    assert len(client.frames_of(fr.SpeechStarted)) == len(sentences)
    assert wer <= 0.15


@pytest.mark.parametrize(
    ("down", "up"),
    [
        ("opus", "pcm"),
        ("pcm", "opus"),
        ("opus", "opus"),
    ],
)
async def test_opus_echo_does_not_barge_in_but_the_user_does(
    down: str, up: str, autojump_clock: trio.testing.MockClock
) -> None:
    """With an Opus downlink the server's echo reference is its own packets decoded (as the
    client plays them), so the agent's echo at -10 dB, 50 ms late, is not taken for the user;
    the user talking over it is; and through an Opus uplink (the echo comes back re-coded:
    AEC3's adaptive filter takes that, where the NCC canceller it replaced did not)."""
    from test_duplex_session import AGENT, USER, echo_mic, user_barges_in, utterance_end

    from bench.speech import clip, engine

    user = clip(USER, other_speaker=True)
    rng = np.random.default_rng(3)
    hello = fr.Hello(
        sample_rate_hz=16_000,
        uplink_rate_hz=16_000,
        options=json.dumps({"codec": {"downlink": down, "uplink": up}}),
    )
    async with open_pair(engine(), uplink_services=inline_uplink_services()) as (pair,):
        client = Client()
        async with session_over(pair.client, hello, on_frame=client.on_frame) as session:
            assert (session.audio.opus_down, session.audio.opus_up) == (
                down == "opus",
                up == "opus",
            )
            client.t0 = trio.current_time()
            state = {"delay": 0.050, "user_at": -1}
            mic = echo_mic(client, user, state, rng)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.uplink, session, mic)
                uid = await session.say(AGENT[0])
                done = await utterance_end(client, uid)
                assert isinstance(done, fr.UtteranceDone), "the echo barged in"
                await user_barges_in(client, session, state, AGENT[1])
                nursery.cancel_scope.cancel()
