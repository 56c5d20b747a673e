"""Tokens/s of the same training on 1 process and on N processes (torchrun, DDP or FSDP2).

    python benchmarks/bench_ddp.py                       # tiny config, 1 vs 2 CPU processes, DDP and FSDP2
    python benchmarks/bench_ddp.py --config proxy --steps 25 train.micro_batch_size=16

Each run trains `--steps` optimizer steps of the config at a fixed global batch (so every run does
the same work), without validation, and reports the steady-state throughput: tokens trained
between the end of step `--skip` and the last step, over the wall time between them (startup,
data checks and the first steps are excluded). Threads: with P processes on C cores each process
gets C // P threads, so every run uses the whole machine; on a 2-core CPU the comparison measures
the cost of communication and of smaller per-process matmuls, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path


def run(config: str, nproc: int, parallel: str, steps: int, out: Path, extra: list[str]) -> list[dict]:
    threads = max(1, (os.cpu_count() or 1) // nproc)
    args = [
        config,
        f"run.dir={out}",
        f"train.max_steps={steps}",
        "eval.every_tokens=null",
        "checkpoint.every_steps=null",
        "log.progress=false",
        f"train.num_threads={threads}",
        f"train.parallel={parallel}",
        *extra,
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "seqwarm", "train", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "seqwarm",
            "train",
            *args,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        # seqwarm's own one-line errors say what is wrong; torchrun's traceback around them does not.
        errors = [line for line in done.stderr.splitlines() if line.startswith("seqwarm: error")]
        sys.exit(f"{' '.join(cmd)} failed:\n" + ("\n".join(errors) or done.stderr[-2000:]))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny-baseline")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--parallel", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the measurement")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.global_batch_size=16")
    args = p.parse_args()

    print(f"# {args.config}, {args.steps} steps, throughput from step {args.skip} on")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'processes':>9} {'parallel':>8} {'threads/proc':>12} {'tokens/s':>10} {'vs 1 process':>12}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in args.nproc:
            for parallel in args.parallel if nproc > 1 else ["ddp"]:
                rows = run(args.config, nproc, parallel, args.steps, Path(tmp) / f"{nproc}-{parallel}", args.overrides)
                a, b = rows[args.skip - 1], rows[-1]
                rate = (b["tokens"] - a["tokens"]) / (b["time_s"] - a["time_s"])
                base = base or rate
                label = parallel if nproc > 1 else "-"
                threads = max(1, (os.cpu_count() or 1) // nproc)
                print(f"{nproc:>9} {label:>8} {threads:>12} {rate:>10,.0f} {rate / base:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
