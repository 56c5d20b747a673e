"""Training throughput on CPU, and what the Sequence Length Warmup machinery costs per step.

    python benchmarks/bench_train.py [--steps N] [--shapes tiny,proxy,6x384,gpt2-117m] [--json OUT]
    python benchmarks/bench_train.py --parts variants --precisions fp32,bf16 --compile --shapes 6x384

Everything printed is measured on the machine it runs on; nothing is estimated. For each model
shape it measures:

1. tokens/s at full length without a curriculum (`curriculum.kind: none`, the baseline);
2. tokens/s with SLW on but `seqlen_start == seqlen_end`: the same full-length compute as the
   baseline, while pacing, truncation and the per-step bookkeeping all run, so the difference to
   (1) is the machinery's overhead and nothing else;
3. tokens/s during a real warmup, at a few short lengths (SLW with a duration so long that the
   length stays at `seqlen_start`), since the point of SLW is the cheap early steps;
4. where a step's time goes, by the phases `fit` names: `data` (pacing, `SeqlenSchedule.__call__`,
   then the batch schedule and batch assembly with truncation, `TrainLoader.next_batch`), `lr`
   (`Clock.after` + `learning_rate`), `train_step`, `tick` (`Clock.tick`), `metrics` (the row,
   with `LossRatio`), `adam` (the stability monitor's Adam statistics) and `log` (`MetricsLog.write`,
   `json.dumps`); `loop` is the rest of the step (the guard, the eval and checkpoint tests, the
   progress bar, the generator itself). `train_step` is split further into the Transformer body's
   forward pass, the chunked output layer + loss (`linear_cross_entropy`), AdamW, and the rest
   (mostly the body's backward pass).

5. (`--parts variants`) the baseline at full length in each precision of `--precisions`
   (`train.precision`, passed through as given, `auto` included), eager and with `--compile` also
   `train.compile: true`, their steps interleaved: tokens/s, model FLOP/s (`GPTConfig.flops_per_token`
   of the built model, the count `seqwarm plan` uses) and their share of the sgemm peak of the
   precision in use, which is the autocast dtype seen inside the steps (so `auto` reports what it
   chose) and whose peak (a 2048 x 2048 matmul, fp32 and bf16, median of 5) is measured right
   before, in the same process on the same threads. A compiled run reports its compile time (what
   its untimed first steps took beyond as many steady steps) and its recompiles (frames
   `torch.compile` compiled after the first, from `torch._dynamo.utils.counters`).

Shapes: `tiny`; `proxy` (configs/proxy.yaml's model and batch: cpu-small at 128 positions, a
1,024-token vocabulary); `6x384` (6 layers, width 384, length 256, batch 8, vocabulary 8,192: the
body holds most of the FLOPs); `gpt2-117m`. A smaller vocabulary than the corpus's GPT-2 one is the
same tokens taken modulo its size (`_common.with_vocab`): the compute does not depend on the ids.

What is timed is `fit`'s own loop, not a copy of it: each run is a `seqwarm.trainer.training_steps`
generator (the loop of `fit`, one step per `next()`), driven with a `FitHook` whose `phase(name)`
adds `time.perf_counter()` seconds to that phase. A step's time is taken around its `next()`.
Inside the phases, four callables of each built trainer are wrapped with timers
(`Curriculum.at` of the step plan, `GPT.trunk`, `optimizer.step`, and the `linear_cross_entropy` that
`seqwarm.model` looks up in its own namespace); seqwarm itself is not changed. Evaluation and
checkpoints are configured off (and checked absent afterwards): they happen every N tokens or
steps, not every step.

The baseline and its SLW twin are built side by side and their timed steps alternate, so that a
slow stretch of a shared machine hits both alike. The `cpu/wall` column (this process's CPU
seconds per wall second) shows such stretches: it is about torch's thread count when the benchmark
has the cores to itself and drops when other processes compete for them.

Last, the tiny baseline is measured in fresh child processes of this script, without and with
`seqwarm.runtime.keep_freed_memory()` (glibc's mallopt thresholds), alternating, twice each by
default. That setting is process-wide and cannot be undone, and `build()` applies it on CPU, so
a "without" child replaces it with a no-op before building (`--no-malloc-tuning`). Everything
else in the main process runs with it, as training does.

The data is a synthetic corpus of random English words, prepared offline with `seqwarm prepare`'s
function in a temporary directory (or `--data DIR`, any prepared corpus). Its content does not
change the compute of a step, only its loss values.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

# benchmarks/ is sys.path[0] when a script of it runs (tests add it themselves).
from _common import (
    DTYPES,
    dynamo_counts,
    machine_info,
    make_corpus,
    precision_name,
    print_header,
    sgemm_peak,
    with_vocab,
)

import seqwarm.model
import seqwarm.runtime
import seqwarm.trainer
import seqwarm.trainer_state
from seqwarm.checkpoint import latest_checkpoint
from seqwarm.config import Config, ModelConfig, config_from_dict
from seqwarm.data.format import TokenData
from seqwarm.errors import SeqwarmError
from seqwarm.files import atomic_write
from seqwarm.metrics import METRICS, eval_rows, read_metrics
from seqwarm.tokenizer import VOCAB_SIZE
from seqwarm.trainer import FitHook, build, training_steps


@dataclass(frozen=True)
class Shape:
    name: str
    model: dict  # the config's model section: a preset of seqwarm.model.PRESETS and overrides
    global_batch: int
    micro_batch: int
    short_lengths: tuple[int, ...]  # lengths measured "during warmup", besides the full length
    warmup_steps: int  # untimed steps first: the first steps grow the heap and create AdamW's state
    steps: int  # timed steps
    vocab: int | None = None  # the data's vocabulary (None: GPT-2's, the corpus's own; see with_vocab)


# Batch sizes are small so that the whole benchmark fits in a few minutes on 2 cores: a gpt2-117m
# step over one 1024-token sequence already takes seconds there. Per-step costs (bookkeeping, the
# Adam statistics, AdamW) therefore weigh more here than at the paper's batch 512.
SHAPES = {
    "tiny": Shape("tiny", {"preset": "tiny"}, 16, 8, short_lengths=(16, 64), warmup_steps=5, steps=20),
    # configs/proxy.yaml's model and batch: cpu-small at 128 positions, its 1,024-token BPE vocabulary.
    "proxy": Shape(
        "proxy", {"preset": "cpu-small", "max_seqlen": 128}, 32, 32, (16, 64), warmup_steps=3, steps=10, vocab=1024
    ),
    # Body-dominated (71% of the FLOPs in the blocks): the shape of issue 14's comparison with nanoGPT and HF.
    "6x384": Shape(
        "6x384",
        {"preset": None, "n_layer": 6, "d_model": 384, "n_head": 6, "max_seqlen": 256},
        8,
        8,
        (64, 128),
        warmup_steps=2,
        steps=6,
        vocab=8192,
    ),
    "gpt2-117m": Shape("gpt2-117m", {"preset": "gpt2-117m"}, 1, 1, short_lengths=(64, 256), warmup_steps=2, steps=3),
}
# The shapes whose timed steps --big-steps sets (--steps sets the others').
BIG = ("gpt2-117m",)

# Phases of a step, in the order `fit` runs them, as (group, what is timed): the names of
# `FitHook.phase`, then `loop`, what the step's `next()` spends outside them.
PHASES = {
    "data": ("slw", "pacing, batch schedule, TrainLoader.next_batch"),
    "lr": ("bookkeeping", "Clock.after + learning_rate"),
    "train_step": ("train_step", "forward, backward, clip, AdamW"),
    "tick": ("bookkeeping", "Clock.tick"),
    "metrics": ("bookkeeping", "step_row: the row dict, LossRatio"),
    "adam": ("monitor", "adam_row: adam_statistics + read-back (every step by default)"),
    "log": ("bookkeeping", "wall_s, MetricsLog.write (json.dumps)"),
    "loop": ("bookkeeping", "outside the phases: guard, eval/checkpoint tests, progress bar"),
}
HOOK_PHASES = tuple(p for p in PHASES if p != "loop")
GROUPS = {
    "slw": "SLW machinery: pacing + batch assembly/truncation",
    "bookkeeping": "bookkeeping: lr, tick, metrics, log, loop",
    "monitor": "stability monitor: Adam statistics",
}
# Inside two phases, from timers wrapped around callables of the built trainer; the part named in
# RESIDUAL has no timer of its own: it is what is left of its phase.
INNER = {
    "data": {
        "pacing": "SeqlenSchedule.__call__",
        "batch": "BatchSchedule + TrainLoader.next_batch: draw, read, truncate",
    },
    "train_step": {
        "body_forward": "GPT.trunk: embeddings, blocks, final LayerNorm",
        "output_loss": "linear_cross_entropy: output layer, loss and their gradients",
        "adamw": "optimizer.step (AdamW)",
        "rest": "the rest: body backward, gradient clipping, zero_grad",
    },
}
RESIDUAL = {"data": "batch", "train_step": "rest"}

# Far beyond anything the benchmark reaches: as max_tokens and max_steps, training never finishes
# (and so never evaluates or saves) inside the measurement; as the SLW duration, the length stays
# at seqlen_start.
NEVER = 10**15

# A run to measure: (name, length, curriculum section, train-section overrides).
Spec = tuple[str, int, dict, dict]


@dataclass
class Result:
    name: str
    shape: str
    seqlen: int
    steps: int
    tokens: int
    wall_s: float
    cpu_s: float = 0.0  # CPU time of this process (all threads) during the timed steps
    step_s: list[float] = field(default_factory=list)
    phase_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    inner_s: dict[str, float] = field(default_factory=dict)
    gflop_per_token: float = 0.0
    warm_s: list[float] = field(default_factory=list)  # the untimed first steps' wall times
    precision: str = "fp32"  # the one in use, as seen inside the steps (autocast's dtype), not the config's
    compiled: bool = False
    frames: int = 0  # frames torch.compile compiled during this run's steps (dynamo_counts)
    graphs: int = 0

    @property
    def recompiles(self) -> int:
        """Compiles after the first: what changing shapes, dtypes or guards cost this run."""
        return max(self.frames - 1, 0)

    @property
    def warm_excess_s(self) -> float:
        """What the untimed first steps took beyond as many steady (median) steps: compile time, when compiled.

        An eager run's excess (AdamW's state, the heap growing) is the baseline to read a compiled one against.
        """
        return sum(self.warm_s) - len(self.warm_s) * statistics.median(self.step_s)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    @property
    def step_ms(self) -> float:
        return 1e3 * self.wall_s / self.steps

    @property
    def median_step_ms(self) -> float:
        return 1e3 * statistics.median(self.step_s)

    @property
    def cpu_per_wall(self) -> float:
        """~ torch's thread count when this process had the cores to itself; lower under contention."""
        return self.cpu_s / self.wall_s

    def phase_ms(self, phase: str) -> float:
        return 1e3 * self.phase_s[phase] / self.steps

    def group_ms(self, group: str) -> float:
        return sum(self.phase_ms(p) for p, (g, _) in PHASES.items() if g == group)

    def inner_ms(self, phase: str, part: str) -> float:
        if part == RESIDUAL[phase]:
            return self.phase_ms(phase) - sum(self.inner_ms(phase, p) for p in INNER[phase] if p != part)
        return 1e3 * self.inner_s[part] / self.steps

    def as_dict(self) -> dict:
        return asdict(self) | {
            "tokens_per_s": self.tokens_per_s,
            "step_ms": self.step_ms,
            "median_step_ms": self.median_step_ms,
            "gflop_per_s": self.tokens_per_s * self.gflop_per_token,
            "recompiles": self.recompiles,
            "warm_excess_s": self.warm_excess_s if self.step_s else None,
        }


