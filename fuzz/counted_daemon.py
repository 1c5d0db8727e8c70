"""`python -m fuzz.counted_daemon --tasks-file PATH [serve flags]`: `duplexd serve` plus a task
count.

The daemon does not export how many trio tasks it has, and the soak must not change the daemon
to learn it. This runs the very `Service` that `duplexd serve` runs (same flags, environment
and config file), under the same `trio.run`, next to one more task that walks the task tree
from the root task (`trio.lowlevel.current_root_task`, each task's `child_nurseries`, each
nursery's `child_tasks`) every `INTERVAL_S` and writes the count to PATH (replaced
atomically). The count includes trio's system tasks, this task and its parent: a constant
offset, the same before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import trio

from duplexd._ops.flags import add_config_flags, settings_from_args
from duplexd._ops.logs import configure_logging
from duplexd._ops.settings import ConfigError
from duplexd._server.service import Service, StartupError

INTERVAL_S = 0.2


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


def _write(path: str, n: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{n}\n")
    os.replace(tmp, path)


async def report_tasks(path: str) -> None:
    while True:
        _write(path, count_tasks())  # a few bytes to tmpfs: no need for a worker thread
        await trio.sleep(INTERVAL_S)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.counted_daemon")
    add_config_flags(parser)
    parser.add_argument("--tasks-file", required=True, help="write the task count here")
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"duplexd: config: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    service = Service(settings, reload=lambda: settings_from_args(args))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report_tasks, args.tasks_file)
            await service.run()
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    except StartupError as exc:
        print(f"duplexd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
