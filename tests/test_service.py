"""The operated daemon in-process: side port, metrics after real sessions, drain, limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import attrs
import pytest
import trio
from harness import http_request, running_service
from prometheus_client.parser import text_string_to_metric_families

from duplexd._ops.settings import Settings, load_settings
from duplexd._server.service import Phase, Service
from duplexd._server.startup import StartupError
from duplexd.client.session import Interrupted, SessionError, UtteranceDone, open_session
from duplexd.engines.registry import EngineSet
from duplexd.engines.tone import ToneEngine
from duplexd.protocol import frames as fr

# trio-websocket 0.12's client never closes its TCP socket when the server closes first or
# rejects the upgrade (it waits for the server's TCP close, then forgets the stream); these
# tests make the server do exactly that, so the client socket's ResourceWarning is expected.
CLIENT_SOCKET_LEAK = (
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
pytestmark = [
    pytest.mark.usefixtures("collect_leaked_sockets"),
    pytest.mark.integration,
    pytest.mark.filterwarnings(CLIENT_SOCKET_LEAK),
]


async def http_get(port: int, path: str) -> tuple[int, str]:
    status, _, body = await http_request(port, path, host="x")
    return status, body.decode()


async def until(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Poll (real time) until `predicate()` is true."""
    with trio.fail_after(timeout_s):
        while True:
            if predicate():
                return
            await trio.sleep(0.01)


def samples(text: str) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def settings(**server: object) -> Settings:
    base = load_settings(overrides={"server": {"port": 0}, "engine": {"name": "tone"}})
    return attrs.evolve(base, server=attrs.evolve(base.server, **server))


def running(s: Settings) -> AbstractAsyncContextManager[Service]:
    return running_service(s)


async def test_health_ready_and_metrics_after_sessions() -> None:
    async with running(settings()) as service:
        assert service.http_port and service.daemon
        port, url = service.http_port, service.daemon.url
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert await http_get(port, "/readyz") == (200, "ready\n")
        assert (await http_get(port, "/nope"))[0] == 404

        async with open_session(url) as session:
            uid = await session.say("Hello there.")
            spoken = await session.receive_utterance(uid)
            assert isinstance(spoken.end, UtteranceDone)
            await session.say("A longer sentence that is still playing when we barge in.")
            while not isinstance(await session.receive_frame(), fr.Audio):
                pass
            interrupted = await session.interrupt()
            assert isinstance(interrupted, Interrupted)
            status, text = await http_get(port, "/metrics")  # one session live
            live = samples(text)
            assert live["duplexd_sessions_active"] == 1
        async with open_session(url) as session:
            await session.receive_utterance(await session.say("Bye."))

        await until(lambda: not service.daemon.sessions)
        status, text = await http_get(port, "/metrics")
        assert status == 200
        m = samples(text)
        assert m["duplexd_sessions_total"] == 2
        assert m["duplexd_sessions_active"] == 0
        assert m["duplexd_utterances_total"] == 3
        assert m["duplexd_interrupts_total"] == 1
        assert m["duplexd_frames_sent_total"] > 20
        # every frame is timed against its deadline but an utterance's first when the kick that
        # started its grid sent it (first audio's, not pacing's; one that follows another on
        # the same grid goes out on a tick: counted)
        frames, paced = m["duplexd_frames_sent_total"], m["duplexd_pacing_error_seconds_count"]
        assert frames - 3 <= paced < frames
        assert m["duplexd_first_audio_latency_seconds_count"] == 3
        assert 0 < m["duplexd_first_audio_latency_seconds_sum"] < 3
        assert m["duplexd_interrupt_latency_seconds_count"] == 1
        assert m["duplexd_interrupt_latency_seconds_bucket{le=+Inf}"] == 1
        assert m["duplexd_vad_barge_in_latency_seconds_count"] == 0  # declared
        assert m["duplexd_engine_audio_seconds_total"] > 0
        assert m["duplexd_ready"] == 1
        # totals folded in from ended sessions only grow
        assert live["duplexd_frames_sent_total"] <= m["duplexd_frames_sent_total"]


async def test_asr_model_is_loaded_and_warm_before_ready() -> None:
    # the first turn must not pay for loading Whisper: the daemon loads and runs it first
    async with running(settings()) as service:
        services = service.uplink_services
        assert services is not None and services.transcriber is not None
        assert services.transcriber.loaded
        assert services.transcriber.calls == 0  # the warm-up decode is not a transcript