# --- configs and the timed loop --------------------------------------------------------------------


def make_config(shape: Shape, data: Path, run_dir: Path, curriculum: dict, train: dict | None = None) -> Config:
    """The benchmark's config of a run; `train` overrides the train section (precision, compile)."""
    return config_from_dict(
        {
            "run": {"dir": str(run_dir)},
            "data": {"path": str(data)},
            "model": dict(shape.model),
            "train": {
                "global_batch_size": shape.global_batch,
                "micro_batch_size": shape.micro_batch,
                "warmup_steps": 3000,  # the paper's; the LR is in its linear warmup throughout
                # training_steps evaluates and saves a checkpoint when training finishes: never here.
                "max_tokens": NEVER,
                "max_steps": NEVER,
                "device": "cpu",
                "precision": "fp32",
                **(train or {}),
            },
            "curriculum": curriculum,
            "eval": {"every_tokens": None},  # no periodic evaluation (nor one of the initial model)
            "checkpoint": {"every_steps": None},  # no periodic checkpoint
            "log": {"progress": False},
        }
    )


def full_length(shape: Shape) -> int:
    return ModelConfig(**shape.model).gpt().max_seqlen


def curricula(shape: Shape) -> list[Spec]:
    """The runs measured for a shape: fp32, eager, as the config says."""
    full = full_length(shape)
    # A duration of NEVER steps holds the pacing at seqlen_start for the whole measurement.
    slw = {"kind": "slw", "pacing": "linear", "duration": NEVER, "seqlen_end": full, "multiple_of": 8}
    runs = [("baseline", full, {"kind": "none"}, {}), ("slw, start = end", full, slw | {"seqlen_start": full}, {})]
    runs += [(f"slw warmup @ {n}", n, slw | {"seqlen_start": n}, {}) for n in shape.short_lengths]
    return runs


