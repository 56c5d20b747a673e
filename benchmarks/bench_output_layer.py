"""The output layer + loss alone (`seqwarm.loss.linear_cross_entropy`), forward and backward, as a
share of the sgemm peak of its precision, at GPT-2's vocabulary.

    python benchmarks/bench_output_layer.py [--tokens 2048] [--width 256] [--vocab 50257]
        [--chunks 512,1024,2048,4096] [--precisions fp32,bf16] [--steps 5] [--reference PATH]

Per chunk size and precision (bf16: under `torch.autocast`, as training runs it): the median time of
forward + backward over `--steps` calls, interleaved with every other variant so that a busy
machine hits them alike, and its FLOP/s. The FLOPs are the three matmuls of the vocabulary
projection, 3 x 2 x tokens x width x vocabulary (logits, and the gradients of the hidden states
and of the weight), against the unpadded vocabulary: the useful work. The share is of the 2048^3
sgemm peak of the same precision, measured in the same run (`_common.sgemm_peak`). The plain path
(the full logits, `F.cross_entropy`, autograd) runs beside it as a yardstick. `--reference PATH`
also times another version's `linear_cross_entropy` (a `loss.py` from git: `git show REV:seqwarm/loss.py
> /tmp/old_loss.py`), to measure a change side by side.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import time

import torch
import torch.nn.functional as F
from _common import machine_info, print_header, sgemm_peak

from seqwarm.loss import linear_cross_entropy


def load_reference(path: str):
    spec = importlib.util.spec_from_file_location("reference_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.linear_cross_entropy


def plain(hidden, weight, targets, *, vocab_size, chunk_size=None):
    return F.cross_entropy((hidden @ weight.T)[:, :vocab_size], targets, reduction="sum")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048, help="tokens per call (default 2048: batch 8 x 256)")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--chunks", default="512,1024,2048,4096")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--reference", help="a loss.py whose linear_cross_entropy is timed beside this one")
    args = p.parse_args()

    padded = (args.vocab + 63) // 64 * 64
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.width, generator=gen).requires_grad_()
    weight = (0.02 * torch.randn(padded, args.width, generator=gen)).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen)
    impls = {"seqwarm": linear_cross_entropy, "plain": plain}
    if args.reference:
        impls["reference"] = load_reference(args.reference)
    variants = []
    for precision in args.precisions.split(","):
        for name, fn in impls.items():
            for chunk in [None] if name == "plain" else [int(c) for c in args.chunks.split(",")]:
                variants.append((precision, name, chunk, fn))

    def call(precision, fn, chunk):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        hidden.grad = weight.grad = None
        with autocast:
            loss = fn(hidden, weight, targets, vocab_size=args.vocab, chunk_size=chunk)
        loss.backward()

    print_header(
        f"== output layer + loss: {args.tokens} tokens x width {args.width} x vocabulary {args.vocab}", machine_info()
    )
    peaks = {prec: sgemm_peak(prec) for prec in args.precisions.split(",")}
    print("  sgemm peak now (2048^3, median of 5): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    times = {i: [] for i in range(len(variants))}
    for precision, _, chunk, fn in variants:
        call(precision, fn, chunk)  # untimed: the heap grows to its size, kernels are chosen
    for _ in range(args.steps):
        for i, (precision, _, chunk, fn) in enumerate(variants):
            t0 = time.perf_counter()
            call(precision, fn, chunk)
            times[i].append(time.perf_counter() - t0)
    flops = 3 * 2 * args.tokens * args.width * args.vocab
    print(f"  {'precision':9} {'implementation':14} {'chunk':>6} {'median ms':>10} {'GFLOP/s':>8} {'% peak':>7}")
    for i, (precision, name, chunk, _) in enumerate(variants):
        t = statistics.median(times[i])
        rate = flops / t / 1e9
        print(f"  {precision:9} {name:14} {chunk or '-':>6} {t * 1e3:10.1f} {rate:8.1f} {rate / peaks[precision]:7.1%}")


if __name__ == "__main__":
    main()
