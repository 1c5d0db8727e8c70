"""Tests for native/_build_ring.py: the cffi cdef is read from the C headers, not retyped."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import cffi
import pytest

from duplexd import _native  # type: ignore[attr-defined,unused-ignore]

unit = pytest.mark.unit

NATIVE = Path(__file__).resolve().parent.parent / "native"


def _load_build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_build_ring", NATIVE / "_build_ring.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build_script()

SAMPLE = """\
/* sample.h -- a header shaped like ours.
 * #define IN_A_COMMENT 1   (not a directive)
 */
#ifndef SAMPLE_H
#define SAMPLE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SAMPLE_MAX 65536u  /* a limit */
#define SAMPLE_EBAD (-1)
#define SAMPLE_LONG (1 + \\
                     2)

typedef struct sample sample;  // opaque

sample *sample_create(uint32_t n);
int sample_poke(sample *s, const void *src,
                uint32_t n);

#ifdef __cplusplus
}
#endif

#endif /* SAMPLE_H */
"""

SAMPLE_CDEF = """\
#define SAMPLE_MAX ...
#define SAMPLE_EBAD ...
#define SAMPLE_LONG ...

typedef struct sample sample;

sample *sample_create(uint32_t n);
int sample_poke(sample *s, const void *src,
                uint32_t n);
"""


def _normalise(cdef: str) -> str:
    return "\n".join(line.rstrip() for line in cdef.splitlines())


@unit
def test_extraction_of_a_sample_header() -> None:
    assert _normalise(build.cdef_from_header(SAMPLE, "sample.h")) == _normalise(SAMPLE_CDEF)


@unit
def test_extracted_sample_is_a_valid_cdef() -> None:
    ffi = cffi.FFI()
    ffi.cdef(build.cdef_from_header(SAMPLE, "sample.h"))
    assert ffi.typeof("sample *").item.kind == "struct"  # the opaque typedef is known


@unit
def test_a_header_without_guard_or_cplusplus_block_is_taken_as_is() -> None:
    assert build.cdef_from_header("int f(void);\n") == "int f(void);\n"


@unit
@pytest.mark.parametrize(
    ("header", "match"),
    [
        ("#ifndef G\n#define G\n#if X\nint f(void);\n#endif\n#endif\n", r"#if \(a cdef"),
        ("#ifndef G\n#define G\n#ifndef X\n#endif\n#endif\n", r"#ifndef \(a cdef"),
        ("#ifdef FEATURE\nint f(void);\n#endif\n", r"#ifdef \(a cdef"),
        ("#ifdef __cplusplus\n#define X 1\n#endif\n", "inside the __cplusplus block"),
        ("#ifdef __cplusplus\n#else\n#endif\n", "inside the __cplusplus block"),
        ("#define MAX(a, b) ((a) > (b) ? (a) : (b))\n", "function-like macro"),
        ("#define FLAG\n", "without a value"),
        ("#undef X\n", "#undef"),
        ("#pragma once\n", "#pragma"),
        ("#endif\n", "without #if"),
        ("#ifndef G\n#define G\nint f(void);\n", "unterminated"),
    ],
)
def test_what_a_cdef_cannot_say_is_refused(header: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        build.cdef_from_header(header, "bad.h")
    assert str(info.value).startswith("bad.h: ")


def _declared(cdef: str) -> tuple[set[str], set[str]]:
    """(functions, constants) declared in a cdef of our headers."""
    functions = set(re.findall(r"\b(dx_\w+)\s*\(", cdef))
    constants = set(re.findall(r"#define (\w+) \.\.\.", cdef))
    return functions, constants


@unit
def test_every_header_declaration_is_on_the_built_module_and_nothing_else() -> None:
    functions, constants = _declared(build.read_cdef())
    assert "dx_ring_push" in functions and "DX_RING_EFULL" in constants  # the parse works
    lib = _native.lib
    for name in functions:
        assert callable(getattr(lib, name)), name
    for name in constants:
        assert isinstance(getattr(lib, name), int), name
    on_lib = set(dir(lib))
    assert {n for n in on_lib if n.startswith("dx_")} == functions
    assert {n for n in on_lib if n.startswith("DX_")} == constants


@unit
def test_the_build_reads_the_headers_it_includes() -> None:
    assert tuple(sorted(p.name for p in NATIVE.glob("dx_*.h"))) == build.HEADERS


DIAGNOSTICS_MARK = "---- Test / diagnostics only"
_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


def _sections() -> tuple[set[str], set[str]]:
    """(functions duplexd calls, test / diagnostics-only functions), as the headers mark them."""
    public: set[str] = set()
    diagnostics: set[str] = set()
    for header in build.HEADERS:
        text = (NATIVE / header).read_text(encoding="utf-8")
        mark = text.find(DIAGNOSTICS_MARK)
        if mark < 0:
            public |= _declared(_COMMENT.sub(" ", text))[0]
            continue
        split = text.rfind("/*", 0, mark)  # the section starts with the comment holding the mark
        public |= _declared(_COMMENT.sub(" ", text[:split]))[0]
        diagnostics |= _declared(_COMMENT.sub(" ", text[split:]))[0]
    return public, diagnostics


@unit
def test_the_headers_mark_what_only_tests_call() -> None:
    public, diagnostics = _sections()
    assert "dx_timerfd_remaining_ns" in diagnostics and "dx_ring_push" in public
    package = Path(_native.__file__).parent
    source = "\n".join(p.read_text(encoding="utf-8") for p in package.rglob("*.py"))
    called = set(re.findall(r"\b(dx_\w+)\b", source))
    assert public <= called, f"declared for duplexd but unused: {sorted(public - called)}"
    assert not diagnostics & called, f"marked test-only but used: {sorted(diagnostics & called)}"
    here = Path(__file__).resolve()
    tests = "\n".join(p.read_text(encoding="utf-8") for p in here.parent.glob("test_*.py"))
    tests = tests.replace(here.read_text(encoding="utf-8"), "")
    tested = set(re.findall(r"\b(dx_\w+)\b", tests))
    assert diagnostics <= tested, f"exposed but used by no test: {sorted(diagnostics - tested)}"
