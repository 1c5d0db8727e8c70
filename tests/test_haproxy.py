"""Scale-out: two daemons behind HAProxy (deploy/haproxy.cfg), one drained with SIGTERM.

Skipped when `haproxy` is not installed (.ci/run installs it). Both daemons run the tone
engine with different default voices, so Welcome.voice tells which one took a session.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from test_service import CLIENT_SOCKET_LEAK, http_get, samples, until

from bench.daemon import free_port
from duplexd.client.session import ClientSession, SessionError, UtteranceDone, open_session
from duplexd.protocol import frames as fr

pytestmark = [
    pytest.mark.usefixtures("collect_leaked_sockets"),
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.filterwarnings(CLIENT_SOCKET_LEAK),
]

DEPLOY_CFG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy.cfg"


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]


def haproxy_config(
    lb: int, backends: list[tuple[str, int, int]], *, max_connections_per_10s: int = 100
) -> str:
    """The shipped config with our ports (and connection rate): same balance, checks,
    retries and timeouts."""
    text = DEPLOY_CFG.read_text()
    rate = "sc_http_req_rate(0) gt 100 }"
    assert rate in text
    text = text.replace(rate, f"sc_http_req_rate(0) gt {max_connections_per_10s} }}")
    text = text.replace("bind :8700", f"bind 127.0.0.1:{lb}")
    text = re.sub(r"^\s*server .*\n", "", text, flags=re.M)
    text = re.sub(r"^\s*# server .*\n", "", text, flags=re.M)
    servers = "".join(f"    server {n} 127.0.0.1:{ws} check port {h}\n" for n, ws, h in backends)
    return text.rstrip("\n") + "\n" + servers


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()
    gc.collect()


def start_daemon(voice: str, ws: int, http: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUPLEXD_", "NOTIFY_"))}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "duplexd",
            "serve",
            "--engine=tone",
            f"--voice={voice}",
            f"--port={ws}",
            f"--http-port={http}",
            "--drain-timeout=20",
            "--log-level=warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def start_haproxy(haproxy: str, cfg: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [haproxy, "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


async def wait_ready(port: int, want: tuple[int, str] = (200, "ready\n")) -> None:
    """Poll the daemon's /readyz on `port` until it answers `want` (200 "ready"; a drain:
    503 "draining", said once it accepts no more sessions)."""
    with trio.fail_after(20):
        while True:
            try:
                if await http_get(port, "/readyz") == want:
                    return
            except OSError:
                pass
            await trio.sleep(0.05)


DRAINING = (503, "draining\n")


async def open_haproxy(
    tmp_path: Path,
    procs: list[subprocess.Popen[bytes]],
    backends: list[tuple[str, int, int]],
    lb: int,
    **options: int,
) -> None:
    haproxy = shutil.which("haproxy")
    assert haproxy is not None
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(lb, backends, **options))
    procs.append(start_haproxy(haproxy, cfg))
    with trio.fail_after(10):
        while True:  # HAProxy is starting
            try:
                await (await trio.open_tcp_stream("127.0.0.1", lb)).aclose()
                break
            except OSError:
                await trio.sleep(0.05)


async def test_haproxy_answers_an_address_opening_connections_too_fast_with_429(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The shipped stick table counts upgrades per client address: past the rate, HAProxy
    answers 429 itself (the daemon never sees the connection), and the SDK says so."""
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (.ci/run installs it with apt-get)")
    ws, http, lb = free_ports(3)
    daemon = start_daemon("low", ws, http)
    procs.append(daemon)
    await wait_ready(http)
    await open_haproxy(tmp_path, procs, [("a", ws, http)], lb, max_connections_per_10s=5)
    url = f"ws://127.0.0.1:{lb}/v1"
    for _ in range(5):
        async with open_session(url) as session:
            assert session.welcome.voice == "low"
    with pytest.raises(SessionError) as refused:
        async with open_session(url):
            pass
    assert refused.value.status == 429
    metrics = samples((await http_get(http, "/metrics"))[1])
    assert metrics["duplexd_sessions_total"] == 5  # the sixth never reached the daemon


