"""The model process as operated: `duplexd serve-model` and `serve --model-socket` from the
command line (their mistakes as one line and exit status 2), a daemon's readiness following its
model process (a real round trip, connected again after a restart), and the model process's
side port (/readyz, /metrics)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from test_model_process import _failed, _raw, model_process
from test_service import CLIENT_SOCKET_LEAK, until

from duplexd.client.errors import SessionError
from duplexd.engines.base import UnknownVoiceError
from duplexd.engines.remote import RemoteEngine, wire
from duplexd.engines.tone import ToneEngine

pytestmark = pytest.mark.unit


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "model.sock")


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXD_")}
    return subprocess.run(
        [sys.executable, "-m", "duplexd", *args], capture_output=True, text=True,
        timeout=timeout_s, env=env,
    )  # fmt: skip


@pytest.mark.integration
def test_serve_model_without_a_socket_says_what_to_set() -> None:
    r = run_cli("serve-model", "--engine", "tone")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        "duplexd: no socket to listen on: set [engine] model_socket (or --model-socket PATH)"
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    "flags", [("--max-sessions", "4"), ("--port=9000",), ("--tls-cert", "c.pem")]
)
def test_serve_model_refuses_the_daemons_flags_in_one_line(flags: tuple[str, ...]) -> None:
    r = run_cli("serve-model", "--engine", "tone", *flags)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    flag = flags[0].split("=")[0]
    assert r.stderr.strip() == (
        f"duplexd serve-model: {flag} is for the daemons (duplexd serve), not the model"
        " process: it takes --config, --engine, --device, --voice, --model-socket,"
        " --host/--http-host, --http-port, --drain-timeout, --insecure-no-auth and --log-*"
    )


@pytest.mark.integration
def test_serve_model_on_a_public_host_takes_insecure_no_auth() -> None:
    """Its side port falls back to --host; a host that is not loopback with no auth set up
    asks for --insecure-no-auth, which serve-model takes (it starts, then finds no socket)."""
    r = run_cli("serve-model", "--engine", "tone", "--host", "0.0.0.0")
    assert r.returncode == 2 and "--insecure-no-auth" in r.stderr
    r = run_cli("serve-model", "--engine", "tone", "--host", "0.0.0.0", "--insecure-no-auth")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        "duplexd: no socket to listen on: set [engine] model_socket (or --model-socket PATH)"
    )


@pytest.mark.integration
def test_serve_model_refuses_a_path_that_is_not_a_socket(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    r = run_cli("serve-model", "--engine", "tone", "--model-socket", str(tmp_path / "file"))
    assert r.returncode == 2 and "is not a socket: choose another model_socket" in r.stderr


@pytest.mark.integration
def test_serve_with_no_model_process_there_says_what_to_start(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    r = run_cli("serve", "--model-socket", sock, "--port", "0", "--http-port", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"duplexd: no model process at {sock} (No such file or directory): start `duplexd"
        " serve-model` (deploy/duplexd-model.service) or fix [engine] model_socket"
    )


@pytest.mark.integration
def test_a_relative_model_socket_is_a_config_error() -> None:
    r = run_cli("config", "--check", "--engine", "tone", "--model-socket", "model.sock")
    assert r.returncode == 2
    assert "engine.model_socket: must be an absolute path" in r.stderr


async def test_a_daemon_is_not_ready_while_its_model_process_does_not_answer(path: str) -> None:
    import attrs
    from harness import http_request, inline_uplink_services
    from test_service import settings

    from duplexd._server.service import MODEL_CHECK_S, Service
    from duplexd.engines.registry import EngineSet

    async def readyz(port: int, *, until_ready: bool) -> tuple[int, bytes]:
        """/readyz's answer once it is (or is no longer) ready, within 5 checks."""
        for _ in range(round(5 * MODEL_CHECK_S / 0.05)):
            status, _, body = await http_request(port, "/readyz")
            if (status == 200) == until_ready:
                break
            await trio.sleep(0.05)
        return status, body

    base = settings()
    config = attrs.evolve(base, engine=attrs.evolve(base.engine, model_socket=path))
    async with model_process(path, ToneEngine()) as model:
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        service = Service(
            config,
            engines=EngineSet.of(remote),
            uplink_services=inline_uplink_services(),
            handle_signals=False,
            http_port=0,
            environ={},
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            port = service.http_port
            assert await readyz(port, until_ready=True) == (200, b"ready\n")
            model.cancel()  # the model process goes away
            got = await readyz(port, until_ready=False)
            assert got == (503, b"the model process does not answer\n")
            os.unlink(path)
            async with model_process(path, ToneEngine()):  # back: ready again, connected
                assert await readyz(port, until_ready=True) == (200, b"ready\n")
                assert remote._link is not None and remote._link.alive
                service.request_stop()
        remote.close()


@pytest.mark.filterwarnings(CLIENT_SOCKET_LEAK)  # the server closes the waiting session
@pytest.mark.usefixtures("collect_leaked_sockets")
async def test_a_daemon_whose_model_process_is_down_stops_without_waiting_for_it(
    path: str,
) -> None:
    """A reply asked while the model process is down waits for the next one (`[engine]
    model_wait_s`, 60 s: longer than systemd gives a stop); a daemon told to stop meanwhile
    closes its engine after its drain, which ends that wait, and stops in seconds."""
    import attrs
    from harness import inline_uplink_services
    from test_service import settings

    from duplexd._server.service import Service

    base = settings(drain_timeout_s=0.5)
    config = attrs.evolve(base, engine=attrs.evolve(base.engine, model_socket=path))
    service = Service(
        config, uplink_services=inline_uplink_services(), handle_signals=False, environ={}
    )
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[None]) -> None:
        await service.run(task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        async with model_process(path, ToneEngine()) as model:
            await nursery.start(run)  # (it loads the model process's engine itself)
            assert service.daemon is not None
            session = await nursery.start(_open, service.daemon.url)  # (its voice opened)
            model.cancel()  # the model process goes away ...
        os.unlink(path)  # ... and its next one does not come
        await session.say("A reply that waits for a model process.")
        await trio.sleep(0.5)  # its synthesis thread waits to connect
        started = trio.current_time()
        service.request_stop()
        with trio.fail_after(10):
            await stopped.wait()
        assert trio.current_time() - started < 20.0  # drain 0.5 s, grace 2 s: not 60
        nursery.cancel_scope.cancel()


async def _open(url: str, task_status: trio.TaskStatus[Any]) -> None:
    """A session on `url`, handed over open; kept until cancelled or closed by the server."""
    from duplexd.client.session import open_session

    with contextlib.suppress(SessionError, trio.BrokenResourceError):
        async with open_session(url) as session:
            task_status.started(session)
            await trio.sleep_forever()


async def test_serve_model_reports_what_it_did_on_its_side_port(path: str) -> None:
    import attrs
    from harness import http_request
    from test_service import samples, settings

    from duplexd._server.model import run_model_service

    base = settings()
    config = attrs.evolve(base, engine=attrs.evolve(base.engine, model_socket=path))
    async with trio.open_nursery() as nursery:
        where, port = await nursery.start(
            lambda task_status: run_model_service(
                config, handle_signals=False, http_port=0, task_status=task_status
            )
        )
        assert where == path and oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert (await http_request(port, "/readyz"))[::2] == (200, b"ready\n")
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        voice = await trio.to_thread.run_sync(remote.open_voice, "sine")
        audio = await trio.to_thread.run_sync(voice.synthesize, "Counted.")
        with pytest.raises(UnknownVoiceError):
            await trio.to_thread.run_sync(remote.open_voice, "nobody")
        refused = await trio.to_thread.run_sync(lambda: _raw(path, wire.Done(9), until=_failed))
        assert refused == [wire.Failed(9, wire.BAD_REQUEST, "not a request")]
        with trio.fail_after(5):  # (the refused connection is counted until the model
            while True:  # process has read its end: a moment after `_raw` closed it)
                status, _, body = await http_request(port, "/metrics")
                if samples(body.decode())["duplexd_model_connections"] == 1:
                    break
                await trio.sleep(0.01)
        remote.close()
        nursery.cancel_scope.cancel()
    assert status == 200
    got = samples(body.decode())
    assert got["duplexd_model_requests_total"] == 3  # two voices opened, one piece
    assert got["duplexd_model_chunks_total"] >= 2
    assert got["duplexd_model_audio_seconds_total"] == pytest.approx(len(audio) / 48_000)
    assert got["duplexd_model_failures_total{reason=unknown_voice}"] == 1
    assert got["duplexd_model_failures_total{reason=engine_error}"] == 0
    assert got["duplexd_model_failures_total{reason=bad_request}"] == 1
    assert got["duplexd_model_connections"] == 1 and got["duplexd_model_engine_seconds_total"] > 0
    assert not await trio.Path(path).exists()  # its socket file removed as it stopped


async def test_a_model_process_that_greets_but_never_answers_fails_the_check_quickly(
    path: str,
) -> None:
    hello = wire.encode(ToneEngine_hello())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    held: list[socket.socket] = []

    def wedged() -> None:  # greets, then reads and answers nothing (its engine hung)
        conn, _ = listener.accept()
        held.append(conn)
        conn.sendall(hello)

    thread = threading.Thread(target=wedged)
    thread.start()
    remote = await trio.to_thread.run_sync(RemoteEngine, path)
    await trio.to_thread.run_sync(thread.join)
    link = remote._link
    with trio.fail_after(2):
        assert not await trio.to_thread.run_sync(lambda: remote.check_model_process(0.2))
    assert remote._link is link and link.alive  # connected, but not answering: not ready
    remote.close()
    for conn in (*held, listener):
        conn.close()


async def test_a_link_closed_by_another_thread_is_closed_by_its_reader(path: str) -> None:
    """close() from another thread while the reader runs (here held in its decoder) only
    shuts the socket down; the reader closes it on its way out. (Closed under a recv() that
    has read the descriptor's number but not yet made its system call, the number could go to
    the next connection first: the old reader would read the new link.)"""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    held: list[socket.socket] = []

    def greets() -> None:
        conn, _ = listener.accept()
        held.append(conn)
        conn.sendall(wire.encode(ToneEngine_hello()))

    thread = threading.Thread(target=greets)
    thread.start()
    remote = await trio.to_thread.run_sync(RemoteEngine, path)
    await trio.to_thread.run_sync(thread.join)
    link = remote._link
    assert link is not None
    in_feed, go_on = threading.Event(), threading.Event()

    class Held:
        def feed(self, data: bytes) -> list[wire.Message]:
            in_feed.set()
            go_on.wait(5.0)
            return []

    link._decoder = Held()  # type: ignore[assignment]
    held[0].sendall(b"\0")  # the reader takes it and is held in feed()
    assert await trio.to_thread.run_sync(in_feed.wait, 5.0)
    remote.close()  # from this thread
    assert not link.alive and link._sock.fileno() != -1  # shut down, not closed: the reader's
    go_on.set()
    await trio.to_thread.run_sync(link._reader.join, 5.0)
    assert not link._reader.is_alive() and link._sock.fileno() == -1  # the reader closed it
    link.close()  # again: nothing
    for conn in (*held, listener):
        conn.close()


def ToneEngine_hello() -> wire.Hello:
    from duplexd.engines.remote.server import engine_hello

    return engine_hello(ToneEngine())


@pytest.mark.integration
def test_serve_model_refuses_a_side_port_without_the_auth_it_is_asked_for(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice:" + "t" * 40 + "\n")
    tokens.chmod(0o600)
    r = subprocess.run(
        [sys.executable, "-m", "duplexd", "serve-model", "--engine", "tone", "--http-port", "1",
         "--model-socket", str(tmp_path / "m.sock")],
        capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("DUPLEXD_")},
             "DUPLEXD_AUTH__METRICS_REQUIRE_AUTH": "true",
             "DUPLEXD_AUTH__TOKEN_FILE": str(tokens)},
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "serve-model's side port has no token check and no TLS" in r.stderr


def _serve_model(path: str, log: Path) -> subprocess.Popen[bytes]:
    """`duplexd serve-model` (tone engine, 2 ms of work a character: an utterance takes a
    while to make) at `path`, logging to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXD_")}
    argv = [sys.executable, "-m", "duplexd", "serve-model", "--engine", "tone",
            "--tone-compute-ms-per-char", "2", "--model-socket", path,
            "--log-format", "json"]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env)


async def _logged(proc: subprocess.Popen[bytes], log: Path, event: bytes) -> None:
    """Wait until `proc` logs `event` (JSON lines in `log`)."""
    needle = b'"event":"' + event + b'"'
    await until(lambda: needle in log.read_bytes() or proc.poll() is not None, timeout_s=60)
    text = await trio.Path(log).read_bytes()
    assert needle in text, text.decode()


UNPACED = {"downlink": {"paced": False}}  # (frames as soon as made: no waiting for playback)


@pytest.mark.integration
async def test_a_model_process_restart_ends_no_session_and_loses_no_word(
    path: str, tmp_path: Path
) -> None:
    """systemd's restart of the model process (SIGTERM, wait for it to exit, start the next):
    the utterance being made finishes whole on the old one, one asked for meanwhile waits for
    the next one, and every session stays."""
    import json
    import signal

    from harness import running_daemon

    from duplexd.client.session import open_session
    from duplexd.protocol import frames as fr

    logs = [tmp_path / "model-1.log", tmp_path / "model-2.log"]
    old = _serve_model(path, logs[0])
    new: subprocess.Popen[bytes] | None = None
    try:
        await _logged(old, logs[0], b"listening")
        remote = await trio.to_thread.run_sync(RemoteEngine, path)
        text = "A reply that is made piece by piece, and goes on for a few seconds. " * 2
        async with (
            running_daemon(remote) as daemon,
            open_session(daemon.url) as speaking,
            open_session(daemon.url, options=UNPACED) as asking,
            open_session(daemon.url, options=UNPACED) as idle,
        ):
            uid = await speaking.say(text)
            while not isinstance(first := await speaking.receive_frame(), fr.Audio):
                pass
            old.send_signal(signal.SIGTERM)  # `systemctl restart duplexd-model`: stop ...
            await _logged(old, logs[0], b"leaving")
            asked = await asking.say("Asked while the model process restarts.")
            assert await trio.to_thread.run_sync(old.wait, 30) == 0
            new = _serve_model(path, logs[1])  # ... then start the next one
            spoken = await speaking.receive_utterance(uid)
            answered = await asking.receive_utterance(asked)
            again = await idle.receive_utterance(await idle.say(text))  # the new one's, whole
        remote.close()
    finally:
        for proc in (old, new):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert isinstance(spoken.end, fr.UtteranceDone) and isinstance(answered.end, fr.UtteranceDone)
    assert first.pcm + spoken.pcm == again.pcm  # every word of it, as if unbroken
    assert answered.frames > 10
    events = [json.loads(line) for line in logs[0].read_text().splitlines()]
    leaving = next(e for e in events if e["event"] == "leaving")
    left = next(e for e in events if e["event"] == "left")
    assert leaving["daemons"] == 1 and left["daemons_still_connected"] == 0
