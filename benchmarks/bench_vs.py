"""One training step of the same GPT, seqwarm against Hugging Face's GPT2LMHeadModel (and nanoGPT); and of the
same Llama-style model, seqwarm's `model.family: llama` against Hugging Face's LlamaForCausalLM.

    python benchmarks/bench_vs.py [--shapes 6x384,4x256] [--families gpt2,llama] [--steps 6]
                                  [--precisions fp32,bf16] [--nanogpt /tmp/nanogpt_model.py] [--json OUT]

The Llama-style comparison (`--families llama`) is the same measurement on the same shape: seqwarm's llama family
(RMSNorm, rotary positions, SwiGLU at Llama's width rule, no biases, tied embeddings, multi-head attention)
against `LlamaForCausalLM` built from the equivalent `LlamaConfig` with `attn_implementation="sdpa"` and `labels`,
interleaved step by step as the GPT-2 comparison is; the FLOPs are those of the llama model.

A step is the same for every implementation: forward with the loss (under `torch.autocast` for
bf16), backward, gradient clipping to norm 1.0, `torch.optim.AdamW` (seqwarm's defaults: betas
0.9/0.999, weight decay 0.01 on matrices and embeddings only; fused for seqwarm, as its trainer builds
it, and the foreach default for the others, as theirs do on a CPU), `zero_grad(set_to_none=True)`. The
models share the shape (layers, width, heads, positions, vocabulary), have no dropout, GELU MLPs and
tied embeddings, and see the same random token batch. The GELU is the tanh approximation in seqwarm's
default (`model.activation: gelu_tanh`) and in Hugging Face's GPT-2, the exact erf form in nanoGPT
(`nn.GELU()`) and in `seqwarm gelu` (`model.activation: gelu`), which puts the two forms side by side. What differs is each one's own
forward and loss: seqwarm's `GPT.forward` with targets (the chunked `linear_cross_entropy`, summed,
divided by the tokens as `train_step` does); Hugging Face's `GPT2LMHeadModel` with
`attn_implementation="sdpa"` and `labels` (full logits, its own shifted mean loss, so over T - 1
positions per row); nanoGPT's `GPT` from its `model.py` with targets (full logits,
`F.cross_entropy`). nanoGPT is not part of this repository: `--nanogpt` names a copy of its
model.py, imported from that path.

This is the step alone, outside `fit` (no data loading, schedule or monitor): those are
`bench_train.py`'s to measure. The implementations' steps are interleaved (one step of each in turn)
after untimed warm-up steps, so a busy stretch of the machine hits all alike; each reports the
median of its timed steps. FLOP/s are model FLOPs, seqwarm's count (`GPTConfig.flops_per_token`,
the same shape for all), and the share is of the sgemm peak of the precision, measured in the same
process just before.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# benchmarks/ is sys.path[0] when a script of it runs (tests add it themselves).
from _common import DTYPES, machine_info, print_header, sgemm_peak

from seqwarm.files import atomic_write
from seqwarm.model import GPTConfig, build_model


@dataclass(frozen=True)
class VsShape:
    n_layer: int
    d_model: int
    n_head: int
    seqlen: int
    batch: int
    vocab: int
    family: str = "gpt2"

    def gpt(self, activation: str = "gelu_tanh") -> GPTConfig:
        """seqwarm's model of this shape (also what the FLOP counts are taken from)."""
        return GPTConfig(
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            max_seqlen=self.seqlen,
            vocab_size=self.vocab,
            activation=activation,
            family=self.family,
        )