async def test_two_daemons_behind_haproxy_drain_one(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    if shutil.which("haproxy") is None:
        pytest.skip("haproxy is not installed (.ci/run installs it with apt-get)")
    ws_a, http_a, ws_b, http_b, lb = free_ports(5)
    a = start_daemon("low", ws_a, http_a)
    b = start_daemon("high", ws_b, http_b)
    procs += [a, b]
    await wait_ready(http_a)
    await wait_ready(http_b)
    await open_haproxy(tmp_path, procs, [("a", ws_a, http_a), ("b", ws_b, http_b)], lb)
    url = f"ws://127.0.0.1:{lb}/v1"

    # 20 sessions through the balancer, all open at once
    async with trio.open_nursery() as nursery:
        sessions, results, release = await hold_sessions(nursery, url, 20)
        by_voice = await by_daemon(sessions, http_a, http_b, at_least=3)

        # every session starts an utterance; then daemon A gets SIGTERM mid-utterance
        release.set()
        await until(lambda: sum(s.started for s in sessions) == 20)
        a.send_signal(signal.SIGTERM)
        await wait_ready(http_a, DRAINING)  # (its loop has the signal: it accepts no more)
        # new sessions all land on B (A answers 503, HAProxy retries elsewhere)
        for _ in range(8):
            async with open_session(url) as late:
                assert late.welcome.voice == "high"
    # A's sessions heard their utterance to the end, then were told to go away
    assert sorted(results["going_away"]) == sorted(["low"] * len(by_voice["low"]))
    assert results["done"].count("low") == len(by_voice["low"])
    assert a.wait(20) == 0
    assert b.poll() is None
    m_b = samples((await http_get(http_b, "/metrics"))[1])
    assert m_b["duplexd_sessions_total"] == len(by_voice["high"]) + 8


async def hold_sessions(
    nursery: trio.Nursery, url: str, n: int, spacing_s: float = 0.0
) -> tuple[list[Held], dict[str, list[str]], trio.Event]:
    """Open `n` sessions at `url` (`spacing_s` apart) in `nursery`; once the returned event is
    set, each says a sentence and listens through a drain (`speak_through_drain`, into the
    returned results). Returns when all are open."""
    sessions: list[Held] = []
    results: dict[str, list[str]] = {"done": [], "going_away": []}
    all_open = trio.Event()
    release = trio.Event()

    async def hold() -> None:
        async with open_session(url) as session:
            held = Held(session)
            sessions.append(held)
            if len(sessions) == n:
                all_open.set()
            await release.wait()
            await speak_through_drain(held, results)

    for _ in range(n):
        nursery.start_soon(hold)
        await trio.sleep(spacing_s)
    with trio.fail_after(20):
        await all_open.wait()
    return sessions, results, release


async def by_daemon(
    sessions: list[Held], http_a: int, http_b: int, at_least: int
) -> dict[str, list[Held]]:
    """The sessions by the daemon that took them: A's (voice "low", side port `http_a`) and
    B's ("high"), at least `at_least` each, as each daemon's /metrics counts them too."""
    by_voice = {v: [s for s in sessions if s.voice == v] for v in ("low", "high")}
    counts = {k: len(v) for k, v in by_voice.items()}
    assert counts["low"] >= at_least and counts["high"] >= at_least, counts
    m_a = samples((await http_get(http_a, "/metrics"))[1])
    m_b = samples((await http_get(http_b, "/metrics"))[1])
    assert m_a["duplexd_sessions_active"] == counts["low"]
    assert m_b["duplexd_sessions_active"] == counts["high"]
    return by_voice


class Held:
    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.voice = session.welcome.voice  # which daemon took it
        self.started = False


async def speak_through_drain(held: Held, results: dict[str, list[str]]) -> None:
    """Say ~1.2 s of tone and listen to the end; note how the session ended."""
    uid = await held.session.say("twenty characters...")
    held.started = True
    try:
        while True:
            frame = await held.session.receive_frame()
            if isinstance(frame, UtteranceDone) and frame.utterance_id == uid:
                results["done"].append(held.voice)
                if held.voice == "high":
                    return
    except SessionError as exc:
        if exc.code == fr.ErrorCode.GOING_AWAY:
            results["going_away"].append(held.voice)
        else:
            raise
