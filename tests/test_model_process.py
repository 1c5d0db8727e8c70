"""The model process (`duplexd serve-model`, `duplexd.engines.remote`): several daemons share one
engine over a Unix socket. A real `serve_model` with the tone engine (and the VITS voice)
answered by `RemoteEngine` exactly as the engine answers in-process; a barge-in's early close
stops the request in the model process; failures (an unknown voice, an engine that raises
lazily or when called, a request not answered in time, garbage, a reused id, too many
requests, a request never pulled) reach the right caller only; a daemon serving sessions
through it, and a crash ending only its speaking session.
A model process that leaves or dies and the next one: test_model_restarts.py; the wire alone:
test_model_wire.py; the command line and operations: test_model_service.py."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
from test_service import CLIENT_SOCKET_LEAK, until

from duplexd.engines.base import EngineError, FloatAudio, UnknownVoiceError, WordMark
from duplexd.engines.remote import ModelGoneError, RemoteEngine, wire
from duplexd.engines.remote.server import serve_model
from duplexd.engines.tone import ToneEngine

pytestmark = pytest.mark.unit


class _Closing:
    """A tone voice whose chunks say when the model process closed them (test double)."""

    def __init__(self, engine: ToneEngine, name: str, log: list[str]) -> None:
        self._voice = engine.open_voice("sine")
        self.name, self.sample_rate_hz, self._log = name, self._voice.sample_rate_hz, log

    def synthesize(self, text: str) -> FloatAudio:
        return self._voice.synthesize(text)

    def synthesize_words(self, text: str) -> Iterator[tuple[FloatAudio, list[WordMark]]]:
        if "fail" in text:
            raise EngineError("this text makes the engine fail")
        try:
            yield from self._voice.synthesize_words(text)
            self._log.append("finished")
        finally:
            self._log.append("closed")


class _Engine(ToneEngine):
    """The tone engine, plus a voice "closing" that logs its closes and fails on "fail"."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    def voices(self) -> list[str]:
        return [*super().voices(), "closing"]

    def open_voice(self, name: str) -> object:  # type: ignore[override]
        return _Closing(self, name, self.log) if name == "closing" else super().open_voice(name)


async def _model_task(
    path: str, engine: object, task_status: trio.TaskStatus[trio.CancelScope]
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_model, engine, [sock])
                task_status.started(scope)
    finally:
        sock.close()


@asynccontextmanager
async def model_process(path: str, engine: object) -> AsyncIterator[trio.CancelScope]:
    """A model process serving `engine` at `path`; cancelling the scope it gives stops it
    (and only it: the caller's code goes on)."""
    async with trio.open_nursery() as nursery:
        scope = await nursery.start(_model_task, path, engine)
        yield scope
        scope.cancel()


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "model.sock")


async def test_a_remote_voice_speaks_as_the_engine_does(path: str) -> None:
    local = ToneEngine()
    async with model_process(path, ToneEngine()):
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        try:
            assert (remote.name, remote.device, remote.default_voice) == ("tone", "cpu", "sine")
            assert remote.voices() == local.voices() and remote.synthesis_threads is None
            voice = await trio.to_thread.run_sync(remote.open_voice, "high")
            want = local.open_voice("high")
            assert voice.sample_rate_hz == want.sample_rate_hz
            text = "Hello there, this is a longer piece that comes in several chunks."

            def both() -> tuple[list, list]:  # type: ignore[type-arg]
                return list(voice.synthesize_words(text)), list(want.synthesize_words(text))

            got, expected = await trio.to_thread.run_sync(both)
            assert len(got) == len(expected) > 2
            for (a, marks_a), (b, marks_b) in zip(got, expected, strict=True):
                assert np.array_equal(a, b) and list(marks_a) == list(marks_b)
            whole = await trio.to_thread.run_sync(voice.synthesize, text)
            assert np.array_equal(whole, want.synthesize(text))
        finally:
            remote.close()


