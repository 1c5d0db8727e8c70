"""A torch.profiler Chrome trace of the VITS engine's batches.

    python -m bench.profile_engine --n 5 --batch 1 --device auto --out out/engine-trace.json

Loads the engine (and warms it), then runs `--n` batches of `--batch` sentences through
`VitsVoice.synthesize_batch` on this thread under `torch.profiler`, each batch inside a
``vits.batch[i]`` range (``record_function``), and writes a Chrome trace: open it in
chrome://tracing or https://ui.perfetto.dev. On CUDA the trace has the kernels too (CUDA
activity) and the ranges are NVTX ranges under Nsight Systems (see DEVELOPMENT.md).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from duplexd.engines.vits import VitsEngine

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to bring your umbrella, it might rain later.",
    "Good morning, Sam.",
    "The train leaves in ten minutes.",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=5, help="batches to profile")
    ap.add_argument("--batch", type=int, default=1, help="sentences per batch")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--voice", default="joe")
    ap.add_argument("--out", default="out/engine-trace.json")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    engine = VitsEngine(device=args.device, deterministic=True)
    voice = engine.open_voice(args.voice)  # loads and warms
    print(f"engine on {engine.device}, voice {voice.name}: {time.perf_counter() - t0:.1f} s")
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(args.batch)]
    ids = [seq for text in texts for seq in voice.phoneme_ids(text)]
    activities = [ProfilerActivity.CPU]
    cuda = engine.device.startswith("cuda")
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    try:
        with profile(activities=activities, record_shapes=True) as prof:
            for i in range(args.n):
                with record_function(f"vits.batch[{i}] x{len(ids)}"):
                    if cuda:
                        torch.cuda.nvtx.range_push(f"vits.batch[{i}]")
                    audio = voice.synthesize_batch(ids)
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.nvtx.range_pop()
    finally:
        engine.close()
    seconds = sum(len(a) for a in audio) / voice.sample_rate_hz
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    prof.export_chrome_trace(args.out)
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=12))
    print(f"{args.n} batches of {len(ids)} sequence(s), {seconds:.2f} s of audio each")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
