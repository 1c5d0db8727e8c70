"""`python -m fuzz.counted_daemon --tasks-file PATH [serve flags]`: `duplexd serve` plus a task
count (and, with `--objects`, the Python objects it keeps).

The daemon does not export how many trio tasks it has, and the soak must not change the daemon
to learn it. This runs the very `Service` that `duplexd serve` runs (same flags, environment
and config file), under the same `trio.run`, next to one more task that walks the task tree
from the root task (`trio.lowlevel.current_root_task`, each task's `child_nurseries`, each
nursery's `child_tasks`) every `INTERVAL_S` and writes the count to PATH (replaced
atomically), as JSON: {"tasks": N, "gc_collections": [gen0, gen1, gen2]} (the garbage
collector's runs so far). The count includes
trio's system tasks, this task and its parent: a constant offset, the same before and after.
When the file PATH.collect appears, the task runs a full collection of everything, the frozen
set included (as the daemon's own sweep does: `duplexd._ops.collector`), removes
it and counts it in the report (`forced_collections`, `forced_collected`, `garbage_duplexd`:
how many of those were duplexd's objects, and `garbage_top`: what the garbage was, by type,
and for functions and frames by code): the soak asks for
one before its settled samples, so that they compare what is kept, not what waits for the
collector; the daemon's garbage policy is not told (its gc callbacks are set aside meanwhile).
`malloc_kb`, every `MALLOC_INTERVAL_S` and after each forced collection, is glibc's account of
its heap (`mallinfo2`: it walks the free lists, milliseconds on a fragmented heap): bytes in
use, free in the heap, mmapped. `--objects` adds, every
`OBJECTS_INTERVAL_S`, the objects the garbage collector tracks (`gc.get_objects()`: the
service freezes what it loaded at start and what survives each full collection, so these are
what was made since the last one) and the most common
types among them: {"tasks": N, "objects": M, "top": {type: count}}. Counting them holds the
event loop for a few milliseconds: a diagnostic, not for timing runs.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import functools
import gc
import json
import os
import sys
import time
import types
from collections.abc import Sequence
from functools import partial
from typing import Any

import trio

import duplexd
from duplexd import cli
from duplexd._ops.flags import add_config_flags

INTERVAL_S = 0.2
OBJECTS_INTERVAL_S = 2.0
MALLOC_INTERVAL_S = 2.0


def count_tasks() -> int:
    """Live trio tasks of this run, the root task included."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    n = 0
    while stack:
        task = stack.pop()
        n += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return n


def count_objects() -> dict[str, Any]:
    objects = gc.get_objects()
    top = collections.Counter(type(o).__name__ for o in objects).most_common(15)
    return {"objects": len(objects), "top": dict(top)}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> Any:
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def malloc_kb() -> dict[str, int] | None:
    """glibc's own account of its heap (`mallinfo2`, glibc >= 2.33), in KiB: `in_use`
    (bytes handed out and not freed: a leak grows this), `free` (freed but kept in the heap:
    fragmentation grows this), `mmapped` (chunks served by mmap); None without glibc."""
    fn = _mallinfo2()
    if fn is None:
        return None
    m = fn()
    return {"in_use": m.uordblks // 1024, "free": m.fordblks // 1024, "mmapped": m.hblkhd // 1024}


_DUPLEXD_DIR = os.path.dirname(os.path.abspath(duplexd.__file__)) + os.sep


def _code(o: object) -> types.CodeType | None:
    """The code of a function, a frame or a coroutine or generator (None for anything else:
    no attribute of an arbitrary object is read, a dead weak proxy would raise)."""
    if isinstance(o, types.FunctionType):
        return o.__code__
    if isinstance(o, types.FrameType):
        return o.f_code
    if isinstance(o, types.CoroutineType):
        return o.cr_code
    if isinstance(o, types.GeneratorType):
        return o.gi_code
    return None


def _named(o: object) -> str:
    """A garbage object's type, and for a function or a frame where its code is: what a
    reference cycle is made of."""
    code = _code(o)
    if code is None:
        return type(o).__qualname__
    return f"{type(o).__qualname__} {code.co_qualname} ({code.co_filename}:{code.co_firstlineno})"


def _duplexd_s(o: object) -> bool:
    """Whether a garbage object is duplexd's: its type, or its code for a function or a frame
    (a cycle of a library's own objects, holding none of these, is the library's)."""
    code = _code(o)
    if code is not None:
        return os.path.abspath(code.co_filename).startswith(_DUPLEXD_DIR)
    return type(o).__module__.split(".")[0] == "duplexd"


def _write(path: str, report: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        # (json.dumps: `json.dump` encodes with nested closures, a reference cycle each call,
        # garbage that the soak's forced collection would count against the daemon)
        f.write(json.dumps(report))
    os.replace(tmp, path)


def _take_request(path: str) -> bool:
    """Whether the file `path` was there (it is removed): a stat on tmpfs, no worker thread."""
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


async def report_tasks(path: str, objects: bool) -> None:
    report: dict[str, Any] = {"forced_collections": 0}
    next_objects = next_malloc = 0.0
    while True:
        if _take_request(f"{path}.collect"):  # asked for: a full collection, now
            t0 = time.perf_counter()
            # everything, the frozen set included: the daemon freezes what survives each full
            # collection (duplexd/_ops/collector.py), so a plain gc.collect() would leave the
            # cycles that died frozen waiting for the daemon's own sweep
            report["frozen_before_collection"] = gc.get_freeze_count()
            callbacks = gc.callbacks[:]  # (the daemon's policy would count these as its own)
            gc.callbacks.clear()
            gc.unfreeze()
            gc.set_debug(gc.DEBUG_SAVEALL)  # the garbage is kept in gc.garbage, to be named
            try:
                report["forced_collected"] = gc.collect()
                report["garbage_duplexd"] = sum(map(_duplexd_s, gc.garbage))
                report["garbage_top"] = dict(
                    collections.Counter(map(_named, gc.garbage)).most_common(25)
                )
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.collect()  # (what was saved is freed now)
                gc.freeze()
                gc.callbacks.extend(callbacks)
            report["forced_collection_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
            report["forced_collections"] += 1
            next_objects = next_malloc = 0.0  # count them again at once
        report["tasks"] = count_tasks()
        if time.monotonic() >= next_malloc:
            report["malloc_kb"] = malloc_kb()
            next_malloc = time.monotonic() + MALLOC_INTERVAL_S
        report["gc_collections"] = [g["collections"] for g in gc.get_stats()]
        if objects and time.monotonic() >= next_objects:
            report.update(count_objects())
            next_objects = time.monotonic() + OBJECTS_INTERVAL_S
        _write(path, report)  # a few bytes to tmpfs: no need for a worker thread
        await trio.sleep(INTERVAL_S)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.counted_daemon")
    add_config_flags(parser)
    parser.add_argument("--tasks-file", required=True, help="write the task count here")
    parser.add_argument("--objects", action="store_true", help="count gc-tracked objects too")
    args = parser.parse_args(argv)
    try:  # `duplexd serve` itself, with the task counter beside the service
        return cli._serve(args, beside=partial(report_tasks, args.tasks_file, args.objects))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
