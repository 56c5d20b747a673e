"""Study 2, reduced, at a scale closer to the paper's: one GPU, at most 8 minutes (issue 28, item 5).

    bash benchmarks/study2_gpu.sh --out runs/study2-gpu [--data DIR] [--lr 1e-2]    # on one H100
    python benchmarks/study2_gpu.py --toy --out /tmp/study2-toy                      # the same code on a CPU

The proxy study (docs/STUDY2.md) runs at width 128 and context 128 or 512. Here the arms that carry its headline,
baseline, SLW and QK-norm (their overrides from seqwarm/study_arms.py, the study's own), train a GPT-2 117M shape
(12 layers x 768, 12 heads) at context 1,024 (1.3x the width: the paper's GPT-2 117M), 256 sequences a step (8
micro-batches of 32), bf16 autocast, at one aggressive LR, with the attention instruments every `--every` steps.
The vocabulary is the builtin corpus's 1,024-token BPE, so the compute is in the Transformer body, as in the
proxy. The corpus is small (2.4M train tokens): the runs pass over it several times, which the output says.

The budget is explicit. A probe of the baseline (a few steps, the instruments included) measures tokens/s; the
steps per arm are then what fits the rest of `--budget-s` (the whole run's seconds) split over the arms (with a margin for evaluation and
start-up), the same full-length steps and tokens for every arm, so they compare at equal tokens. SLW takes more,
shorter steps for the same tokens; the LR warmup is 10% and SLW's T 40% of the baseline's steps, the study's
proportions. Each run stops cleanly at its token budget; the wrapper's timeout is the backstop.

Writes `OUT/study2_gpu.md` (the settings and a table: final val loss, plateau, collapse, max attention logit,
min entropy, max loss ratio, tokens/s) and `OUT/study2_gpu.csv`; the run directories keep metrics.jsonl and
summary.json (checkpoints are deleted: 1.5 GB each at this size).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # seqwarm from this checkout when run as a script

from seqwarm.config import load_config  # noqa: E402
from seqwarm.data.corpus import data_directory  # noqa: E402
from seqwarm.lifecycle import train  # noqa: E402
from seqwarm.metrics import METRICS, read_metrics, train_rows  # noqa: E402
from seqwarm.study_arms import ARMS, BASE_CONFIG, PLATEAU_MARGIN, run_measures  # noqa: E402
from seqwarm.tables import markdown_table  # noqa: E402


@dataclass(frozen=True)
class Scale:
    """The shape and the budget of one invocation: the GPU's, or the toy's (the same code on a CPU in seconds)."""

    preset: str
    context: int
    batch: int
    micro: int
    device: str
    every: int  # instrument every N steps: the attention statistics cost a pass over T x T logits per layer
    probe_steps: int
    budget_s: float  # the whole invocation's seconds, probe included: the arms share what the probe leaves
    min_steps: int
    max_steps: int


GPU = Scale("gpt2-117m", 1024, 256, 32, "cuda", every=10, probe_steps=12, budget_s=400, min_steps=20, max_steps=400)
TOY = Scale("tiny", 64, 8, 4, "cpu", every=2, probe_steps=4, budget_s=15, min_steps=6, max_steps=10)
MARGIN = 0.8  # of the budget for training steps; the rest for evaluations, the final checkpoint and start-up


def overrides(s: Scale, args, steps: int, run_dir: Path, arm: str) -> list[str]:
    """The proxy turned into this scale, then the study's arm (seqwarm.study_arms.ARMS) on top."""
    tokens = steps * s.batch * s.context
    return [
        f"data.path={args.data}",
        f"model.preset={s.preset}",
        f"model.max_seqlen={s.context}",
        f"curriculum.seqlen_end={s.context}",
        "curriculum.seqlen_start=8",
        f"curriculum.duration={max(1, 4 * steps // 10)}",  # T: 40% of the run, the study's 40 of 100
        f"train.global_batch_size={s.batch}",
        f"train.micro_batch_size={s.micro}",
        f"train.lr={args.lr}",
        f"train.min_lr={args.lr / 100}",
        f"train.warmup_steps={max(1, steps // 10)}",  # the study's 10 of 100
        f"train.max_tokens={tokens}",
        f"train.device={s.device}",
        "train.precision=bf16",
        f"train.compile={str(args.compile).lower()}",
        "monitor.instruments=true",
        f"monitor.every={s.every}",
        f"eval.every_tokens={5 * s.batch * s.context}",  # every 5 full-length steps: the plateau's resolution
        "eval.max_sequences=64",
        "checkpoint.every_steps=null",
        "log.progress=false",
        f"run.seed={args.seed}",
        f"run.dir={run_dir}",
        *ARMS[arm],
    ]


def run_arm(s: Scale, args, steps: int, run_dir: Path, arm: str) -> dict:
    cfg = load_config(BASE_CONFIG, overrides(s, args, steps, run_dir, arm))
    start = time.monotonic()
    train(cfg, force=True, progress=False)
    wall = time.monotonic() - start
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next arm starts from an empty allocator
    return {"arm": arm, "process_wall_s": wall} | run_measures(run_dir)


def probe_tokens_per_s(run_dir: Path) -> float:
    """Tokens/s of the probe's steady steps: its first step (CUDA's warm-up, autotuning) is left out."""
    rows = train_rows(read_metrics(run_dir / METRICS))
    first, last = rows[1] if len(rows) > 2 else rows[0], rows[-1]
    return (last["tokens"] - first["tokens"]) / max(last["time_s"] - first["time_s"], 1e-9)


