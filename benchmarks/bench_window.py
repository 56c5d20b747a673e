"""The cost of a windowed attention step on the CPU: `scaled_dot_product_attention` with a banded mask against
plain causal attention (`is_causal=True`), inside a whole training step of the same GPT.

    python benchmarks/bench_window.py [--shape 4x128] [--lengths 128,512] [--batch 8] [--steps 8] [--json OUT]

For each length T one forward (with the loss) and backward of `GPT` on a random batch, under four inputs:
`causal` (no window: the model's plain path, what the trainer runs when the window covers the row), `full mask`
(a window of T: the same attention through the mask path, which must give the same loss), and windows of T/4
and 32 tokens. The variants are interleaved step by step after untimed warm-up steps, so a busy stretch of a
shared machine hits all alike; each reports the median of its timed steps and its ratio to `causal`. On the CPU
SDPA's masked path computes every score and masks it afterwards, so a window saves nothing here; the FLOP split
of `seqwarm plan` counts only the attended keys (what a sliding-window kernel on a GPU does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from seqwarm.model import GPT, GPTConfig


def step(model: GPT, idx: torch.Tensor, window: int | None) -> float:
    inputs = {} if window is None else {"window": torch.tensor(window, dtype=torch.int64)}
    ce, _ = model(idx[:, :-1], idx[:, 1:], **inputs)
    ce.backward()
    model.zero_grad(set_to_none=True)
    return float(ce.detach())


def measure(shape: str, T: int, batch: int, steps: int) -> dict:
    n_layer, d_model = (int(x) for x in shape.split("x"))
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(n_layer=n_layer, n_head=max(1, d_model // 32), d_model=d_model, max_seqlen=T, vocab_size=1024)
    )
    idx = torch.randint(0, 1024, (batch, T + 1))
    variants = {"causal": None, "full mask": T, "window T/4": T // 4, "window 32": 32}
    losses = {name: step(model, idx, w) for name, w in variants.items()}  # warm-up, and the losses compared
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(steps):
        for name, w in variants.items():
            start = time.perf_counter()
            step(model, idx, w)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["causal"])
    return {
        "shape": shape,
        "T": T,
        "batch": batch,
        "full_mask_loss_diff": abs(losses["full mask"] - losses["causal"]),
        **{f"{name} ms": 1e3 * statistics.median(t) for name, t in times.items()},
        **{f"{name} ratio": statistics.median(t) / base for name, t in times.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4x128", help="LAYERSxWIDTH (the proxy's cpu-small: 4x128)")
    ap.add_argument("--lengths", default="128,512")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [measure(args.shape, int(T), args.batch, args.steps) for T in args.lengths.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms per step (ratio to causal)")
    for r in rows:
        cells = [f"{k[:-3]} {r[k]:.1f} ({r[k[:-3] + ' ratio']:.2f}x)" for k in r if k.endswith(" ms")]
        print(
            f"{r['shape']} T={r['T']} batch {r['batch']}: "
            + ", ".join(cells)
            + f"; |loss full mask - causal| = {r['full_mask_loss_diff']:.1e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
