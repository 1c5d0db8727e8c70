"""The wheel ships the product only: `duplexd` (with its native extension), never `bench`,
the committed `bench/results/` or the tests.

The wheel is built from a copy of the source tree without build outputs: setuptools copies
whatever an old `build/lib` holds into the wheel, so a checkout that once built `bench` would
keep shipping it. No network: `--no-build-isolation --no-index` builds with this environment's
setuptools and cffi.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
# build outputs and caches: none of them is a source of the wheel
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "out",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "*.so",
    "*.o",
    "*.pyc",
    "_native.c",
)

pytestmark = pytest.mark.integration


class Built(NamedTuple):
    src: Path  # the copy it was built from
    names: list[str]  # the wheel's members
    top_level: list[str]  # its .dist-info/top_level.txt


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_NOT_SOURCE)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = (tmp / "dist").glob("duplexd-*.whl")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        (top_level,) = (n for n in names if n.endswith(".dist-info/top_level.txt"))
        return Built(src, names, z.read(top_level).decode().split())


def test_only_duplexd_at_the_top(built: Built) -> None:
    tops = {n.split("/", 1)[0] for n in built.names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1, tops
    assert tops - dist_info == {"duplexd"}, tops  # no bench, results, tests, native, .data
    assert built.top_level == ["duplexd"]


def test_the_native_extension_is_inside(built: Built) -> None:
    native = [n for n in built.names if n.startswith("duplexd/_native") and n.endswith(".so")]
    assert len(native) == 1, native


def test_every_module_and_data_file_of_duplexd_is_inside(built: Built) -> None:
    # the copy has no build outputs: what is left under duplexd/ is what it needs at run time
    src = built.src
    needed = {p.relative_to(src).as_posix() for p in (src / "duplexd").rglob("*") if p.is_file()}
    assert needed, "no source under duplexd/"
    assert needed <= set(built.names), sorted(needed - set(built.names))
