"""Engine plugins: the `duplexd.engines` entry-point group, and DEVELOPMENT.md's walkthrough.

The end-to-end test does what the guide's "Adding a TTS engine" says: it pip-installs the
example package `examples/duplexd-sine-engine` (offline: no index, no build isolation; the
venv's setuptools builds it) into a throwaway directory, then runs the real daemon with
`--engine sine` and `duplexd say ... --out x.wav` against it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import wave
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from duplexd._ops.settings import ConfigError, load_settings
from duplexd.engines.plugins import GROUP, PluginError, plugin_entry_points
from duplexd.engines.registry import BUILTIN_ENGINES, available_engines, load_engine

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "duplexd-sine-engine"
TIMEOUT_S = 60


# ---------------------------------------------------------------------- fake plugins, in-process


def _fake_dist(root: Path, name: str, entry: str, module_src: str) -> None:
    mod = entry.partition(":")[0]
    (root / f"{mod}.py").write_text(module_src)
    info = root / f"fake_{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-{name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{name} = {entry}\n")


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    good = (
        "from duplexd.engines.tone import ToneEngine\n"
        "class Good(ToneEngine):\n"
        "    def __init__(self, *, device='auto', **kw):\n"
        "        super().__init__(**kw)\n"
        "        self.got_device = device\n"
        "    @property\n"
        "    def name(self):\n"
        "        return 'goodtone'\n"
    )
    _fake_dist(tmp_path, "goodtone", "fake_good:Good", good)
    not_engine = "class NotEngine:\n    def __init__(self, **kw):\n        pass\n"
    _fake_dist(tmp_path, "notengine", "fake_bad:NotEngine", not_engine)
    _fake_dist(tmp_path, "broken", "fake_broken:X", "raise ImportError('no such wheel')\n")
    _fake_dist(tmp_path, "tone", "fake_shadow:X", "X = None\n")  # cannot shadow a built-in
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in ("fake_good", "fake_bad", "fake_broken", "fake_shadow"):
        sys.modules.pop(mod, None)


@pytest.mark.unit
def test_plugins_are_listed_after_the_builtins(fake_plugins: Path) -> None:
    names = available_engines()
    assert names[: len(BUILTIN_ENGINES)] == list(BUILTIN_ENGINES)
    assert {"goodtone", "notengine", "broken"} <= set(names)
    assert names.count("tone") == 1
    assert "goodtone" in plugin_entry_points()


@pytest.mark.unit
def test_a_plugin_is_built_with_the_device_and_options(fake_plugins: Path) -> None:
    engine = load_engine("goodtone", device="cpu", ms_per_char=20.0)
    assert engine.name == "goodtone"
    assert engine.got_device == "cpu"  # type: ignore[attr-defined]
    voice = engine.open_voice("sine")
    assert len(voice.synthesize("ab")) == 2 * 960  # 20 ms per char at 48 kHz


@pytest.mark.unit
def test_builtins_win_over_a_plugin_of_the_same_name(fake_plugins: Path) -> None:
    assert type(load_engine("tone")).__name__ == "ToneEngine"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("notengine", "is not a duplexd Engine (got NotEngine)"),
        ("broken", "ImportError: no such wheel"),
    ],
)
def test_a_bad_plugin_is_a_plugin_error_naming_it(
    fake_plugins: Path, name: str, needle: str
) -> None:
    with pytest.raises(PluginError) as info:
        load_engine(name)
    assert f"engine {name!r} from fake-{name}" in str(info.value)
    assert needle in str(info.value)


@pytest.mark.unit
def test_unknown_engine_lists_what_there_is(fake_plugins: Path) -> None:
    with pytest.raises(LookupError, match=r"available: vits, tone, .*goodtone"):
        load_engine("nope")


@pytest.mark.unit
def test_settings_accept_plugin_names_only_when_installed(fake_plugins: Path) -> None:
    s = load_settings(environ={"DUPLEXD_ENGINE__NAME": "goodtone"})
    assert s.engine.name == "goodtone"
    with pytest.raises(ConfigError, match=r"engine\.name: must be one of vits, tone, .*'espeak'"):
        load_settings(overrides={"engine": {"name": "espeak"}})


# ---------------------------------------------------------------------- the example, end to end


@pytest.fixture(scope="module")
def sine_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install` of the example package into a directory of its own (offline)."""
    work = tmp_path_factory.mktemp("sine")
    src = work / "src"
    shutil.copytree(EXAMPLE, src)  # pip builds in-tree: keep the checkout clean
    site = work / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert any(site.glob("duplexd_sine_engine-*.dist-info/entry_points.txt"))
    return site


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    return env


def _duplexd(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "duplexd", *args],
        cwd=cwd,
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.mark.integration
def test_config_accepts_the_installed_plugin(sine_site: Path, tmp_path: Path) -> None:
    ok = _duplexd(sine_site, tmp_path, "config", "--check", "--engine", "sine")
    assert ok.returncode == 0, ok.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEXD_")}
    bad = subprocess.run(
        [sys.executable, "-m", "duplexd", "config", "--check", "--engine", "sine"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert bad.returncode == 2
    assert "engine.name: must be one of vits, tone" in bad.stderr


def _wait_for_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if '"listening"' in line:
                return str(json.loads(line)["url"])
        time.sleep(0.05)
    pytest.fail(f"no 'listening' line (exit {proc.poll()}): {log.read_text()}")


@pytest.mark.integration
def test_the_example_plugin_speaks_end_to_end(sine_site: Path, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "duplexd", "serve", "--engine", "sine", "--port", "0"],
            cwd=tmp_path,
            env=_env(sine_site),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        url = _wait_for_url(proc, log)
        out = tmp_path / "x"
        said = _duplexd(sine_site, tmp_path, "say", "one two three", "--url", url, "--out", "x")
        assert said.returncode == 0, said.stderr
        proc.terminate()
        assert proc.wait(timeout=TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with wave.open(str(out), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (48_000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    # three words of 120 ms beep + 40 ms gap, resampled to 48 kHz, padded to whole 20 ms frames
    assert 0.46 <= len(pcm) / 48_000 <= 0.52
    first = pcm[int(0.01 * 48_000) : int(0.11 * 48_000)]  # inside the first beep ("one")
    spectrum = np.abs(np.fft.rfft(first * np.hanning(len(first))))
    peak_hz = float(np.argmax(spectrum)) * 48_000 / len(first)
    expected = 440.0 * 2 ** ((zlib.crc32(b"one") % 12) / 12)
    assert math.isclose(peak_hz, expected, abs_tol=15.0)
    gap = pcm[int(0.125 * 48_000) : int(0.155 * 48_000)]  # the silence after it
    assert np.abs(gap).max() < 0.02 * np.abs(first).max()