class InnerTimers:
    """Seconds spent in calls that fit's phases make, by wrapping the callables they look up."""

    def __init__(self):
        self.seconds = {part: 0.0 for parts in INNER.values() for part in parts if part not in RESIDUAL.values()}

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - t0

        return timed


TIMERS = InnerTimers()


def time_the_output_layer() -> None:
    """Wrap `linear_cross_entropy` with its timer, once, when the benchmark runs (not on import).

    It is defined in seqwarm.loss; GPT.forward looks it up in seqwarm.model's namespace at each
    call, so that is the name to replace.
    """
    if not getattr(seqwarm.model.linear_cross_entropy, "timed", False):
        seqwarm.model.linear_cross_entropy = TIMERS.wrap("output_loss", seqwarm.model.linear_cross_entropy)
        seqwarm.model.linear_cross_entropy.timed = True


class PhaseTimer(FitHook):
    """A FitHook that adds up the wall seconds `fit`'s loop spends in each of its phases.

    The phases of a step follow one another and never nest, so the hook is itself the context
    manager `phase` returns: two `perf_counter()` calls per phase and no generator machinery
    (as `contextlib.contextmanager` would add), so the timing costs the loop as little as it can.
    """

    def __init__(self):
        super().__init__()
        self.seconds = dict.fromkeys(HOOK_PHASES, 0.0)
        self._name, self._t0 = "", 0.0

    def phase(self, name: str) -> PhaseTimer:
        if name not in self.seconds:
            raise KeyError(f"fit has a phase {name!r} that this benchmark does not know: add it to PHASES")
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self._name] += time.perf_counter() - self._t0


