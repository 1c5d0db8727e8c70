"""What the WebSocket layer costs the daemon's event loop per MiB a client sends, by the size of
its socket reads (trio-websocket's `receive_buffer_size`).

    python -m bench.receive_cost [--mib 60] [--sizes 4096,16384,65536] [--rounds 2]

A trio-websocket server in this process, as the daemon's, receives `--mib` 1 MiB binary
messages from a client in another process (which masks them beforehand, so its work is not
counted), and the server process's CPU time per MiB is printed (the first message excluded).
Run it pinned to one core (`taskset -c 0`), as the daemon is in the bench. The daemon charges
this cost to the client's share of the loop (`duplexd._server.limits.RECEIVE_S_PER_BYTE`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

MIB = 1 << 20
_CLIENT = r"""
import os, socket, sys
from wsproto import ConnectionType, WSConnection
from wsproto.events import BytesMessage, CloseConnection, Request
port, n = int(sys.argv[1]), int(sys.argv[2])
ws = WSConnection(ConnectionType.CLIENT)
s = socket.create_connection(("127.0.0.1", port))
s.sendall(ws.send(Request(host="localhost", target="/")))
ws.receive_data(s.recv(65536))
list(ws.events())
frame = ws.send(BytesMessage(data=os.urandom(1 << 20)))
for _ in range(n):
    s.sendall(frame)
s.sendall(ws.send(CloseConnection(code=1000)))
s.recv(100)
s.close()
"""


async def cpu_ms_per_mib(receive_buffer_size: int, messages: int) -> float:
    result: list[float] = []
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        got, c0 = 0, 0.0
        try:
            while True:
                await ws.get_message()
                got += 1
                if got == 1:
                    c0 = time.process_time()
        except ConnectionClosed:
            result.append((time.process_time() - c0) / (got - 1) * 1e3)
            done.set()

    async with trio.open_nursery() as nursery:
        listener = await nursery.start(
            lambda task_status: serve_websocket(
                handler,
                "127.0.0.1",
                0,
                ssl_context=None,
                max_message_size=2 * MIB,
                receive_buffer_size=receive_buffer_size,
                task_status=task_status,
            )
        )
        argv = [sys.executable, "-c", _CLIENT, str(listener.port), str(messages)]
        await trio.to_thread.run_sync(lambda: subprocess.run(argv, check=True))
        await done.wait()
        nursery.cancel_scope.cancel()
    return result[0]


def byte_sizes(text: str) -> list[int]:
    """`--sizes`: comma-separated whole numbers of bytes."""
    return [int(size) for size in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=60)
    parser.add_argument(
        "--sizes",
        type=byte_sizes,
        default=[4096, 16384, 65536],
        help="comma-separated read sizes in bytes",
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for size in args.sizes:
            ms = trio.run(cpu_ms_per_mib, size, args.mib)
            print(f"receive_buffer_size {size:>7,} B: {ms:6.2f} ms of CPU per MiB received")


if __name__ == "__main__":
    main()
