"""A user's mistakes, as subprocesses of the real command line: each gets one line on stderr
that says what to do instead (never a traceback) and the documented exit status: 2 for a
mistake in what was typed, 1 for a session the daemon refused or could not be reached."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import TIMEOUT_S, _env, serve, stop

pytestmark = pytest.mark.integration


def duplexd(
    cwd: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duplexd", *args],
        cwd=cwd,
        env={**_env(), **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def daemon_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("daemon")
    with serve(tmp, "--log-format", "json") as daemon:
        event = json.loads(daemon.wait_for_line('"listening"'))
        yield str(event["url"])
        assert stop(daemon) == 0


def one_line(done: subprocess.CompletedProcess[str], status: int, *says: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.returncode == status, (done.returncode, done.stderr)
    for words in says:
        assert words in lines[0], lines[0]


# (the mistake, what is typed (URL is the running daemon's), status, words the line must hold)
SESSION_MISTAKES = [
    ("http scheme", ("say", "hi", "--url", "http://{hostport}/v1"), 2, ("use ws://",)),
    ("not a URL", ("say", "hi", "--url", "{hostport}"), 2, ("write ws://HOST:PORT/v1",)),
    ("wrong path", ("say", "hi", "--url", "ws://{hostport}/v2"), 1, ("HTTP 404", "/v1")),
    (
        "wss to a plain daemon",
        ("say", "hi", "--url", "wss://{hostport}/v1"),
        1,
        ("TLS", "use ws://"),
    ),
    ("unknown voice", ("say", "hi", "--url", "{url}", "--voice", "nosuch"), 1, ("sine",)),
    ("unknown engine", ("say", "hi", "--url", "{url}", "--engine", "nosuch"), 1, ("tone",)),
    ("text over 32 KB", ("say", "a" * 40_000, "--url", "{url}"), 1, ("32768 bytes",)),
    ("empty text", ("say", "", "--url", "{url}"), 2, ("nothing to say", "- to read")),
    ("blank stdin", ("say", "-", "--url", "{url}"), 2, ("nothing to say",)),
    ("no mic file", ("chat", "--url", "{url}", "--mic-file", "nosuch.wav"), 2, ("nosuch.wav",)),
    ("not a WAV", ("chat", "--url", "{url}", "--mic-file", "notwav.wav"), 2, ("not a PCM WAV",)),
]


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [pytest.param(a, s, w, id=name) for name, a, s, w in SESSION_MISTAKES],
)
def test_a_session_mistake_is_one_line(
    daemon_url: str, tmp_path: Path, args: tuple[str, ...], status: int, says: tuple[str, ...]
) -> None:
    (tmp_path / "notwav.wav").write_text("not a wav\n")
    hostport = daemon_url.removeprefix("ws://").removesuffix("/v1")
    typed = [a.format(url=daemon_url, hostport=hostport) for a in args]
    one_line(duplexd(tmp_path, *typed, "--out", str(tmp_path / "x.wav")), status, *says)


def test_a_url_without_a_path_means_v1(daemon_url: str, tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    done = duplexd(
        tmp_path, "say", "hi", "--url", daemon_url.removesuffix("/v1"), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 44


def test_say_reads_standard_input(daemon_url: str, tmp_path: Path) -> None:
    out = tmp_path / "x.wav"
    done = duplexd(tmp_path, "say", "-", "--url", daemon_url, "--out", str(out), stdin="hello\n")
    assert done.returncode == 0, done.stderr
    # tone: "hello\n" is 6 characters x 60 ms, plus the END frame (not the 20 ms of "-")
    assert out.stat().st_size > 44 + 2 * 48_000 * 0.3


def test_serve_on_a_port_in_use_is_one_line_before_the_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = duplexd(tmp_path, "serve", "--engine", "tone", "--port", str(port))
    one_line(done, 2, f"port {port} on 127.0.0.1 is in use", "--port")


def test_serve_with_an_unknown_voice_is_one_line(tmp_path: Path) -> None:
    done = duplexd(tmp_path, "serve", "--engine", "tone", "--voice", "nosuch", "--port", "0")
    one_line(done, 2, "nosuch", "sine")


def test_serve_on_cuda_without_cuda_is_one_line(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the mistake cannot be made here")
    done = duplexd(tmp_path, "serve", "--engine", "vits", "--device", "cuda", "--port", "0")
    one_line(done, 2, "CUDA is not available")


# ---------------------------------------------------------------------- commands finish


def test_chat_answers_typed_lines_and_ends_at_the_end_of_its_input(
    daemon_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "reply.wav"
    done = duplexd(
        tmp_path,
        *("chat", "--url", daemon_url, "--no-mic", "--out", str(out)),
        stdin="What is the weather like?\n",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "you: What is the weather like?" in lines  # to the responder, as speech would
    assert "agent: I cannot see outside, but I hope it is sunny where you are." in lines
    assert lines[-1] == "[done]"
    with wave.open(str(out), "rb") as w:  # the reply was spoken before it ended
        assert w.getnframes() / w.getframerate() > 3.0


def test_chat_ends_when_its_microphone_file_is_done(daemon_url: str, tmp_path: Path) -> None:
    mic = tmp_path / "silence.wav"
    with wave.open(str(mic), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(bytes(2 * 16_000))
    done = duplexd(tmp_path, "chat", "--url", daemon_url, "--mic-file", str(mic), "--out", "r.wav")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[done]"


# ---------------------------------------------------------------------- the SDK's typed errors


# trio-websocket 0.12's client leaks its socket when the server refuses the upgrade
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)
@pytest.mark.usefixtures("collect_leaked_sockets")
async def test_the_sdk_says_which_kind_of_failure_it_was(daemon_url: str) -> None:
    import trio

    from duplexd import ConnectError, HandshakeRejected, ServerError, SessionError, open_session
    from duplexd.protocol.frames import ErrorCode

    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(ServerError) as refused:
            async with open_session(daemon_url, voice="nosuch"):
                pass
        assert refused.value.code == ErrorCode.UNKNOWN_VOICE
        assert "sine" in refused.value.message
        with pytest.raises(HandshakeRejected) as rejected:
            async with open_session(daemon_url.replace("/v1", "/v2")):
                pass
        assert rejected.value.status == 404 and "/v1" in rejected.value.reason
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(ConnectError):
            async with open_session(f"ws://127.0.0.1:{port}"):
                pass
        assert issubclass(ConnectError, SessionError) and issubclass(ServerError, SessionError)


# ---------------------------------------------------------------------- config --check


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--engine", "tone", "--voice", "nosuch"), {}, "engine.voice: unknown voice 'nosuch'"),
        (("--engine", "vits"), {"DUPLEXD_ENGINE__PRELOAD": "joe,amy"}, "engine.preload: unknown"),
        (("--engine", "nope"), {}, "engine.name"),
    ],
    ids=["tone voice", "vits preload", "engine"],
)
def test_config_check_finds_what_serve_would_fail_on(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    one_line(duplexd(tmp_path, "config", "--check", *args, env=env), 2, says)


def test_config_check_passes_what_serve_would_start_with(tmp_path: Path) -> None:
    done = duplexd(tmp_path, "config", "--check", "--engine", "tone", "--voice", "low")
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.slow
def test_say_writes_a_file_as_fast_as_it_is_synthesized(daemon_url: str, tmp_path: Path) -> None:
    """Unpaced delivery (SPEC §4.6.2): 30 s of tone audio is not received in 30 s."""
    out = tmp_path / "long.wav"
    text = "the quick answer is that we can ship it on monday " * 10  # 500 characters
    started = time.monotonic()
    done = duplexd(tmp_path, "say", "-", "--url", daemon_url, "--out", str(out), stdin=text)
    took_s = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    with wave.open(str(out), "rb") as w:
        audio_s = w.getnframes() / w.getframerate()
    assert audio_s > 29.0
    assert took_s < audio_s / 3  # (real time: generous, on a loaded CI box it is ~1-2 s)


def test_chat_says_so_when_the_llm_cannot_be_reached(daemon_url: str, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        llm = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    done = duplexd(
        tmp_path,
        *("chat", "--url", daemon_url, "--no-mic", "--out", "r.wav", "--llm-url", llm),
        stdin="hello\n",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("[llm error] cannot connect to 127.0.0.1:") for line in lines)
    assert "agent: Sorry, I could not get an answer." in lines  # not an empty "agent:" line