class Run:
    """A built Trainer and fit's loop over it (`training_steps`), stepped one `next()` at a time."""

    def __init__(self, shape: Shape, spec: Spec, data: TokenData, workdir: Path):
        name, seqlen, curriculum, train = spec
        self.shape = shape
        self.run_dir = workdir / f"{shape.name}-{len(list(workdir.iterdir()))}"
        self.run_dir.mkdir()
        cfg = make_config(shape, data.path, self.run_dir, curriculum, train)
        self.tr = build(cfg, self.run_dir, data)
        # Instance attributes, looked up by fit's loop at each call (GradScaler.step calls optimizer.step).
        self.tr.plan.curriculum.at = TIMERS.wrap("pacing", self.tr.plan.curriculum.at)
        self.tr.model.trunk = self._seeing_autocast(TIMERS.wrap("body_forward", self.tr.model.trunk))
        self.tr.optimizer.step = TIMERS.wrap("adamw", self.tr.optimizer.step)
        self.hook = PhaseTimer()
        self.steps = training_steps(self.tr, progress=False, hook=self.hook)
        self.result = Result(name, shape.name, seqlen, steps=0, tokens=0, wall_s=0.0, compiled=cfg.train.compile)
        # The built model's, so the data's vocabulary (not the config's `auto`) is counted.
        self.result.gflop_per_token = self.tr.model.cfg.flops_per_token(seqlen) / 1e9

    def _seeing_autocast(self, trunk):
        """`trunk`, recording the precision it runs under: what `precision: auto` resolved to, measured."""
        device = self.tr.device.type

        def seen(*args, **kwargs):
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
            self.result.precision = precision_name(dtype)
            return trunk(*args, **kwargs)

        return seen

    def step(self, *, timed: bool) -> None:
        """One step of fit's loop; with `timed`, its wall, CPU and phase times are added to the result.

        The first `next()` also runs what fit does before its first step (opening the metrics log,
        the progress bar): the untimed warm-up steps take it.
        """
        phases, inner, tokens = dict(self.hook.seconds), dict(TIMERS.seconds), self.tr.clock.tokens
        compiles = dynamo_counts()
        cpu = time.process_time()
        wall = time.perf_counter()
        row = next(self.steps)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        r = self.result
        # Runs step one at a time, so what torch.compile did during this step is this run's.
        after = dynamo_counts()
        r.frames += after["frames"] - compiles["frames"]
        r.graphs += after["graphs"] - compiles["graphs"]
        if not timed:
            r.warm_s.append(wall)
            return
        # What the rows say the step trained must be what this run claims to measure.
        if (row["seqlen"], row["batch_size"], row.get("skipped")) != (r.seqlen, self.shape.global_batch, None):
            raise RuntimeError(f"{r.name}: unexpected step {row}")
        for phase, seconds in self.hook.seconds.items():
            r.phase_s[phase] += seconds - phases[phase]
        r.phase_s["loop"] += wall - sum(self.hook.seconds[p] - phases[p] for p in HOOK_PHASES)
        for part, seconds in TIMERS.seconds.items():
            r.inner_s[part] = r.inner_s.get(part, 0.0) + seconds - inner[part]
        r.step_s.append(wall)
        r.wall_s += wall
        r.cpu_s += cpu
        r.tokens += self.tr.clock.tokens - tokens
        r.steps += 1

    def close(self) -> Result:
        self.steps.close()  # fit's `finally`: closes the metrics log and the progress bar
        if eval_rows(read_metrics(self.run_dir / METRICS)) or latest_checkpoint(self.run_dir):
            raise RuntimeError(f"{self.result.name}: the run evaluated or saved a checkpoint inside the measurement")
        del self.steps, self.tr
        return self.result


