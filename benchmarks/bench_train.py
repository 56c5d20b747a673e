"""Training throughput on CPU, and what the Sequence Length Warmup machinery costs per step.

    python benchmarks/bench_train.py [--steps N] [--shapes tiny,gpt2-117m] [--json OUT]

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

What is timed is `fit`'s own loop, not a copy of it: each run is a `seqwarm.trainer.training_steps`
generator (the loop of `fit`, one step per `next()`), driven with a `FitHook` whose `phase(name)`
adds `time.perf_counter()` seconds to that phase. A step's time is taken around its `next()`.
Inside the phases, four callables of each built trainer are wrapped with timers
(`Trainer.seqlen_schedule`, `GPT.trunk`, `optimizer.step`, and the `linear_cross_entropy` that
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
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import seqwarm
import seqwarm.model
import seqwarm.runtime
import seqwarm.trainer
from seqwarm.checkpoint import latest_checkpoint
from seqwarm.config import Config, config_from_dict
from seqwarm.data.format import TokenData
from seqwarm.data.prepare import prepare
from seqwarm.metrics import METRICS, eval_rows, read_metrics
from seqwarm.model import PRESETS
from seqwarm.tokenizer import VOCAB_SIZE
from seqwarm.trainer import FitHook, build, training_steps


@dataclass(frozen=True)
class Shape:
    preset: str  # a key of seqwarm.model.PRESETS
    global_batch: int
    micro_batch: int
    short_lengths: tuple[int, ...]  # lengths measured "during warmup", besides the full length
    warmup_steps: int  # untimed steps first: the first steps grow the heap and create AdamW's state
    steps: int  # timed steps


# Batch sizes are small so that the whole benchmark fits in a few minutes on 2 cores: a gpt2-117m
# step over one 1024-token sequence already takes seconds there. Per-step costs (bookkeeping, the
# Adam statistics, AdamW) therefore weigh more here than at the paper's batch 512.
SHAPES = {
    "tiny": Shape("tiny", global_batch=16, micro_batch=8, short_lengths=(16, 64), warmup_steps=5, steps=20),
    "gpt2-117m": Shape("gpt2-117m", global_batch=1, micro_batch=1, short_lengths=(64, 256), warmup_steps=2, steps=3),
}

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
        }


# --- data --------------------------------------------------------------------------------------

# The synthetic corpus's vocabulary, space-separated (make_corpus splits it).
WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more about can time said could them "
    "model sequence length warmup training loss batch learning rate stable spike variance adam token step river "
    "mountain city garden winter summer letter story king queen ship house road light night morning evening"
)


def make_corpus(root: Path, *, docs: int = 200, words_per_doc: int = 1500, seed: int = 0) -> Path:
    """~330K train tokens of random words in paragraphs, prepared into root/prepared.

    Enough full-length sequences for gpt2-117m (1025 tokens each) and a val split of a few of them,
    which `build` requires. Paragraph breaks matter: `prepare` splits val/test off by paragraph chunks.
    """
    src = root / "text"
    src.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(docs):
        words = rng.choice(WORDS.split(), size=words_per_doc)
        sentences = [" ".join(words[j : j + 12]).capitalize() + "." for j in range(0, len(words), 12)]
        paragraphs = [" ".join(sentences[j : j + 5]) for j in range(0, len(sentences), 5)]
        (src / f"doc{i:03d}.txt").write_text("\n\n".join(paragraphs))
    return prepare([str(src)], root / "prepared", val_fraction=0.02, test_fraction=0.01, progress=False)


# --- configs and the timed loop --------------------------------------------------------------------


def make_config(shape: Shape, data: Path, run_dir: Path, curriculum: dict) -> Config:
    return config_from_dict(
        {
            "run": {"dir": str(run_dir)},
            "data": {"path": str(data)},
            "model": {"preset": shape.preset},
            "train": {
                "global_batch_size": shape.global_batch,
                "micro_batch_size": shape.micro_batch,
                "warmup_steps": 3000,  # the paper's; the LR is in its linear warmup throughout
                # training_steps evaluates and saves a checkpoint when training finishes: never here.
                "max_tokens": NEVER,
                "max_steps": NEVER,
                "device": "cpu",
                "precision": "fp32",
            },
            "curriculum": curriculum,
            "eval": {"every_tokens": None},  # no periodic evaluation (nor one of the initial model)
            "checkpoint": {"every_steps": None},  # no periodic checkpoint
            "log": {"progress": False},
        }
    )


def full_length(shape: Shape) -> int:
    return PRESETS[shape.preset][3]  # (n_layer, d_model, n_head, max_seqlen)


def curricula(shape: Shape) -> list[tuple[str, int, dict]]:
    """(run name, length, curriculum section) of the runs measured for a shape."""
    full = full_length(shape)
    # A duration of NEVER steps holds the pacing at seqlen_start for the whole measurement.
    slw = {"kind": "slw", "pacing": "linear", "duration": NEVER, "seqlen_end": full, "multiple_of": 8}
    runs = [("baseline", full, {"kind": "none"}), ("slw, start = end", full, slw | {"seqlen_start": full})]
    runs += [(f"slw warmup @ {n}", n, slw | {"seqlen_start": n}) for n in shape.short_lengths]
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
# linear_cross_entropy is defined in seqwarm.loss; GPT.forward looks it up in seqwarm.model's
# namespace at each call, so that is the name to replace.
seqwarm.model.linear_cross_entropy = TIMERS.wrap("output_loss", seqwarm.model.linear_cross_entropy)


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

    def __init__(self, shape: Shape, name: str, seqlen: int, curriculum: dict, data: TokenData, workdir: Path):
        self.shape = shape
        self.run_dir = workdir / f"{shape.preset}-{len(list(workdir.iterdir()))}"
        self.run_dir.mkdir()
        cfg = make_config(shape, data.path, self.run_dir, curriculum)
        self.tr = build(cfg, self.run_dir, data)
        # Instance attributes, looked up by fit's loop at each call (GradScaler.step calls optimizer.step).
        self.tr.seqlen_schedule = TIMERS.wrap("pacing", self.tr.seqlen_schedule)
        self.tr.model.trunk = TIMERS.wrap("body_forward", self.tr.model.trunk)
        self.tr.optimizer.step = TIMERS.wrap("adamw", self.tr.optimizer.step)
        self.hook = PhaseTimer()
        self.steps = training_steps(self.tr, progress=False, hook=self.hook)
        self.result = Result(name, shape.preset, seqlen, steps=0, tokens=0, wall_s=0.0)
        self.result.gflop_per_token = cfg.model.gpt().flops_per_token(seqlen) / 1e9

    def step(self, *, timed: bool) -> None:
        """One step of fit's loop; with `timed`, its wall, CPU and phase times are added to the result.

        The first `next()` also runs what fit does before its first step (opening the metrics log,
        the progress bar): the untimed warm-up steps take it.
        """
        phases, inner, tokens = dict(self.hook.seconds), dict(TIMERS.seconds), self.tr.clock.tokens
        cpu = time.process_time()
        wall = time.perf_counter()
        row = next(self.steps)
        wall = time.perf_counter() - wall
        cpu = time.process_time() - cpu
        if not timed:
            return
        r = self.result
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


def measure(shape: Shape, specs: list[tuple[str, int, dict]], data: TokenData, workdir: Path) -> list[Result]:
    """Time the runs `specs` side by side: after each one's warm-up, their timed steps alternate.

    On a shared machine the speed drifts (other processes, the host); alternating step by step
    makes a slow stretch hit every run alike instead of whichever happened to run then.
    """
    runs = [Run(shape, name, seqlen, cur, data, workdir) for name, seqlen, cur in specs]
    for run in runs:
        for _ in range(shape.warmup_steps):  # grows the heap, creates AdamW's state
            run.step(timed=False)
    for _ in range(shape.steps):
        for run in runs:
            run.step(timed=True)
    results = [run.close() for run in runs]
    del runs
    gc.collect()  # a gpt2-117m trainer holds ~2 GB (weights, gradients, AdamW state)
    return results


# --- the malloc tuning, in child processes ----------------------------------------------------------


def child_main(args) -> None:
    """Measure the tiny baseline in this fresh process and print it as one JSON line."""
    shape = SHAPES["tiny"]
    shape = Shape(**(asdict(shape) | {"steps": args.steps or shape.steps}))
    data = TokenData(args.data, vocab_size=VOCAB_SIZE)
    with tempfile.TemporaryDirectory(prefix="bench-train-child-") as tmp:
        (result,) = measure(shape, curricula(shape)[:1], data, Path(tmp))
    # keep_freed_memory is cached: calling it now reports whether build() applied it, without reapplying.
    applied = False if args.no_malloc_tuning else seqwarm.runtime.keep_freed_memory()
    print(json.dumps(result.as_dict() | {"malloc_tuning": applied}))


def measure_malloc(data: Path, steps: int | None, repeats: int) -> list[dict]:
    """The tiny baseline in fresh processes, without and with the tuning, alternating `repeats` times.

    Alternating, as in `measure`, so that a slow stretch of the machine does not decide the ratio.
    """
    out = []
    for _ in range(repeats):
        for tuned in (False, True):
            cmd = [sys.executable, __file__, "--child", "--data", str(data)]
            cmd += [] if tuned else ["--no-malloc-tuning"]
            cmd += ["--steps", str(steps)] if steps else []
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"child run failed: {' '.join(cmd)}\n{proc.stderr}")
            out.append(json.loads(proc.stdout.strip().splitlines()[-1]) | {"tuned": tuned})
    return out


# --- reporting -------------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "seqwarm": seqwarm.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "isa": sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2"))),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "libc": " ".join(platform.libc_ver()),
        # Other processes on the cores slow every measurement down; the load average shows them.
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        # Any of these would change what is being measured.
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "MALLOC_", "GLIBC_TUNABLES"))},
    }


def print_header(info: dict) -> None:
    threads = f"{info['torch_threads']} threads ({info['torch_interop_threads']} interop)"
    print("seqwarm training benchmark")
    print(f"  date            {info['date']}")
    print(f"  cpu             {info['cpu']}, {info['cpu_count']} logical cores ({' '.join(info['isa'])})")
    print(f"  torch           {info['torch']}, {threads}")
    print(f"  python / numpy  {info['python']} / {info['numpy']}, {info['libc']}, seqwarm {info['seqwarm']}")
    print(f"  environment     {info['env'] or 'no OMP_/MKL_/MALLOC_ variables set'}")
    print(f"  load average    {info['loadavg']} (1, 5, 15 min) before starting")
    print()


def print_throughput(shape: Shape, results: list[Result]) -> None:
    print(
        f"== {shape.preset}: global batch {shape.global_batch}, micro batch {shape.micro_batch}, fp32, "
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, help="timed steps per tiny run (default 20)")
    p.add_argument("--big-steps", type=int, help="timed steps per gpt2-117m run (default 3)")
    p.add_argument("--shapes", default="tiny,gpt2-117m", help=f"comma-separated, from {', '.join(SHAPES)}")
    p.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    p.add_argument("--data", type=Path, help="a prepared corpus to use (default: a synthetic one in a temp dir)")
    p.add_argument("--no-malloc-tuning", action="store_true", help="do not apply keep_freed_memory() in this process")
    p.add_argument(
        "--malloc-repeats", type=int, default=2, help="child runs each without/with malloc tuning (default 2; 0 skips)"
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shapes if s not in SHAPES]
    if unknown:
        p.error(f"--shapes: unknown {', '.join(unknown)} (choose from {', '.join(SHAPES)})")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.no_malloc_tuning:
        # build() calls the name it imported, so that is the one to replace.
        seqwarm.trainer.keep_freed_memory = lambda: False
    if args.child:
        child_main(args)
        return

    info = machine_info()
    print_header(info)
    report: dict = {"machine": info, "runs": [], "malloc": None}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        data_path = args.data or make_corpus(tmp / "corpus")
        data = TokenData(data_path, vocab_size=VOCAB_SIZE)
        tokens = {split: len(a) for split, a in data.splits.items()}
        print(f"data: {data_path if args.data else 'synthetic random words'}, tokens per split {tokens}")
        print()
        workdir = tmp / "runs"
        workdir.mkdir()

        for name in args.shapes:
            shape = SHAPES[name]
            steps = args.steps if name == "tiny" else args.big_steps
            if steps:
                shape = Shape(**(asdict(shape) | {"steps": steps}))
            specs = curricula(shape)
            # The baseline and its SLW twin are compared, so they are timed together; the short
            # lengths after them, together (not all four at once: two gpt2-117m trainers are ~4 GB).
            results = measure(shape, specs[:2], data, workdir)
            results += measure(shape, specs[2:], data, workdir)
            print_throughput(shape, results)
            print_phases(results[0], results[1])
            print_warmup_shares([results[0], *results[2 : 2 + len(shape.short_lengths)]])
            report["runs"] += [r.as_dict() for r in results]

        if "tiny" in args.shapes and args.malloc_repeats > 0:
            report["malloc"] = measure_malloc(Path(data_path), args.steps, args.malloc_repeats)
            print_malloc(report["malloc"])

    report["total_s"] = time.perf_counter() - t_start
    report["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"total benchmark time {report['total_s']:.0f} s; load average at the end {report['loadavg_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