def plan_steps(s: Scale, tokens_per_s: float, left_s: float, arms: int) -> int:
    """Full-length steps per arm that fit `left_s` seconds over `arms` runs at the probe's speed."""
    steps = int(MARGIN * left_s / arms * tokens_per_s / (s.batch * s.context))
    return max(s.min_steps, min(s.max_steps, steps))


COLUMNS = [
    ("arm", lambda r: r["arm"]),
    ("final val loss", lambda r: _f(r["final_val_loss"], ".3f")),
    (f"plateau (steps to val loss <= unigram - {PLATEAU_MARGIN})", lambda r: _plateau(r)),
    ("collapse (entropy < 0.1, logit > 10)", lambda r: _collapse(r)),
    ("max attention logit", lambda r: _f(r["max_attn_logit"], ",.1f")),
    ("min attention entropy", lambda r: _f(r["min_attn_entropy"], ".3f")),
    ("max loss ratio", lambda r: _f(r["max_loss_ratio"], ".3f")),
    ("steps", lambda r: str(r["steps"])),
    ("tokens/s", lambda r: _f(r["tokens_per_s"], ",.0f")),
    ("wall s", lambda r: _f(r["process_wall_s"], ".0f")),
]
CSV_FIELDS = ["arm", "final_val_loss", "plateau_steps", "escaped", "collapse_layer", "collapse_step", "max_attn_logit",
              "min_attn_entropy", "layer0_logit_max", "layer0_entropy_min", "max_loss_ratio", "steps", "tokens",
              "tokens_per_s", "wall_s", "process_wall_s", "diverged"]  # fmt: skip


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _plateau(r: dict) -> str:
    return "-" if r["plateau_steps"] is None else str(r["plateau_steps"]) if r["escaped"] else f"> {r['steps']}"


def _collapse(r: dict) -> str:
    c = r["collapse"]
    return f"layer {c['layer']} at step {c['start']}" if c else "none"


def write_outputs(out: Path, header: list[str], results: list[dict]) -> None:
    md = "\n".join(header) + "\n\n" + markdown_table(COLUMNS, results) + "\n"
    (out / "study2_gpu.md").write_text(md)
    with open(out / "study2_gpu.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in results:
            c = r["collapse"] or {}
            w.writerow(r | {"collapse_layer": c.get("layer"), "collapse_step": c.get("start")})
    print(md)


def device_name(s: Scale) -> str:
    if s.device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for the table, the CSV and the run directories")
    ap.add_argument("--data", default="builtin-bpe1024", help="a prepared corpus (default: the builtin 1,024 BPE)")
    ap.add_argument("--lr", type=float, default=1e-2, help="the aggressive LR (default 1e-2)")
    ap.add_argument("--arms", default="baseline,slw,qk-norm", help=f"from the study's: {', '.join(ARMS)}")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--budget-s",
        type=float,
        help="seconds for the whole run, probe included (default: 400 on a GPU, under the wrapper's 480)",
    )
    ap.add_argument("--compile", action="store_true", help="train.compile (its compile time counts in the budget)")
    ap.add_argument("--toy", action="store_true", help="the same code at a tiny size on the CPU, in under a minute")
    args = ap.parse_args(argv)
    s = TOY if args.toy else GPU
    if args.budget_s is not None:
        s = Scale(**{**s.__dict__, "budget_s": args.budget_s})
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        ap.error(f"--arms: not study arms: {', '.join(unknown)}")
    if s.device == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --toy for the CPU version")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    train_tokens = json.loads((data_directory(args.data) / "meta.json").read_text())["splits"]["train"]["tokens"]

    run_arm(s, args, s.probe_steps, out / "probe", "baseline")
    tokens_per_s = probe_tokens_per_s(out / "probe")
    left = s.budget_s - (time.monotonic() - start)
    steps = plan_steps(s, tokens_per_s, left, len(arms))
    tokens = steps * s.batch * s.context
    print(f"probe: {tokens_per_s:,.0f} tokens/s; {left:.0f} s left for {len(arms)} arms -> {steps} steps each")

    results = []
    for arm in arms:
        results.append(run_arm(s, args, steps, out / arm, arm))
        r = results[-1]
        print(
            f"[{arm}] {r['steps']} steps, final val loss {_f(r['final_val_loss'], '.3f')}, {r['process_wall_s']:.0f} s"
        )
    header = [
        f"# Study 2, reduced, on {device_name(s)}" + (" (--toy: the CPU version, not a result)" if args.toy else ""),
        "",
        f"{s.preset} ({s.context} context), {s.batch} sequences a step ({s.micro} per micro-batch), bf16, "
        f"LR {args.lr:g}, seed {args.seed}, {steps} full-length steps = {tokens:,} tokens per arm "
        f"({tokens / train_tokens:.1f} passes over {args.data}'s {train_tokens:,} train tokens); instruments every "
        f"{s.every} steps. Budget {s.budget_s:.0f} s in all; the probe measured {tokens_per_s:,.0f} tokens/s; "
        f"total {time.monotonic() - start:.0f} s. torch {torch.__version__}.",
    ]
    write_outputs(out, header, results)
    return results


if __name__ == "__main__":
    main()