def measure(shape: Shape, specs: list[Spec], data: TokenData, workdir: Path) -> list[Result]:
    """Time the runs `specs` side by side: after each one's warm-up, their timed steps alternate.

    On a shared machine the speed drifts (other processes, the host); alternating step by step
    makes a slow stretch hit every run alike instead of whichever happened to run then.
    """
    runs = [Run(shape, spec, data, workdir) for spec in specs]
    for run in runs:
        for _ in range(shape.warmup_steps):  # grows the heap, creates AdamW's state, compiles
            run.step(timed=False)
    for _ in range(shape.steps):
        for run in runs:
            run.step(timed=True)
    results = [run.close() for run in runs]
    del runs
    gc.collect()  # a gpt2-117m trainer holds ~2 GB (weights, gradients, AdamW state)
    return results


# --- precision and compile variants -------------------------------------------------------------------


def variants(shape: Shape, precisions: list[str], compile_too: bool) -> list[Spec]:
    """The baseline at full length in each precision, eager and (with `compile_too`) compiled."""
    full = full_length(shape)
    return [
        (f"{p}{', compiled' if c else ''}", full, {"kind": "none"}, {"precision": p, "compile": c})
        for p in precisions
        for c in ((False, True) if compile_too else (False,))
    ]


def measure_peaks(precisions: set[str]) -> dict[str, float]:
    """sgemm GFLOP/s of fp32 and bf16 (and of any other precision in use), measured now."""
    return {p: sgemm_peak(p) for p in sorted({"fp32", "bf16"} | (precisions & set(DTYPES)))}