SHAPES = {
    # body-dominated: 71% of the training FLOPs in the blocks
    "6x384": VsShape(6, 384, 6, 256, 8, 8192),
    # output-dominated: GPT-2's vocabulary, 19% in the blocks
    "4x256": VsShape(4, 256, 4, 256, 8, 50257),
}


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """seqwarm's rule (`GPT.param_groups`) for any model: decay tensors of 2+ dims only."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def seqwarm_model(s: VsShape, activation: str = "gelu_tanh"):
    model = build_model(s.gpt(activation))

    def loss(x, y):
        return model(x, y)[0] / y.numel()  # (summed cross-entropy, extras)

    return model, loss


def hf_model(s: VsShape):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=s.n_layer,
        n_embd=s.d_model,
        n_head=s.n_head,
        n_positions=s.seqlen,
        vocab_size=s.vocab,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # GPT-2's 50256 is outside a smaller vocabulary; these ids play no part in a training step.
        bos_token_id=s.vocab - 1,
        eos_token_id=s.vocab - 1,
    )
    model = GPT2LMHeadModel._from_config(config, attn_implementation="sdpa")  # HF's way for a fresh model
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"transformers gave attention {model.config._attn_implementation!r}, not sdpa")

    def loss(x, y):
        return model(input_ids=x, labels=x).loss

    return model, loss


def hf_llama_model(s: VsShape):
    """transformers' LlamaForCausalLM of the shape: the same blocks as seqwarm's llama family (tied embeddings,
    RMSNorm eps 1e-5, the same SwiGLU width), SDPA attention, its own shifted mean loss from `labels`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    gpt = s.gpt()
    config = LlamaConfig(
        vocab_size=s.vocab,
        hidden_size=s.d_model,
        intermediate_size=gpt.mlp_width,
        num_hidden_layers=s.n_layer,
        num_attention_heads=s.n_head,
        num_key_value_heads=s.n_head,
        max_position_embeddings=s.seqlen,
        rms_norm_eps=gpt.norm_eps,
        tie_word_embeddings=True,
        bos_token_id=s.vocab - 1,
        eos_token_id=s.vocab - 1,
    )
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"transformers gave attention {model.config._attn_implementation!r}, not sdpa")

    def loss(x, y):
        return model(input_ids=x, labels=x).loss

    return model, loss


def load_nanogpt(path: Path):
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_factory(module):
    def make(s: VsShape):
        config = module.GPTConfig(
            block_size=s.seqlen, vocab_size=s.vocab, n_layer=s.n_layer, n_head=s.n_head, n_embd=s.d_model, dropout=0.0
        )
        with contextlib.redirect_stdout(sys.stderr):  # its "number of parameters" line, off the report
            model = module.GPT(config)

        def loss(x, y):
            return model(x, y)[1]

        return model, loss

    return make


class Stepper:
    """One implementation at one precision: a model, its AdamW, and the times of its steps."""

    def __init__(self, name: str, make, shape: VsShape, precision: str):
        torch.manual_seed(0)
        self.name, self.precision = name, precision
        self.model, self.loss = make(shape)
        self.model.train()
        # Each implementation's own AdamW: seqwarm's trainer builds it fused (`trainer.build`, CPU too);
        # nanoGPT's `configure_optimizers` fuses on CUDA only, and the HF Trainer's default (adamw_torch)
        # is the foreach path.
        self.optimizer = torch.optim.AdamW(
            decay_groups(self.model, 0.01),
            lr=6e-4,
            betas=(0.9, 0.999),
            eps=1e-8,
            fused=name.startswith("seqwarm"),
        )
        # Entered once per step, never nested: both context managers may be reused.
        self.autocast = (
            contextlib.nullcontext() if precision == "fp32" else torch.autocast("cpu", dtype=DTYPES[precision])
        )
        self.times: list[float] = []
        self.last_loss = float("nan")

    def step(self, x: torch.Tensor, y: torch.Tensor, *, timed: bool) -> None:
        t0 = time.perf_counter()
        with self.autocast:  # the forward only, as torch.amp advises and seqwarm's train_step does
            loss = self.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        self.last_loss = loss.item()
        if timed:
            self.times.append(elapsed)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def measure(shape: VsShape, impls: dict, precisions: list[str], warmup: int, steps: int) -> list[Stepper]:
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(shape.vocab, (shape.batch, shape.seqlen + 1), generator=gen)
    x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
    steppers = [Stepper(name, make, shape, p) for p in precisions for name, make in impls.items()]
    for i in range(warmup + steps):
        for s in steppers:
            s.step(x, y, timed=i >= warmup)
    return steppers


