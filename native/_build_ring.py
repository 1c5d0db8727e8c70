"""cffi API-mode build script for ``duplexd._native`` (the SPSC frame ring and timerfd helpers).

Used by setup.py (``cffi_modules=["native/_build_ring.py:ffibuilder"]``); for a quick
in-place build run ``python native/_build_ring.py`` from the repository root.

The cdef is read from the headers themselves (as pynacl does), so the C and its Python view
cannot drift: every declaration in ``HEADERS`` is visible on ``duplexd._native.lib``, and a
header holds nothing that Python should not see.  :func:`cdef_from_header` turns a header
into what ``ffi.cdef`` accepts.
"""

from __future__ import annotations

import os
import re
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: The headers whose declarations make up the module, in cdef order (in native/).
HEADERS = ("dx_ring.h", "dx_timer.h")

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_DIRECTIVE = re.compile(r"\s*#\s*(\w+)\s*(.*?)\s*$")
_DEFINE = re.compile(r"([A-Za-z_]\w*)(\(?)\s*(.*)$")
_CPLUSPLUS = ("ifdef __cplusplus", "if defined(__cplusplus)", "if defined __cplusplus")


def cdef_from_header(text: str, name: str = "<header>") -> str:
    """The declarations of the C header ``text`` in the form cffi's ``cdef`` accepts (API mode).

    * comments go (so a ``#`` inside one is never taken for a directive), and lines continued
      with a backslash are joined;
    * the include guard (a top-level ``#ifndef G``, its ``#define G`` and ``#endif``) and
      ``#include`` lines go;
    * an ``#ifdef __cplusplus`` ... ``#endif`` block (``extern "C" {`` or its ``}``) goes;
    * ``#define NAME value`` becomes ``#define NAME ...``: the C compiler supplies the value;
    * the declarations in between are kept as they are.

    Anything else a cdef cannot say -- another conditional, ``#else``, a function-like or
    empty macro, ``#undef``, ``#pragma`` -- raises :class:`ValueError` naming ``name``: a
    header the Python side would read differently from the compiler is refused, not guessed.
    """
    text = _COMMENT.sub(" ", text).replace("\\\n", " ")
    out: list[str] = []
    blocks: list[str] = []  # open conditionals: "guard" or "c++"
    guard: str | None = None

    def fail(why: str, line: str) -> ValueError:
        return ValueError(f"{name}: {why}: {line.strip()!r}")

    for line in text.splitlines():
        m = _DIRECTIVE.match(line)
        if m is None:
            if "c++" not in blocks:
                out.append(line.rstrip())
            continue
        word, rest = m.groups()
        directive = f"{word} {rest}".strip()
        if "c++" in blocks and word != "endif":
            raise fail("directive inside the __cplusplus block", line)
        if directive in _CPLUSPLUS:
            blocks.append("c++")
        elif word == "ifndef" and not blocks and guard is None:
            blocks.append("guard")
            guard = rest
        elif word == "endif":
            if not blocks:
                raise fail("#endif without #if", line)
            blocks.pop()
        elif word == "include":
            pass
        elif word == "define":
            d = _DEFINE.match(rest)
            if d is None:
                raise fail("malformed #define", line)
            macro, paren, value = d.groups()
            if paren:
                raise fail("function-like macro (a cdef cannot declare one)", line)
            if not value:
                if macro != guard:
                    raise fail("#define without a value (a cdef needs an integer)", line)
            else:
                out.append(f"#define {macro} ...")
        else:
            raise fail(f"#{word} (a cdef cannot express it)", line)
    if blocks:
        raise ValueError(f"{name}: unterminated #if ({len(blocks)} open at the end)")
    # Tidy: no leading/trailing blank lines, no runs of them.
    cdef = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")
    return cdef + "\n"


def read_cdef(directory: str = HERE, headers: tuple[str, ...] = HEADERS) -> str:
    """The cdef of ``headers`` (files in ``directory``), concatenated in order."""
    parts = []
    for header in headers:
        with open(os.path.join(directory, header), encoding="utf-8") as f:
            parts.append(f"/* {header} */\n" + cdef_from_header(f.read(), header))
    return "\n".join(parts)


# Paths relative to the project root: setuptools runs cffi_modules from there, and relative
# paths keep absolute build paths out of the sdist/wheel metadata.
_SOURCES = ["native/dx_ring.c", "native/dx_timer.c"]
_CFLAGS = ["-O2", "-std=c11"] if sys.platform != "win32" else []

ffibuilder = cffi.FFI()
ffibuilder.cdef(read_cdef())
ffibuilder.set_source(
    "duplexd._native",
    "".join(f'#include "{header}"\n' for header in HEADERS),
    sources=_SOURCES,
    include_dirs=["native"],
    depends=[f"native/{header}" for header in HEADERS],
    extra_compile_args=_CFLAGS,
)

if __name__ == "__main__":
    # In-place build for hacking without pip (intermediates: duplexd/_native.c and *.o, all
    # gitignored).  The module goes to duplexd/_native.abi3.so, the same file name that
    # `pip install -e .` produces, so the two never shadow each other (a stale
    # _native.cpython-311-*.so would win over _native.abi3.so at import).
    os.chdir(ROOT)
    out = ffibuilder.compile(tmpdir=".", target="_native.abi3.so", verbose=True)
    print(out)
