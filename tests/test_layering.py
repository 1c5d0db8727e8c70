"""The package layout is the architecture: who may import whom (duplexd/__init__.py's map).

Every import of every module under duplexd/ is read from its source (function-level imports
included), resolved to the duplexd package it lands in, and checked against the layers below:
a package imports only the packages under it, the sans-I/O protocol imports no trio, and the
client imports nothing of the server side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "duplexd"

# what each part may import from duplexd (besides itself and the leaves below)
ALLOWED = {
    "protocol": set(),
    "engines": set(),
    "client": {"protocol"},
    "_ops": {"protocol", "engines"},
    "_downlink": {"protocol", "engines", "_ops"},
    "_uplink": {"protocol", "_ops", "_downlink"},
    "_server": {"protocol", "engines", "_ops", "_downlink", "_uplink"},
    "web": set(),  # the browser client: JavaScript files, nothing to import
}
LEAVES = {"_version", "_native", "_opus"}  # modules anyone may import
TOP = {"__init__", "__main__", "cli"}  # the map and the command: anything

pytestmark = pytest.mark.unit


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py"))


def part_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported(path: Path) -> set[str]:
    """Every dotted module name `path` imports (relative imports resolved)."""
    rel = path.relative_to(ROOT.parent).with_suffix("")
    package = list(rel.parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)  # `from . import x`
    return out


def duplexd_part(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "duplexd" or len(parts) == 1:
        return None
    return parts[1]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    part = part_of(path)
    if part in TOP or part in LEAVES:
        return
    assert part in ALLOWED, f"{path}: a new part of duplexd? add it to the map and to ALLOWED"
    allowed = ALLOWED[part] | {part} | LEAVES
    bad = set()
    for name in imported(path):
        target = duplexd_part(name)
        if target is not None and target not in allowed and target in ALLOWED | {"cli"}:
            bad.add(name)
    assert not bad, f"{path.relative_to(ROOT)} ({part}) may not import {sorted(bad)}"


@pytest.mark.parametrize(
    "path", [p for p in modules() if part_of(p) == "protocol"], ids=lambda p: p.name
)
def test_protocol_is_sans_io(path: Path) -> None:
    names = imported(path)
    io = {n for n in names if n.split(".")[0] in ("trio", "trio_websocket", "socket", "asyncio")}
    assert not io, f"the sans-I/O protocol imports {sorted(io)}"


def test_the_layer_test_sees_imports() -> None:
    """The resolver itself: a known upward import would be caught."""
    session = ROOT / "_server" / "session.py"
    assert "duplexd._downlink.writer" in imported(session)
    assert "duplexd.protocol.frames" in imported(session)  # `from ..protocol import frames`
    assert duplexd_part("duplexd._server.session") == "_server"
