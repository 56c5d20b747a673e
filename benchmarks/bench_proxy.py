"""Training throughput of a config's real steps at 1 and 2 threads, one run alone (docs/PROXY.md):
what one run gains from a second core, against two runs side by side (`seqwarm sweep --shard`).

    python benchmarks/bench_proxy.py [CONFIG] [--steps N] [--threads 1,2] [KEY=VALUE ...]

Each thread count runs in a fresh child process (torch's thread pool is set once per process):
it builds the config's trainer on its corpus (`data.path`, prepared on first use), drives
`seqwarm.trainer.training_steps` for N steps with evaluation and checkpoints off, and reports the
median time of steps 4..N at full length (the baseline's steps; `curriculum.kind` is forced to
none). Run it on an otherwise idle machine: every number is wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = "--child"


def measure(config: str, overrides: list[str], steps: int, threads: int) -> dict:
    import torch

    from seqwarm.config import load_config
    from seqwarm.data.corpus import open_data
    from seqwarm.trainer import build, training_steps

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            config,
            [*overrides, f"run.dir={tmp}", f"train.num_threads={threads}", "curriculum.kind=none", "log.progress=false",
             "eval.every_tokens=1000000000000", "checkpoint.every_steps=1000000000", f"train.max_steps={steps + 1}"],
        )  # fmt: skip
        tr = build(cfg, Path(tmp), open_data(cfg, progress=False))
        gen = training_steps(tr, progress=False)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            next(gen)
            times.append(time.perf_counter() - start)
        gen.close()
    step_s = statistics.median(times[3:])
    tokens = cfg.train.global_batch_size * cfg.curriculum.seqlen_end
    return {"threads": threads, "step_s": step_s, "tokens_per_s": tokens / step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="proxy")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--threads", default="1,2")
    p.add_argument(CHILD, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.config, args.overrides, args.steps, args.child)))
        return
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        cmd = [sys.executable, __file__, args.config, *args.overrides, "--steps", str(args.steps), CHILD, str(threads)]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"# {args.config} {' '.join(args.overrides)}: median of steps 4-{args.steps} at full length, one run alone")
    print("threads   step (s)   tokens/s")
    for r in results:
        print(f"{r['threads']:>7}   {r['step_s']:8.3f}   {r['tokens_per_s']:8,.0f}")


if __name__ == "__main__":
    main()