def report(name: str, shape: VsShape, steppers: list[Stepper], peaks: dict[str, float], warmup: int, steps: int):
    gpt = shape.gpt()
    tokens = shape.batch * shape.seqlen
    body = gpt.flop_split(shape.seqlen)["body"] / gpt.flops_per_token(shape.seqlen)
    print(
        f"== {name}: {shape.n_layer} layers, width {shape.d_model}, {shape.n_head} heads, length {shape.seqlen}, "
        f"batch {shape.batch}, vocabulary {shape.vocab:,} ({body:.0%} of the FLOPs in the body); "
        f"{warmup} untimed + {steps} timed steps each, interleaved"
    )
    print("  sgemm peak now (2048^3, median of 5): " + ", ".join(f"{p} {g:,.1f} GFLOP/s" for p, g in peaks.items()))
    print(
        f"  {'implementation':<16} {'prec':>5} {'median ms':>10} {'tokens/s':>9} {'GFLOP/s':>8} {'% peak':>7} "
        f"{'seqwarm/this':>12} {'loss':>7}"
    )
    rows = []
    for s in steppers:
        ref = next(o for o in steppers if o.name == "seqwarm" and o.precision == s.precision)
        gflops = tokens * gpt.flops_per_token(shape.seqlen) / s.median_s / 1e9
        peak = peaks.get(s.precision)
        share = f"{100 * gflops / peak:6.1f}%" if peak else f"{'n/a':>7}"
        speed = s.median_s / ref.median_s  # > 1: seqwarm's step is faster
        print(
            f"  {s.name:<16} {s.precision:>5} {1e3 * s.median_s:>10.1f} {tokens / s.median_s:>9,.0f} {gflops:>8.1f} "
            f"{share} {speed:>11.2f}x {s.last_loss:>7.3f}"
        )
        rows.append(
            {
                "shape": name,
                "implementation": s.name,
                "precision": s.precision,
                "step_s": s.times,
                "median_ms": 1e3 * s.median_s,
                "gflop_per_s": gflops,
                "seqwarm_speedup": speed,
            }
        )
    fp32 = {s.name: s for s in steppers if s.precision == "fp32"}
    for s in steppers:
        if s.precision != "fp32" and s.name in fp32:
            print(f"  {s.name} {s.precision} vs its fp32: {fp32[s.name].median_s / s.median_s:.2f}x")
    print("  seqwarm/this: this step's median time over seqwarm's at the same precision (> 1: seqwarm faster);")
    print("  loss: the last step's (all start near ln(vocabulary) on random tokens)")
    print()
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    p.add_argument("--steps", type=int, default=6, help="timed steps per implementation (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--families", default="gpt2,llama", help="comma-separated model families (default gpt2,llama)")
    p.add_argument("--precisions", default="fp32", help="comma-separated, from fp32, bf16 (autocast; default fp32)")
    p.add_argument("--nanogpt", type=Path, help="path of nanoGPT's model.py, to time it as well")
    p.add_argument("--no-hf", action="store_true", help="leave Hugging Face out")
    p.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if bad := [s for s in args.shapes if s not in SHAPES]:
        p.error(f"--shapes: unknown {', '.join(bad)} (choose from {', '.join(SHAPES)})")
    args.families = [s.strip() for s in args.families.split(",") if s.strip()]
    if bad := [s for s in args.families if s not in ("gpt2", "llama")]:
        p.error(f"--families: unknown {', '.join(bad)} (gpt2, llama)")
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    if bad := [s for s in args.precisions if s not in ("fp32", "bf16")]:
        p.error(f"--precisions: unknown {', '.join(bad)} (on CPU: fp32, bf16)")
    if args.nanogpt and not args.nanogpt.is_file():
        p.error(f"--nanogpt: {args.nanogpt} is not a file")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps: at least 1; --warmup: at least 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    impls = {"seqwarm": seqwarm_model, "seqwarm gelu": lambda s: seqwarm_model(s, "gelu")}
    if not args.no_hf:
        impls["hf GPT2LMHead"] = hf_model
    if args.nanogpt:
        impls["nanoGPT"] = nanogpt_factory(load_nanogpt(args.nanogpt))
    llama_impls = {"seqwarm": seqwarm_model} | ({} if args.no_hf else {"hf LlamaForCausalLM": hf_llama_model})
    runs = [(name, SHAPES[name], impls) for name in args.shapes] if "gpt2" in args.families else []
    if "llama" in args.families:
        runs += [
            (f"{name} llama", dataclasses.replace(SHAPES[name], family="llama"), llama_impls) for name in args.shapes
        ]
    info = machine_info()
    print_header("seqwarm step against other implementations", info)
    out: dict = {"machine": info, "rows": [], "peaks": {}}
    for name, shape, implementations in runs:
        peaks = {p: sgemm_peak(p) for p in ("fp32", "bf16")}
        steppers = measure(shape, implementations, args.precisions, args.warmup, args.steps)
        out["rows"] += report(name, shape, steppers, peaks, args.warmup, args.steps)
        out["peaks"][name] = peaks
        del steppers
    if args.json:
        atomic_write(args.json, json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
