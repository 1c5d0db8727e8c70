"""What one audio frame costs on the pacer's tick: the writer's Python, and the socket write.

    taskset -c 0 python -m bench.tick_cost [--n 2000] [--json PATH]

1. `Downlink.on_tick` for `--n` frames of one utterance waiting in its ring (48 kHz; the
   session one with nothing to tell, `ENDED`), with the session's `send_now` a no-op: the
   ring's pop, the frame's header read, the pacing error, the counters (what the daemon's own
   Python spends per frame on a tick, best of 5).
2. One frame's `os.writev` (WebSocket header + message, 1,936 bytes) on loopback TCP to a
   process that reads it, as `DirectSend.send_now` writes: this thread's CPU time in the call
   (the kernel's share, the reader's wake-up included), with sleeps between the frames.

The daemon's CPU per audio frame sent in `python -m bench` is everything (wake-ups, clients'
messages, synthesis) over the frames: these two say how little of it the frame itself is.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import trio

from duplexd._downlink.contract import ENDED, SENT
from duplexd._downlink.pacer import open_pacer
from duplexd._downlink.producer import audio_headers
from duplexd._downlink.ring import FrameRing
from duplexd._downlink.writer import Downlink
from duplexd._server.direct import frame_header
from duplexd.protocol import frames as fr

RATE_HZ = 48_000
SAMPLES = fr.frame_samples(RATE_HZ)
_READER = (
    "import socket,sys\n"
    "s=socket.create_connection(('127.0.0.1',int(sys.argv[1])))\n"
    "while s.recv(1<<20):pass"
)


def tick_us(n: int) -> float:
    """Best of 5: wall time per `on_tick` that sends a frame (send_now a no-op), in us."""

    async def main() -> float:
        ring = FrameRing(1 << max(1, (n - 1).bit_length()), fr.AUDIO_HEADER_BYTES + SAMPLES * 2)

        async def send(data: bytes) -> None:
            pass

        async with open_pacer() as pacer, trio.open_nursery() as nursery:
            dl = Downlink(
                ring=ring,
                send=send,
                pacer=pacer,
                rate_hz=RATE_HZ,
                events=ENDED,  # (a session with nothing to tell: no words, no totals)
                send_now=lambda data: SENT,
            )
            nursery.start_soon(dl.run)
            await trio.sleep(0.01)  # (its task waits: ticks send themselves)
            best = float("inf")
            for _ in range(5):
                heads = audio_headers(1, n, epoch=0, utterance_id=1, nbytes=SAMPLES * 2, last=False)
                ring.push_many(heads, np.zeros((n, SAMPLES), "<i2"), n)
                now = trio.current_time()
                t0 = time.perf_counter()
                for _ in range(n):
                    dl.on_tick(now)
                best = min(best, (time.perf_counter() - t0) / n)
            nursery.cancel_scope.cancel()
            return best * 1e6

    return trio.run(main)


def writev_us(n: int) -> float:
    """This thread's CPU time per frame written with one writev to a reading process, in us."""
    listener = socket.create_server(("127.0.0.1", 0))
    reader = subprocess.Popen([sys.executable, "-c", _READER, str(listener.getsockname()[1])])
    conn, _ = listener.accept()
    listener.close()
    data = bytes(fr.AUDIO_HEADER_BYTES + SAMPLES * 2)
    header = frame_header(len(data))
    fd, spent_ns = conn.fileno(), 0
    try:
        for _ in range(n):
            t0 = time.thread_time_ns()
            os.writev(fd, (header, data))
            spent_ns += time.thread_time_ns() - t0
            time.sleep(0.0002)  # (the reader keeps up, as a client does: no queue builds)
    finally:
        conn.close()
        reader.wait(10)
    return spent_ns / n / 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.tick_cost", description=__doc__.splitlines()[0]
    )
    p.add_argument("--n", type=int, default=2000, help="frames per measurement (>= 1)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    if args.n < 1:
        print(f"bench: --n must be >= 1, got {args.n}", file=sys.stderr)
        return 2
    out = {"n": args.n, "tick_us": tick_us(args.n), "writev_us": writev_us(args.n)}
    print(f"| a frame on the tick, the writer's Python (send a no-op) | {out['tick_us']:.2f} us |")
    print(f"| its writev on loopback TCP to a reading process (CPU) | {out['writev_us']:.2f} us |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
