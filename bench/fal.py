"""First-audio latency of a short first clause, two ways: `python -m bench.fal`.

Streams "Hello there, how are you doing today? I hope all is well." token by token at
`--tokens-per-s`, `--runs` times, through one session, and reports, per run:

- **from first token**: the first token sent -> the first audio frame received (includes the
  time the LLM takes to write "Hello there,");
- **from clause**: the clause-closing token (",") sent -> the first audio frame received (what
  the daemon and the engine add; the issue's "text sent -> first frame" for a short clause).

It starts its own daemon (`--engine`, `--device`) unless `--url` is given.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import trio

from duplexd.client.session import Audio, open_session

from .daemon import duplexd_argv, start_server
from .report import print_and_save

TOKENS = (
    "Hello",
    " there",
    ",",
    " how",
    " are",
    " you",
    " doing",
    " today",
    "?",
    " I",
    " hope",
    " all",
    " is",
    " well",
    ".",
)
CLAUSE_TOKEN = 2  # index of the "," that completes the first clause


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def measure(url: str, runs: int, tokens_per_s: float) -> dict[str, Any]:
    first: list[float | None] = [None]

    def on_frame(frame: object, arrival: float) -> None:
        if isinstance(frame, Audio) and first[0] is None:
            first[0] = arrival

    from_token: list[float] = []
    from_clause: list[float] = []
    async with open_session(url, on_frame=on_frame) as session:
        for _ in range(runs):
            first[0] = None
            uid = session.new_utterance_id()
            t_first = t_clause = trio.current_time()
            for i, token in enumerate(TOKENS):
                await session.send_text(uid, token)
                if i == CLAUSE_TOKEN:
                    t_clause = trio.current_time()
                await trio.sleep(1 / tokens_per_s)
            await session.send_text(uid, "", end=True)
            await session.receive_utterance(uid)
            assert first[0] is not None
            from_token.append((first[0] - t_first) * 1e3)
            from_clause.append((first[0] - t_clause) * 1e3)
    return {
        name: {
            "p50": round(statistics.median(v), 1),
            "p95": round(_pct(v, 95), 1),
            "max": round(max(v), 1),
            "runs": len(v),
        }
        for name, v in (("from_first_token_ms", from_token), ("from_clause_ms", from_clause))
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fal", description=__doc__)
    p.add_argument("--url", default="")
    p.add_argument("--engine", default="vits")
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--tokens-per-s", type=float, default=30.0)
    p.add_argument("--json", default="", help="also write the result here")
    args = p.parse_args(argv)
    server = None
    url = args.url
    if not url:
        server = start_server("duplexd", duplexd_argv(args.engine, args.device))
        url = server.url
    try:
        result = trio.run(measure, url, args.runs, args.tokens_per_s)
    finally:
        if server is not None:
            server.stop()
    result.update(engine=args.engine, device=args.device, tokens_per_s=args.tokens_per_s)
    print_and_save(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
