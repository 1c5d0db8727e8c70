"""Start and stop the servers under test, and read their CPU and memory from /proc.

A server is any command that logs a JSON line ``{"event": "listening", "url": ...}`` on stderr
(`python -m duplexd serve --log-format json` and `python -m bench.baselines.asyncio_server`).
Its stderr goes to a temporary file, so a chatty server can never block on a full pipe.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .cpus import pin

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class ServerFailed(RuntimeError):
    """The server exited or did not start listening in time."""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log_path: str
    last_log: str = ""  # the log's tail, kept by `stop` (which deletes the log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 20) -> str:
        """The log's last `n` lines (after `stop`: the 20 it kept)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return self.last_log

    def stop(self, timeout_s: float = 5.0) -> bool:
        """SIGTERM, then SIGKILL after `timeout_s`. False if it had to be killed."""
        clean = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                clean = False
                self.proc.kill()
                self.proc.wait()
        self.last_log = self.log_tail()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)
        return clean


def start_server(
    name: str,
    argv: list[str],
    *,
    timeout_s: float = 120.0,
    cpus: frozenset[int] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> Server:
    """Run `argv` (pinned to `cpus`, if any: `bench.cpus`) and wait for its "listening" log
    line; raises ServerFailed."""
    fd, log_path = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=pass_fds
        )
    pin(proc.pid, cpus)  # before it starts a thread: every later one inherits the mask
    deadline = time.monotonic() + timeout_s
    offset = 0
    while time.monotonic() < deadline:
        with open(log_path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        lines = chunk.split(b"\n")
        for line in lines[:-1]:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("event") == "listening":
                return Server(name, proc, str(record["url"]), log_path)
        offset += len(chunk) - len(lines[-1])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    server = Server(name, proc, "", log_path)
    tail = server.log_tail()
    server.stop()
    raise ServerFailed(f"{name} did not start listening (exit {proc.poll()}):\n{tail}")


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket, as systemd's `ListenStream=` makes one for the workers."""
    sock = socket.create_server((host, port), backlog=4096)
    sock.set_inheritable(True)
    return sock


_LOWEST_FREE_PORT = 20_000
_free_ports: Iterator[int] | None = None


def _ports_below_the_ephemeral_range() -> Iterator[int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768  # (Linux's default; elsewhere a guess)
    first = min(_LOWEST_FREE_PORT, low - 1_000)
    ports = list(range(first, low))
    start = random.randrange(len(ports))  # (two runs at once rarely walk the same ports)
    return itertools.cycle(ports[start:] + ports[:start])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing holds now, for a server that a subprocess binds by
    number. It comes from below the kernel's ephemeral range
    (/proc/sys/net/ipv4/ip_local_port_range), each one once per run: a port from bind(0) can be
    handed to another socket (another bind(0), an outgoing connection) between the pick and the
    server's bind ("Address already in use"), one below that range only to whoever asks for it
    by number."""
    global _free_ports
    if _free_ports is None:
        _free_ports = _ports_below_the_ephemeral_range()
    for _ in range(1_000):
        port = next(_free_ports)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise OSError(f"no free TCP port on {host} below the ephemeral range")


def start_worker(
    name: str,
    sock: socket.socket,
    argv: list[str],
    *,
    cpus: frozenset[int] | None = None,
    ready: socket.socket | None = None,
    sock_name: str = "duplexd-workers.socket",
) -> Server:
    """Run `argv` (a `duplexd serve`) as systemd runs a worker of deploy/duplexd-workers.socket:
    `sock` as fd 3 (and `ready`, the shared readiness port of
    deploy/duplexd-workers-ready.socket, as fd 4), `LISTEN_FDS`, `LISTEN_FDNAMES` and
    `LISTEN_PID` its own PID (a shim that `exec`s it, so the PID stays); waits for its
    "listening" line as `start_server`. `sock_name`: the name `sock` is passed by (its
    socket unit's `FileDescriptorName=`)."""
    fds = [sock.fileno()] + ([ready.fileno()] if ready is not None else [])
    names = [sock_name, "ready"][: len(fds)]
    # each passed descriptor copied above all of them first (so none is overwritten before it
    # is copied), the originals closed, then the copies moved to 3, 4
    shim = (
        "import fcntl, os, sys\n"
        f"fds = {fds}\n"
        "low = max(fds + [2 + len(fds)]) + 1\n"
        "tmp = [fcntl.fcntl(fd, fcntl.F_DUPFD, low) for fd in fds]\n"
        "for fd in fds: os.close(fd)\n"
        "for i, fd in enumerate(tmp): os.dup2(fd, 3 + i); os.close(fd)\n"
        f"os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='{len(fds)}',"
        f" LISTEN_FDNAMES='{':'.join(names)}')\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    argv = [sys.executable, "-c", shim, *argv]
    return start_server(name, argv, cpus=cpus, pass_fds=tuple(fds))


def duplexd_argv(engine: str, device: str, *, model_socket: str = "") -> list[str]:
    """A `duplexd serve` of `engine` on `device`; with `model_socket`, one that uses the model
    process there (`model_argv`) instead."""
    return [
        sys.executable,
        "-m",
        "duplexd",
        "serve",
        "--engine",
        engine,
        "--device",
        device,
        *(("--model-socket", model_socket) if model_socket else ()),
        "--port",
        "0",
        "--max-sessions",
        "0",  # the bench measures capacity: no admission limit
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]


def model_argv(engine: str, device: str, model_socket: str) -> list[str]:
    """A `duplexd serve-model` of `engine` on `device`, listening at `model_socket` (it logs
    "listening" as a daemon does, so `start_server` waits for it)."""
    return [sys.executable, "-m", "duplexd", "serve-model", "--model-socket", model_socket,
            "--engine", engine, "--device", device,
            "--log-format", "json", "--log-level", "info"]  # fmt: skip


def baseline_argv() -> list[str]:
    return [sys.executable, "-m", "bench.baselines.asyncio_server", "--port", "0"]


class ProcSampler:
    """CPU time (all threads) and RSS of one process, or the sum over several (workers),
    from /proc/PID; and how often its main thread (the event loop) went to sleep and was woken:
    its voluntary context switches. On a VM a wake-up is what costs (a few tens of us of CPU
    each, before any work is done), so wake-ups a second explain much of a server's CPU. (A
    main thread that waits for the GIL a worker thread holds switches too: with synthesis in
    threads the count is an upper bound of the loop's own wake-ups.)"""

    def __init__(self, pid: int | tuple[int, ...]) -> None:
        self.pids = (pid,) if isinstance(pid, int) else pid
        self._cpu0 = self._kernel0 = 0.0
        self._wakeups0 = 0
        self._wall0 = 0.0
        self.rss_max_mb = 0.0

    def _times(self) -> tuple[float, float]:
        user = kernel = 0.0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            user += int(fields[11]) / CLK_TCK  # utime
            kernel += int(fields[12]) / CLK_TCK  # stime
        return user, kernel

    def cpu_seconds(self) -> float:
        user, kernel = self._times()
        return user + kernel

    def _status_sum(self, key: str) -> int:
        """The sum over the processes of one number of /proc/PID/status (`key` with its colon)."""
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith(key):
                            total += int(line.split()[1])
            except OSError:
                pass
        return total

    def wakeups(self) -> int:
        """The main threads' voluntary context switches (/proc/PID/status: the leader's own)."""
        return self._status_sum("voluntary_ctxt_switches:")

    def rss_mb(self) -> float:
        return self._status_sum("VmRSS:") / 1024

    def start(self) -> None:
        user, self._kernel0 = self._times()
        self._cpu0, self._wall0 = user + self._kernel0, time.monotonic()
        self._wakeups0 = self.wakeups()
        self.rss_max_mb = self.rss_mb()

    def sample(self) -> None:
        self.rss_max_mb = max(self.rss_max_mb, self.rss_mb())

    def cpu_percent(self) -> float:
        """Since `start`; 100 = one core busy."""
        return self.usage()["cpu_percent"]

    def usage(self) -> dict[str, float]:
        """Since `start`: CPU seconds and % (100 = one core busy), the part in the kernel (its split
        from user time is the kernel's tick sampling: an estimate), and the main threads'
        wake-ups a second."""
        wall = time.monotonic() - self._wall0
        if wall <= 0:
            return {
                "cpu_s": 0.0,
                "cpu_percent": 0.0,
                "cpu_kernel_percent": 0.0,
                "loop_wakeups_per_s": 0.0,
            }
        user, kernel = self._times()
        return {
            "cpu_s": user + kernel - self._cpu0,
            "cpu_percent": 100 * (user + kernel - self._cpu0) / wall,
            "cpu_kernel_percent": 100 * (kernel - self._kernel0) / wall,
            "loop_wakeups_per_s": (self.wakeups() - self._wakeups0) / wall,
        }


def synthesize_in_subprocess(
    module: str, path: str, timeout_s: float = 600.0, flag: str | None = "--synthesize"
) -> str:
    """Run `python -m <module> --synthesize <path>` (`flag` None: `<module> <path>`; torch
    and VITS stay out of the bench process) and return `path`; RuntimeError with its stderr
    if it failed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", module, *([flag] if flag else []), path],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0 or not os.path.exists(path):
        raise RuntimeError(f"{module} could not synthesize its set:\n{proc.stderr[-2000:]}")
    return path


@contextlib.contextmanager
def tone_daemon(url: str = "") -> Iterator[tuple[str, Server | None]]:
    """`url` if given, else a fresh duplexd (tone engine, CPU) for the block: (its url, the
    server or None); raises ServerFailed if it does not start."""
    if url:
        yield url, None
        return
    server = start_server("duplexd", duplexd_argv("tone", "cpu"))
    try:
        yield server.url, server
    finally:
        server.stop()