async def test_sessions_of_several_daemons_at_once_get_their_own_audio(path: str) -> None:
    local = ToneEngine().open_voice("sine")
    texts = [f"Session {i} says {'la ' * i}and stops." for i in range(12)]
    async with model_process(path, ToneEngine()):
        daemons = [await trio.to_thread.run_sync(RemoteEngine, path) for _ in range(3)]
        got: dict[int, FloatAudio] = {}

        async def speak(i: int) -> None:
            voice = await trio.to_thread.run_sync(daemons[i % 3].open_voice, "sine")
            got[i] = await trio.to_thread.run_sync(voice.synthesize, texts[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(texts)):
                nursery.start_soon(speak, i)
        for d in daemons:
            d.close()
    for i, text in enumerate(texts):
        assert np.array_equal(got[i], local.synthesize(text))


async def test_closing_a_piece_early_stops_it_in_the_model_process(path: str) -> None:
    engine = _Engine()
    async with model_process(path, engine):
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        voice = await trio.to_thread.run_sync(remote.open_voice, "closing")
        link = remote._link

        def first_chunk_only() -> int:
            chunks = voice.synthesize_words("A long piece of text that has many chunks to it.")
            audio, _ = next(chunks)
            chunks.close()  # a barge-in
            return len(audio)

        assert await trio.to_thread.run_sync(first_chunk_only) > 0
        await until(lambda: engine.log == ["closed"])
        # and the connection serves the next piece to its end
        audio = await trio.to_thread.run_sync(voice.synthesize, "Next.")
        assert len(audio) > 0
        await until(lambda: engine.log == ["closed", "finished", "closed"])
        assert remote._link is link and link.alive  # on the same connection all along
        remote.close()


async def test_an_unknown_voice_and_an_engine_error_reach_their_caller_only(path: str) -> None:
    async with model_process(path, _Engine()):
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        with pytest.raises(UnknownVoiceError, match="unknown voice 'nobody'"):
            await trio.to_thread.run_sync(remote.open_voice, "nobody")
        voice = await trio.to_thread.run_sync(remote.open_voice, "closing")
        with pytest.raises(EngineError, match="this text makes the engine fail"):
            await trio.to_thread.run_sync(voice.synthesize, "please fail")
        assert len(await trio.to_thread.run_sync(voice.synthesize, "Fine.")) > 0
        remote.close()


async def test_garbage_on_one_connection_drops_it_and_no_other(path: str) -> None:
    async with model_process(path, ToneEngine()):
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        voice = await trio.to_thread.run_sync(remote.open_voice, "sine")
        link = remote._link
        bad = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await bad.connect(path)
        await bad.send(wire.HEADER.pack(5, 99, 1) + b"x")  # an unknown kind
        with trio.fail_after(5):
            received = b""
            while chunk := await bad.recv(65536):
                received += chunk
        assert wire.Decoder().feed(received)[0].__class__ is wire.Hello  # then closed
        bad.close()
        assert len(await trio.to_thread.run_sync(voice.synthesize, "Still here.")) > 0
        assert remote._link is link and link.alive  # not dropped and connected again
        remote.close()


async def test_a_daemon_serves_its_sessions_through_the_model_process(path: str) -> None:
    from harness import running_daemon

    from duplexd.client.session import open_session

    text = "Through the model process."
    async with model_process(path, ToneEngine()):
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        async with running_daemon(remote) as daemon, open_session(daemon.url) as s:
            uid = await s.say(text)
            spoken = await s.receive_utterance(uid)
        remote.close()
    async with running_daemon(ToneEngine()) as daemon, open_session(daemon.url) as s:
        uid = await s.say(text)
        local = await s.receive_utterance(uid)
    assert spoken.pcm == local.pcm and spoken.frames == local.frames > 10


@pytest.mark.slow
async def test_the_vits_voice_through_the_model_process_is_the_same_audio(path: str) -> None:
    from duplexd.engines.vits import VitsEngine

    engine = await trio.to_thread.run_sync(lambda: VitsEngine(device="cpu", deterministic=True))
    text = "The model process speaks with the same voice."
    want = await trio.to_thread.run_sync(
        lambda: list(engine.open_voice("joe").synthesize_words(text))
    )
    async with model_process(path, engine):
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        voice = await trio.to_thread.run_sync(remote.open_voice, "joe")
        got = await trio.to_thread.run_sync(lambda: list(voice.synthesize_words(text)))
        remote.close()
    engine.close()
    assert len(got) == len(want)
    for (a, marks_a), (b, marks_b) in zip(got, want, strict=True):
        assert np.allclose(a, b, atol=1e-6) and list(marks_a) == list(marks_b)


# ------------------------------------------------------------------ the command line


@pytest.mark.filterwarnings(CLIENT_SOCKET_LEAK)  # the server closes the speaking session
@pytest.mark.usefixtures("collect_leaked_sockets")
async def test_a_model_process_restart_ends_the_sessions_speaking_and_no_other(path: str) -> None:
    from harness import running_daemon

    from duplexd._server.ending import UNAVAILABLE_MESSAGE
    from duplexd.client.errors import ServerError
    from duplexd.client.session import open_session
    from duplexd.protocol import frames as fr

    reached_the_end = False
    async with model_process(path, ToneEngine(compute_ms_per_char=2.0)) as model:
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        async with (
            running_daemon(remote) as daemon,
            open_session(daemon.url) as idle,
            open_session(daemon.url) as speaking,
        ):
            uid = await speaking.say("A long reply. " * 40)
            while not isinstance(await speaking.receive_frame(), fr.Audio):
                pass
            model.cancel()  # the model process dies mid-utterance
            with pytest.raises(ServerError) as failed:
                await speaking.receive_utterance(uid)
            assert failed.value.code == fr.ErrorCode.INTERNAL
            assert failed.value.message == UNAVAILABLE_MESSAGE
            os.unlink(path)  # (left by the model process that died); systemd restarts it:
            async with model_process(path, ToneEngine()):
                spoken = await idle.receive_utterance(await idle.say("Still here."))
                assert spoken.frames > 10 and isinstance(spoken.end, fr.UtteranceDone)
                async with open_session(daemon.url) as fresh:
                    again = await fresh.receive_utterance(await fresh.say("Back."))
                    assert again.frames > 5
        remote.close()
        reached_the_end = True
    assert reached_the_end


class EagerEngine(ToneEngine):
    """A voice "eager" that fails when called, before any chunk (as a phonemizer does), and
    one "slow" whose pieces take longer than the daemon waits (test doubles)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def voices(self) -> list[str]:
        return [*super().voices(), "eager", "slow"]

    def open_voice(self, name: str) -> object:  # type: ignore[override]
        tone = super().open_voice("sine")
        release = self.release

        class Eager:
            sample_rate_hz = tone.sample_rate_hz

            def synthesize(self, text: str) -> FloatAudio:
                return tone.synthesize(text)

            def synthesize_stream(self, text: str) -> Iterator[FloatAudio]:
                raise EngineError("no phonemes for this text")  # not a generator: at once

        class Slow(Eager):
            def synthesize_stream(self, text: str) -> Iterator[FloatAudio]:
                release.wait(10)
                return iter([tone.synthesize(text)])

        voice = {"eager": Eager, "slow": Slow}.get(name)
        if voice is None:
            return tone
        made = voice()
        made.name = name  # type: ignore[attr-defined]
        return made


async def test_an_engine_that_fails_when_called_fails_that_request_only(path: str) -> None:
    async with model_process(path, EagerEngine(threading.Event())):
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        link = remote._link
        eager = await trio.to_thread.run_sync(remote.open_voice, "eager")
        with pytest.raises(EngineError, match="no phonemes for this text"):
            await trio.to_thread.run_sync(eager.synthesize, "Fails.")
        sine = await trio.to_thread.run_sync(remote.open_voice, "sine")
        assert len(await trio.to_thread.run_sync(sine.synthesize, "Fine.")) > 0
        assert remote._link is link and link.alive
        remote.close()


async def test_a_request_not_answered_in_time_fails_alone_and_is_stopped(path: str) -> None:
    release = threading.Event()
    async with model_process(path, EagerEngine(release)):
        remote = await trio.to_thread.run_sync(lambda: RemoteEngine(path, reply_timeout_s=0.3))
        link = remote._link
        slow = await trio.to_thread.run_sync(remote.open_voice, "slow")
        with pytest.raises(ModelGoneError, match=r"did not answer in 0\.3 s"):
            await trio.to_thread.run_sync(slow.synthesize, "Too slow.")
        release.set()
        sine = await trio.to_thread.run_sync(remote.open_voice, "sine")
        assert len(await trio.to_thread.run_sync(sine.synthesize, "Fine.")) > 0
        assert remote._link is link and link.alive
        remote.close()


def _raw(
    path: str,
    *messages: wire.Message,
    until_closed: bool = False,
    until: Callable[[list[wire.Message]], bool] = lambda got: False,
) -> list[wire.Message]:
    """Send `messages` on a fresh connection; the messages that came back (after the hello)
    once `until` holds of them, or the model process closed it (`until_closed`, or the closing
    came first); fails after 5 s without either."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.settimeout(5)
        sock.sendall(b"".join(wire.encode(m) for m in messages))
        decoder, got = wire.Decoder(), []
        try:
            while until_closed or not (got and until(got[1:])):
                if not (data := sock.recv(65536)):
                    break
                got += decoder.feed(data)
        except TimeoutError:
            raise AssertionError(f"after 5 s: {got[1:]} (the connection open)") from None
        return got[1:]


def _failed(got: list[wire.Message]) -> bool:
    return any(isinstance(m, wire.Failed) for m in got)


async def test_a_request_id_used_twice_drops_that_connection(path: str) -> None:
    async with model_process(path, _Engine()):
        speak = wire.Speak(7, "closing", "A piece with a few chunks in it, and then some more.")
        got = await trio.to_thread.run_sync(lambda: _raw(path, speak, speak, until_closed=True))
        assert [type(m) for m in got] in ([], [wire.Chunk])  # then closed


async def test_too_many_requests_are_refused_one_by_one(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from duplexd.engines.remote import server

    monkeypatch.setattr(server, "MAX_REQUESTS", 1)
    async with model_process(path, _Engine()):
        got = await trio.to_thread.run_sync(
            lambda: _raw(
                path,
                wire.Speak(1, "closing", "One long piece. " * 9),
                wire.Speak(2, "sine", "Two."),
                until=lambda got: _failed(got) and any(isinstance(m, wire.Chunk) for m in got),
            )
        )
    refused = [m for m in got if isinstance(m, wire.Failed)]
    assert refused == [wire.Failed(2, wire.OVERLOADED, "too many requests")]
    assert [m.request for m in got if isinstance(m, wire.Chunk)] == [1]


async def test_a_request_no_thread_can_be_had_for_is_refused_and_the_next_served(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests run in threads of trio's cache, reused; when none can be had (the process's
    thread limit) that request alone is refused, OVERLOADED, and the connection serves on."""
    from duplexd.engines.remote import server

    start = trio.lowlevel.start_thread_soon
    calls = 0

    def some_threads(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("can't start new thread")
        start(*args, **kwargs)

    monkeypatch.setattr(server.trio.lowlevel, "start_thread_soon", some_threads)
    async with model_process(path, _Engine()):
        got = await trio.to_thread.run_sync(
            lambda: _raw(
                path,
                wire.Speak(1, "sine", "One."),
                wire.Speak(2, "sine", "Two."),
                until=lambda got: any(isinstance(m, wire.Chunk) for m in got),
            )
        )
    assert got[0] == wire.Failed(1, wire.OVERLOADED, "no thread for it: can't start new thread")
    assert [m.request for m in got if isinstance(m, wire.Chunk)] == [2]


async def test_a_request_never_pulled_is_stopped_after_its_idle_time(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from duplexd.engines.remote import server

    monkeypatch.setattr(server, "IDLE_TIMEOUT_S", 0.1)
    engine = _Engine()
    async with model_process(path, engine):
        got = await trio.to_thread.run_sync(
            lambda: _raw(
                path, wire.Speak(3, "closing", "A piece of several chunks. " * 4), until=_failed
            )
        )
        await until(lambda: engine.log == ["closed"])  # its iterator let go
    assert [type(m) for m in got] == [wire.Chunk, wire.Failed]
    assert got[1] == wire.Failed(3, wire.ENGINE_ERROR, "not pulled for 0.1 s: stopped")


@pytest.mark.filterwarnings(CLIENT_SOCKET_LEAK)  # the server closes the session
@pytest.mark.usefixtures("collect_leaked_sockets")
async def test_any_engine_unavailable_for_now_ends_its_session_with_what_to_do() -> None:
    # not only the model process's: a plugin engine may raise it too (its GPU lost...)
    from harness import running_daemon

    from duplexd._server.ending import UNAVAILABLE_MESSAGE
    from duplexd.client.errors import ServerError
    from duplexd.client.session import open_session
    from duplexd.engines.base import EngineUnavailableError
    from duplexd.protocol import frames as fr

    class Away(ToneEngine):
        def open_voice(self, name: str) -> object:  # type: ignore[override]
            tone = super().open_voice(name)

            class V:
                sample_rate_hz = tone.sample_rate_hz

                def synthesize(self, text: str) -> FloatAudio:
                    raise EngineUnavailableError("the GPU is being reset")

            v = V()
            v.name = tone.name  # type: ignore[attr-defined]
            return v

    async with running_daemon(Away()) as daemon, open_session(daemon.url) as s:
        uid = await s.say("Nobody hears this.")
        with pytest.raises(ServerError) as failed:
            await s.receive_utterance(uid)
    assert failed.value.code == fr.ErrorCode.INTERNAL
    assert failed.value.message == UNAVAILABLE_MESSAGE