async def test_a_bad_asr_model_stops_the_start() -> None:
    s = settings()
    s = attrs.evolve(s, asr=attrs.evolve(s.asr, model="/nonexistent/whisper"))
    service = Service(
        s, engines=EngineSet.of(ToneEngine()), handle_signals=False, http_port=0, environ={}
    )
    leaf = pytest.RaisesExc(StartupError, match=r"^asr\.model: no faster-whisper model in ")
    with pytest.RaisesGroup(leaf, flatten_subgroups=True):  # from the service's nursery
        await service.run()
    assert service.phase is Phase.STOPPED


async def test_max_sessions_makes_it_unready_and_rejects() -> None:
    async with running(settings(max_sessions=1)) as service:
        assert service.http_port and service.daemon
        async with open_session(service.daemon.url):
            status, body = await http_get(service.http_port, "/readyz")
            assert (status, body) == (503, "full: 1 of 1 sessions\n")
            # for the workers' shared readiness port it answers for the host: full is this
            # worker, not the host (the others may have room)
            assert service.readiness(host=True) == (True, "ready")
            with pytest.raises(
                SessionError, match=r"HTTP 503: duplexd is full \(1 sessions\)$"
            ) as info:
                async with open_session(service.daemon.url):
                    pass
            assert info.value.status == 503
        m = samples((await http_get(service.http_port, "/metrics"))[1])
        assert m["duplexd_sessions_rejected_total{reason=full}"] == 1


async def test_connections_take_turns_at_the_configured_churn_rate() -> None:
    """`server.churn_per_s` reaches the daemon: at 4 a second, one at a time, of three
    connections opened one right after another the last is accepted at least a turn (0.25 s)
    after the one before it, and the waits are in /metrics."""
    async with running(settings(churn_per_s=4.0, churn_burst=1)) as service:
        assert service.http_port and service.daemon
        url = service.daemon.url
        t0 = trio.current_time()
        async with open_session(url), open_session(url), open_session(url):
            assert trio.current_time() - t0 >= 0.24
        m = samples((await http_get(service.http_port, "/metrics"))[1])
        assert m["duplexd_churn_waits_total"] >= 1
        assert m["duplexd_churn_wait_seconds_total"] >= 0.2


async def test_drain_finishes_utterances_then_goes_away() -> None:
    async with trio.open_nursery() as outer:
        service = Service(
            settings(drain_timeout_s=10.0),
            engines=EngineSet.of(ToneEngine()),
            handle_signals=False,
            http_port=0,
            environ={},
        )
        await outer.start(lambda task_status: _start(service, task_status))
        assert service.daemon and service.http_port
        url, port = service.daemon.url, service.http_port
        async with open_session(url) as idle, open_session(url) as busy:
            uid = await busy.say("Twelve chars.")  # 0.78 s of tone
            while not isinstance(await busy.receive_frame(), fr.Audio):
                pass
            t0 = time.monotonic()
            service.request_stop()
            await trio.sleep(0.1)
            assert await http_get(port, "/readyz") == (503, "draining\n")
            with pytest.raises(
                SessionError, match=r"HTTP 503: duplexd is draining: try another instance$"
            ):
                async with open_session(url):
                    pass
            # the idle session is told to go away at once
            with pytest.raises(SessionError) as info:
                while True:
                    await idle.receive_frame()
            assert info.value.code == fr.ErrorCode.GOING_AWAY
            assert idle._ws.closed is not None and idle._ws.closed.code == 1001
            # the busy one hears its utterance to the end first
            frames = []
            with pytest.raises(SessionError) as info:
                while True:
                    frames.append(await busy.receive_frame())
            assert info.value.code == fr.ErrorCode.GOING_AWAY
            done = [f for f in frames if isinstance(f, UtteranceDone)]
            assert [d.utterance_id for d in done] == [uid]
            assert busy._ws.closed is not None and busy._ws.closed.code == 1001
            assert time.monotonic() - t0 < 8  # when its utterance ended, not the 10 s drain
        await until(lambda: service.phase is Phase.STOPPED)


async def _start(service: Service, task_status: trio.TaskStatus[None]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        task_status.started()


async def test_drain_timeout_cuts_long_utterances() -> None:
    async with trio.open_nursery() as outer:
        service = Service(
            settings(drain_timeout_s=0.3),
            engines=EngineSet.of(ToneEngine()),
            handle_signals=False,
            environ={},
        )
        await outer.start(lambda task_status: _start(service, task_status))
        assert service.daemon
        async with open_session(service.daemon.url) as busy:
            await busy.say("x" * 200)  # 12 s of tone
            while not isinstance(await busy.receive_frame(), fr.Audio):
                pass
            service.request_stop()
            with trio.fail_after(3), pytest.raises(SessionError) as info:
                while True:
                    await busy.receive_frame()
            assert info.value.code == fr.ErrorCode.GOING_AWAY