def print_variants(shape: Shape, results: list[Result], peaks: dict[str, float]) -> None:
    print(
        f"== {shape.name}: precision and compile, full length {results[0].seqlen}, batch {shape.global_batch}, "
        f"{shape.warmup_steps} untimed + {shape.steps} timed steps each, interleaved"
    )
    print("  sgemm peak now (2048^3, median of 5): " + ", ".join(f"{p} {g:,.1f} GFLOP/s" for p, g in peaks.items()))
    print(
        f"  {'run':<18} {'in use':>6} {'tokens/s':>9} {'median ms':>9} {'GFLOP/s':>8} {'% peak':>7} "
        f"{'vs first':>8} {'warm-up +s':>10} {'recompiles':>10} {'cpu/wall':>8}"
    )
    first = results[0]
    for r in results:
        gflops = r.tokens_per_s * r.gflop_per_token
        peak = peaks.get(r.precision)
        share = f"{100 * gflops / peak:6.1f}%" if peak else f"{'n/a':>7}"
        recompiles = str(r.recompiles) if r.compiled else "-"
        print(
            f"  {r.name:<18} {r.precision:>6} {r.tokens_per_s:>9,.0f} {r.median_step_ms:>9.1f} {gflops:>8.1f} "
            f"{share} {first.median_step_ms / r.median_step_ms:>7.2f}x {r.warm_excess_s:>10.2f} "
            f"{recompiles:>10} {r.cpu_per_wall:>8.2f}"
        )
    print("  in use: the autocast dtype seen inside the steps; % peak: model FLOP/s over that precision's sgemm")
    print("  peak; vs first: speed-up over the first row by median step; warm-up +s: the untimed first steps'")
    print("  time beyond as many median steps (a compiled run's compile time; an eager run's shows the rest);")
    print("  recompiles: torch.compile frames compiled after the first, over all the run's steps")
    print()


# --- the malloc tuning, in child processes ----------------------------------------------------------


def child_main(args) -> None:
    """Measure the tiny baseline in this fresh process and print it as one JSON line."""
    shape = sized(SHAPES["tiny"], args)
    data = TokenData(args.data, vocab_size=VOCAB_SIZE)
    with tempfile.TemporaryDirectory(prefix="bench-train-child-") as tmp:
        (result,) = measure(shape, curricula(shape)[:1], data, Path(tmp))
    # keep_freed_memory is cached: calling it now reports whether build() applied it, without reapplying.
    applied = False if args.no_malloc_tuning else seqwarm.runtime.keep_freed_memory()
    print(json.dumps(result.as_dict() | {"malloc_tuning": applied}))


def measure_malloc(data: Path, steps: int | None, warmup: int | None, repeats: int) -> list[dict]:
    """The tiny baseline in fresh processes, without and with the tuning, alternating `repeats` times.

    Alternating, as in `measure`, so that a slow stretch of the machine does not decide the ratio.
    """
    out = []
    for _ in range(repeats):
        for tuned in (False, True):
            cmd = [sys.executable, __file__, "--child", "--data", str(data)]
            cmd += [] if tuned else ["--no-malloc-tuning"]
            cmd += ["--steps", str(steps)] if steps else []
            cmd += ["--warmup-steps", str(warmup)] if warmup else []
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"child run failed: {' '.join(cmd)}\n{proc.stderr}")
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]) | {"tuned": tuned})
    return out


# --- reporting -------------------------------------------------------------------------------------


def print_throughput(shape: Shape, results: list[Result]) -> None:
    print(
        f"== {shape.name}: global batch {shape.global_batch}, micro batch {shape.micro_batch}, fp32, "
        f"{shape.warmup_steps} untimed + {shape.steps} timed steps per run"
    )
    print(
        f"  {'run':<22} {'seqlen':>6} {'tok/step':>8} {'tokens/s':>9} {'ms/step':>9} {'median':>9} "
        f"{'GFLOP/s':>8} {'cpu/wall':>8}"
    )
    for r in results:
        print(
            f"  {r.name:<22} {r.seqlen:>6} {r.tokens // r.steps:>8} {r.tokens_per_s:>9,.0f} "
            f"{r.step_ms:>9.1f} {r.median_step_ms:>9.1f} "
            f"{r.tokens_per_s * r.gflop_per_token:>8.1f} {r.cpu_per_wall:>8.2f}"
        )
    print("  ms/step: mean; median: of the per-step times; GFLOP/s: model FLOPs (GPTConfig.flops_per_token)")
    print("  per second; cpu/wall: this process's CPU seconds per second (= threads busy; lower if others ran)")
    print()


