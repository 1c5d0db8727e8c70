"""A daemon process for the fuzz and soak runs (tone engine), and what /proc says about it.

`start_daemon` runs `python -m duplexd serve --engine tone --port 0 --log-format json` (or the
same through `fuzz.counted_daemon`, which also writes the trio task count to a file), with its
log in a temporary file and, if given, a configuration file (`--config`, written from a dict
by `to_toml`), and waits for its "listening" line. `DaemonProcess.sample()` reads
open fds (/proc/PID/fd), threads (/proc/PID/task), VmRSS (/proc/PID/status), the task count,
and `duplexd_sessions_active` from /metrics on the side port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

Config = dict[str, dict[str, Any]]  # TOML section -> key -> value


def to_toml(config: Config) -> str:
    """A configuration file of flat sections (numbers, booleans, strings, lists of strings)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str | list | tuple):
            return json.dumps(list(v) if not isinstance(v, str) else v)
        raise TypeError(f"no TOML for {v!r}")

    lines = []
    for section, keys in config.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value(v)}" for key, v in keys.items()]
        lines.append("")
    return "\n".join(lines)


class DaemonFailed(RuntimeError):
    """The daemon exited, or did not start listening in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    url: str
    http_port: int
    log_path: str
    tasks_path: str  # "" when the task count is not measured
    _workdir: tempfile.TemporaryDirectory[str] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    # ------------------------------------------------------------------ measuring

    def sample(self) -> dict[str, Any]:
        """fds, threads, rss_kb, tasks (None if not measured), sessions_active (None if the
        side port did not answer); gc_frozen and gc_sweeps where /metrics has them."""
        pid = self.pid
        out: dict[str, Any] = {}
        try:
            out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
            out["threads"] = len(os.listdir(f"/proc/{pid}/task"))
            with open(f"/proc/{pid}/status") as f:
                out["rss_kb"] = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            out.update(fds=None, threads=None, rss_kb=None)
        counted = self.counted()
        out["tasks"] = counted.get("tasks")
        if "gc_collections" in counted:
            out["gc_collections"] = counted["gc_collections"]
        if "forced_collected" in counted:  # the last forced collection's garbage
            out["garbage"] = {
                k: counted.get(k)
                for k in (
                    "frozen_before_collection",
                    "forced_collected",
                    "garbage_duplexd",
                    "garbage_top",
                )
            }
        if counted.get("malloc_kb"):
            out["malloc_kb"] = counted["malloc_kb"]
        if "objects" in counted:
            out["objects"] = counted["objects"]
            out["top_types"] = counted["top"]
        metrics = self.metrics()
        out["sessions_active"] = metrics.get("duplexd_sessions_active")
        if "duplexd_gc_frozen_objects" in metrics:  # the daemon's garbage policy
            out["gc_frozen"] = metrics["duplexd_gc_frozen_objects"]
            out["gc_sweeps"] = metrics.get("duplexd_gc_sweeps_total")
        return out

    def tasks(self) -> int | None:
        return self.counted().get("tasks")

    def counted(self) -> dict[str, Any]:
        """What `fuzz.counted_daemon` last wrote: tasks, and objects and top types with
        `count_objects`; {} if not measured."""
        if not self.tasks_path:
            return {}
        try:
            with open(self.tasks_path) as f:
                out: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            return {}
        return out

    def collect_garbage(self, timeout_s: float = 10.0) -> bool:
        """Have the counted daemon run a full garbage collection now (`fuzz.counted_daemon`);
        False if it cannot (a plain daemon) or did not within `timeout_s`."""
        if not self.tasks_path:
            return False
        done = self.counted().get("forced_collections", 0)
        with open(f"{self.tasks_path}.collect", "w"):
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.counted().get("forced_collections", 0) > done:
                return True
            time.sleep(0.05)
        return False

    def metrics(self) -> dict[str, float]:
        """/metrics as {name{labels}: value}; {} if it does not answer."""
        try:
            url = f"http://{self.host}:{self.http_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][^ ]*) ([-+0-9.eEinfNa]+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    # ------------------------------------------------------------------ its log

    def log_size(self) -> int:
        return os.path.getsize(self.log_path)

    def log(self, start: int = 0, end: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
        """The log's JSON records and its other lines (a traceback printed outside the JSON
        logger...), from byte `start` to `end`."""
        with open(self.log_path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        records, other = [], []
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif line.strip():
                other.append(line)
        return records, other

    # ------------------------------------------------------------------ stopping

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (a drain), SIGKILL after `timeout_s`; the exit status (None if killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        self._workdir.cleanup()


def start_daemon(
    *,
    config: Config | None = None,
    env: dict[str, str] | None = None,
    count_tasks: bool = True,
    count_objects: bool = False,
    keep_log: str = "",
    timeout_s: float = 60.0,
) -> DaemonProcess:
    """Start a tone-engine daemon on a free port with /metrics on another; `config`: its
    configuration file (`--config`); `env` adds `DUPLEXD_*` settings (they win over the
    file); `count_tasks`: through `fuzz.counted_daemon` (with `count_objects`, gc-tracked
    objects too); `keep_log`: write the log there instead of a temporary file."""
    workdir = tempfile.TemporaryDirectory(prefix="duplexd-fuzz-")
    log_path = keep_log or os.path.join(workdir.name, "daemon.log")
    tasks_path = os.path.join(workdir.name, "tasks") if count_tasks else ""
    http_port = free_port()
    module = ["fuzz.counted_daemon", "--tasks-file", tasks_path] if count_tasks else ["duplexd"]
    if count_tasks and count_objects:
        module.append("--objects")
    argv = [sys.executable, "-m", *module]
    if not count_tasks:
        argv.append("serve")
    argv += ["--engine", "tone", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--http-port", str(http_port), "--log-format", "json", "--log-level", "info"]
    if config:
        config_path = os.path.join(workdir.name, "duplexd.toml")
        with open(config_path, "w") as f:
            f.write(to_toml(config))
        argv += ["--config", config_path]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXD_")}
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=full_env
        )
    deadline = time.monotonic() + timeout_s
    d = DaemonProcess(proc, "127.0.0.1", 0, "", http_port, log_path, tasks_path, workdir)
    while time.monotonic() < deadline:
        records, _ = d.log()
        for record in records:
            if record.get("event") == "listening":
                d.url = str(record["url"])
                d.port = int(d.url.rsplit(":", 1)[1].split("/", 1)[0])
                if not count_tasks or d.tasks() is not None:
                    return d
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    try:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
    except OSError:
        tail = ""
    d.cleanup()
    raise DaemonFailed(f"the daemon did not start (exit {proc.poll()}):\n{tail}")
