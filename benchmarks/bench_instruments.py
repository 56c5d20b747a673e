"""What the instruments (`monitor.instruments`, issue 25) cost per training step, on the proxy's model and batch.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_instruments.py [--steps 20] [--warmup 3] [--json OUT]

Three trainers of configs/proxy.yaml's model and batch (cpu-small, 32 x 128 tokens, fp32, 1 thread) are built side
by side: the instruments off, on at `monitor.every: 10` (the proxy's cadence) and on at `every: 1` (every step).
Their steps are interleaved (one step of each in turn, `seqwarm.trainer.training_steps`, the loop of `fit` itself)
so that a slow stretch of a shared machine hits all three alike, as benchmarks/bench_train.py does. A step's time is
taken around its `next()`. Reported: the median and mean step time of each and the overhead of the mean against off
(the mean, because at every=10 the cost falls on one step in ten; the median would hide it). At every=1 the overhead
is the cost of one instrumented step; at every=10 it is amortised as the proxy runs it.

The data: a synthetic corpus of random words (`_common.make_corpus`) seen through the proxy's 1,024-token vocabulary
(`_common.with_vocab`): the compute of a step does not depend on which ids the tokens are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_info, make_corpus, print_header, with_vocab

from seqwarm.config import load_config
from seqwarm.data.format import TokenData
from seqwarm.tokenizer import VOCAB_SIZE
from seqwarm.trainer import build, training_steps

NEVER = 10**12
PROXY_VOCAB = 1024  # builtin-bpe1024, the proxy's corpus (configs/proxy.yaml)
VARIANTS = (
    ("off", ["monitor.instruments=false"]),
    ("every=10", ["monitor.every=10"]),
    ("every=1", ["monitor.every=1"]),
)


def config(run_dir: Path, data: Path, extra: list[str]):
    return load_config(
        "proxy",
        [
            f"run.dir={run_dir}",
            f"data.path={data}",
            f"model.vocab_size={PROXY_VOCAB}",
            "monitor.instruments=true",
            *extra,
            f"train.max_tokens={NEVER}",
            "train.lr_decay_unit=tokens",
            f"train.lr_decay_tokens={NEVER}",
            "train.num_threads=1",
            "train.preflight=false",
            "eval.every_tokens=null",
            "checkpoint.every_steps=null",
            "log.progress=false",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (a multiple of 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (AdamW's state, the heap)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    print_header("instruments' cost per step (proxy model and batch, fp32, 1 thread)", info)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepared = make_corpus(tmp / "corpus", docs=60)
        data = with_vocab(TokenData(prepared, vocab_size=VOCAB_SIZE), PROXY_VOCAB)
        gens, times = {}, {name: [] for name, _ in VARIANTS}
        for name, extra in VARIANTS:
            run_dir = tmp / name.replace("=", "")
            run_dir.mkdir()
            tr = build(config(run_dir, prepared, extra), run_dir, data)
            gens[name] = training_steps(tr, progress=False)
        for i in range(args.warmup + args.steps):
            for name, gen in gens.items():
                start = time.perf_counter()
                row = next(gen)
                elapsed = time.perf_counter() - start
                if i >= args.warmup:
                    times[name].append(elapsed)
                if name != "off" and i == args.warmup:
                    assert any(k.startswith("diag/attn/") for k in row) or name == "every=10", sorted(row)
    off = statistics.fmean(times["off"])
    results = {}
    print(f"\n{'variant':<10} {'median ms':>10} {'mean ms':>9} {'overhead of the mean':>21}")
    for name, _ in VARIANTS:
        ts = times[name]
        mean = statistics.fmean(ts)
        results[name] = {"median_ms": 1e3 * statistics.median(ts), "mean_ms": 1e3 * mean, "overhead": mean / off - 1}
        print(f"{name:<10} {results[name]['median_ms']:>10.1f} {1e3 * mean:>9.1f} {100 * (mean / off - 1):>20.1f}%")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "steps": args.steps, "results": results}, indent=1))


if __name__ == "__main__":
    main()