def print_phases(base: Result, slw: Result) -> None:
    whats = [what for _, what in PHASES.values()] + [what for parts in INNER.values() for what in parts.values()]
    w = 15 + max(map(len, whats))
    print(f"  phases of a full-length step ({base.shape}): ms/step and % of the step")
    print(f"  {'phase':<{w}} {'baseline':>17} {'slw, start = end':>17}")

    def row(label: str, ms: list[float]) -> None:
        cells = [f"{m:>9.3f} {100 * m / r.step_ms:>6.2f}%" for m, r in zip(ms, (base, slw))]
        print(f"  {label:<{w}} {cells[0]:>17} {cells[1]:>17}")

    for phase, (_, what) in PHASES.items():
        row(f"{phase:<12} {what}", [r.phase_ms(phase) for r in (base, slw)])
        for part, what in INNER.get(phase, {}).items():
            row(f"  {part:<12} {what}", [r.inner_ms(phase, part) for r in (base, slw)])
    row("step", [r.step_ms for r in (base, slw)])
    print("  grouped:")
    for group, what in GROUPS.items():
        row(f"  {what}", [r.group_ms(group) for r in (base, slw)])
    extra = slw.group_ms("slw") + slw.group_ms("bookkeeping") - base.group_ms("slw") - base.group_ms("bookkeeping")
    print(
        f"  SLW run minus baseline, outside train_step and the monitor: {extra:+.3f} ms/step "
        f"({100 * extra / slw.step_ms:+.3f}% of a step); step time SLW / baseline = "
        f"{slw.step_ms / base.step_ms:.3f} (mean), {slw.median_step_ms / base.median_step_ms:.3f} (median)"
    )
    print()


def print_warmup_shares(results: list[Result]) -> None:
    print("  per step at each length, ms (% of the step). loop machinery: pacing, batch assembly, bookkeeping;")
    print("  output + loss and AdamW are parts of train_step")
    cols = ("loop machinery", "Adam statistics", "train_step", "output + loss", "AdamW")
    print(f"  {'run':<18} {'tok/step':>8}" + "".join(f" {c:>18}" for c in cols))
    for r in results:
        ms = (
            r.group_ms("slw") + r.group_ms("bookkeeping"),
            r.group_ms("monitor"),
            r.phase_ms("train_step"),
            r.inner_ms("train_step", "output_loss"),
            r.inner_ms("train_step", "adamw"),
        )
        cells = "".join(f" {m:>9.2f} ({100 * m / r.step_ms:5.2f}%)" for m in ms)
        print(f"  {r.name:<18} {r.tokens // r.steps:>8}{cells}")
    print()


def print_malloc(malloc: list[dict]) -> None:
    print("== glibc malloc tuning (seqwarm.runtime.keep_freed_memory), tiny baseline, one fresh process each")
    for r in malloc:
        label = "with keep_freed_memory()" if r["tuned"] else "without (patched to a no-op)"
        print(
            f"  {label:<29} {r['tokens_per_s']:>6,.0f} tokens/s  {r['step_ms']:>6.1f} ms/step "
            f"(median {r['median_step_ms']:.1f})  cpu/wall {r['cpu_s'] / r['wall_s']:.2f}  "
            f"mallopt applied: {r['malloc_tuning']}"
        )

    def pooled(tuned: bool) -> tuple[float, float]:
        runs = [r for r in malloc if r["tuned"] == tuned]
        steps = [s for r in runs for s in r["step_s"]]
        return sum(r["tokens"] for r in runs) / sum(r["wall_s"] for r in runs), statistics.median(steps)

    (off_tps, off_med), (on_tps, on_med) = pooled(False), pooled(True)
    print(
        f"  speed-up with the tuning: {on_tps / off_tps:.2f}x tokens/s over all timed steps, "
        f"{off_med / on_med:.2f}x by median step time"
    )
    print()


# --- main ------------------------------------------------------------------------------------------


PARTS = ("slw", "variants", "malloc")


def split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, help="timed steps per run of every shape but gpt2-117m (tiny: 20 by default)")
    p.add_argument("--big-steps", type=int, help="timed steps per gpt2-117m run (default 3)")
    p.add_argument("--warmup-steps", type=int, help="untimed first steps per run (default: the shape's, 2 to 5)")
    p.add_argument("--shapes", default="tiny,gpt2-117m", help=f"comma-separated, from {', '.join(SHAPES)}")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)} (default all)")
    p.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="train.precision of the variants, comma-separated (fp32, bf16, auto where the config has it)",
    )
    p.add_argument("--compile", action="store_true", help="also measure every precision with train.compile: true")
    p.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    p.add_argument("--data", type=Path, help="a prepared corpus to use (default: a synthetic one in a temp dir)")
    p.add_argument("--corpus-docs", type=int, default=200, help=argparse.SUPPRESS)  # smaller for smoke tests
    p.add_argument("--no-malloc-tuning", action="store_true", help="do not apply keep_freed_memory() in this process")
    p.add_argument(
        "--malloc-repeats", type=int, default=2, help="child runs each without/with malloc tuning (default 2; 0 skips)"
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.shapes = split_list(args.shapes)
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        p.error(f"--shapes: unknown {', '.join(unknown)} (choose from {', '.join(SHAPES)})")
    args.parts = split_list(args.parts)
    unknown = [s for s in args.parts if s not in PARTS]
    if unknown:
        p.error(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    # Passed through to train.precision as given: the config is the one to judge a value.
    args.precisions = split_list(args.precisions)
    if not args.precisions:
        p.error("--precisions: give at least one")
    return args


def sized(shape: Shape, args) -> Shape:
    """The shape with the step counts of the command line."""
    steps = args.big_steps if shape.name in BIG else args.steps
    shape = replace(shape, steps=steps) if steps else shape
    return replace(shape, warmup_steps=args.warmup_steps) if args.warmup_steps else shape


def main(argv=None) -> None:
    args = parse_args(argv)
    time_the_output_layer()
    if args.no_malloc_tuning:
        # build() calls the name it imported, so that is the one to replace.
        seqwarm.trainer_state.keep_freed_memory = lambda: False
    if args.child:
        child_main(args)
        return

    info = machine_info()
    print_header("seqwarm training benchmark", info)
    report: dict = {"machine": info, "runs": [], "variants": [], "peaks": {}, "malloc": None}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        data_path = args.data or make_corpus(tmp / "corpus", docs=args.corpus_docs)
        corpus = TokenData(data_path, vocab_size=VOCAB_SIZE)
        tokens = {split: len(a) for split, a in corpus.splits.items()}
        print(f"data: {data_path if args.data else 'synthetic random words'}, tokens per split {tokens}")
        print()
        workdir = tmp / "runs"
        workdir.mkdir()

        for name in args.shapes:
            shape = sized(SHAPES[name], args)
            data = with_vocab(corpus, shape.vocab)
            if "slw" in args.parts:
                specs = curricula(shape)
                # The baseline and its SLW twin are compared, so they are timed together; the short
                # lengths after them, together (not all four at once: two gpt2-117m trainers are ~4 GB).
                results = measure(shape, specs[:2], data, workdir)
                results += measure(shape, specs[2:], data, workdir)
                print_throughput(shape, results)
                print_phases(results[0], results[1])
                print_warmup_shares([results[0], *results[2 : 2 + len(shape.short_lengths)]])
                report["runs"] += [r.as_dict() for r in results]
            if "variants" in args.parts:
                # A fresh compile cache per shape: every compiled run starts from nothing, as training does.
                torch._dynamo.reset()
                peaks = measure_peaks(set(args.precisions))
                results = measure(shape, variants(shape, args.precisions, args.compile), data, workdir)
                print_variants(shape, results, peaks)
                report["variants"] += [r.as_dict() for r in results]
                report["peaks"][name] = peaks

        if "tiny" in args.shapes and "malloc" in args.parts and args.malloc_repeats > 0:
            report["malloc"] = measure_malloc(Path(data_path), args.steps, args.warmup_steps, args.malloc_repeats)
            print_malloc(report["malloc"])

    report["total_s"] = time.perf_counter() - t_start
    report["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"total benchmark time {report['total_s']:.0f} s; load average at the end {report['loadavg_end']}")
    if args.json:
        atomic_write(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    try:
        main()
    except SeqwarmError as e:  # a config the variants made is refused (e.g. a precision it does not know)
        print(f"bench_train: error: {e}", file=sys.stderr)
        sys.exit(2)
