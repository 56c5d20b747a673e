"""The prepared GPU check: what seqwarm has never run on a GPU, measured in one short command.

    bash benchmarks/device_check.sh          # the wrapper: a venv if needed, a 5-minute timeout
    python benchmarks/device_check.py [--device auto|cpu|cuda] [--parts precision,compile,adam,ddp]

On CUDA, at gpt2-117m and a real micro-batch (16 x 1024 tokens by default), through `fit`'s own
loop (`seqwarm.trainer.training_steps`):

- `precision`: bf16 autocast and fp16 with loss scaling (`train.precision`), a few steps each:
  tokens/s, model FLOP utilisation (MFU: model FLOP/s over the GPU's published dense bf16 peak,
  and over a bf16 matmul measured here), peak memory (`torch.cuda.max_memory_allocated`), the
  fp16 loss scale and overflow-skipped steps, and AdamW's time per step with `fused` as built;
- `compile`: `train.compile: true` in bf16 under SLW, the length changing every step up to full
  length, then steps at full length: graphs and recompiles (torch.compile's frame counter), the
  compile time (the first step minus a steady one), and tokens/s and MFU at full length;
- `adam`: the stability monitor's cost, `seqwarm.monitor.adam_statistics` plus its read-back, timed
  on the optimizer state those steps left, against a step's time;
- `ddp`: one process under `torchrun --nproc_per_node 1`, on NCCL. seqwarm wraps the model in DDP
  only when there are several processes, so the child joins the process group and wraps the
  engine itself; the step's all-reduces (DDP's buckets, the loss) then go through NCCL.

On a CPU it skips every CUDA part with a one-line message and runs the same code at the tiny shape
instead (fp32 and bf16, compile, the Adam statistics, one-process DDP on gloo), so that the script
is exercised and tested wherever it is. The output is plain text, to paste into docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# benchmarks/ is sys.path[0] when a script of it runs (tests add it themselves).
from _common import dynamo_counts, machine_info, make_corpus, sgemm_peak

from seqwarm.config import config_from_dict
from seqwarm.data.format import TokenData
from seqwarm.model import PRESETS
from seqwarm.monitor import adam_statistics
from seqwarm.trainer import build, training_steps

PARTS = ("precision", "compile", "adam", "ddp")

# Published dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a substring of
# torch.cuda.get_device_name(); the first match wins, so the specific names come first.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (the HBM3 parts)
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H20", 148.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)


def published_peak(name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


@dataclass(frozen=True)
class Setup:
    """What a check trains: the model, batch and step counts for the device."""

    device: str
    preset: str
    batch: int  # sequences per step (one micro-batch)
    steps: int  # timed steps per run
    warmup: int  # untimed steps first
    slw_start: int  # the compile check's first length
    slw_steps: int  # its steps with the length changing
    multiple_of: int

    @classmethod
    def for_device(cls, device: str, batch: int | None) -> Setup:
        if device == "cuda":
            return cls("cuda", "gpt2-117m", batch or 16, steps=5, warmup=2, slw_start=64, slw_steps=8, multiple_of=64)
        return cls("cpu", "tiny", batch or 4, steps=2, warmup=1, slw_start=16, slw_steps=4, multiple_of=8)


def make_config(s: Setup, data: Path, run_dir: Path, **train) -> dict:
    """The config (as a dict: the DDP child rebuilds it from JSON) of one check's run."""
    curriculum = train.pop("curriculum", {"kind": "none"})
    return {
        "run": {"dir": str(run_dir)},
        "data": {"path": str(data)},
        "model": {"preset": s.preset},
        "train": {
            "global_batch_size": s.batch,
            "micro_batch_size": s.batch,
            # never reached (so never an end-of-training eval or checkpoint): the check stops the loop
            "max_tokens": 10**15,
            "max_steps": 10**15,
            "device": s.device,
            **train,
        },
        "curriculum": curriculum,
        "eval": {"every_tokens": None},
        "checkpoint": {"every_steps": None},
        "log": {"progress": False},
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Loop:
    """fit's loop over a built trainer, one step per `step()`, with its time and AdamW's."""

    def __init__(self, cfg: dict, data: TokenData, engine_wrap=None):
        config = config_from_dict(cfg)
        Path(cfg["run"]["dir"]).mkdir(parents=True, exist_ok=True)
        self.tr = build(config, Path(cfg["run"]["dir"]), data)
        if engine_wrap is not None:
            self.tr.engine = engine_wrap(self.tr.model)
        self.device = self.tr.device.type
        self.adamw_s: list[float] = []
        step = self.tr.optimizer.step

        def timed_step(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            out = step(*args, **kwargs)
            sync(self.device)
            self.adamw_s.append(time.perf_counter() - t0)
            return out

        self.tr.optimizer.step = timed_step
        self.steps = training_steps(self.tr, progress=False)
        self.gpt = self.tr.model.cfg
        self.rows: list[dict] = []
        self.step_s: list[float] = []

    def step(self) -> dict:
        sync(self.device)
        t0 = time.perf_counter()
        row = next(self.steps)
        sync(self.device)
        self.step_s.append(time.perf_counter() - t0)
        self.rows.append(row)
        return row

    def close(self) -> None:
        self.steps.close()

    def rate(self, first: int) -> tuple[float, float]:
        """(tokens/s, model FLOP/s) over the steps from index `first` on, by their median time."""
        rows, times = self.rows[first:], self.step_s[first:]
        tokens = statistics.median(r["batch_size"] * r["seqlen"] for r in rows)
        seqlen = rows[-1]["seqlen"]
        per_s = tokens / statistics.median(times)
        return per_s, per_s * self.gpt.flops_per_token(seqlen)


class Report:
    """The lines printed, and the numbers behind them (what the tests read)."""

    def __init__(self):
        self.numbers: dict[str, float | int | str | None] = {}
        self.skipped: dict[str, str] = {}

    def line(self, text: str) -> None:
        print(text, flush=True)

    def skip(self, what: str, why: str) -> None:
        self.skipped[what] = why
        self.line(f"  {what}: skipped ({why})")


def mfu_text(flops: float, peaks: dict) -> str:
    parts = [f"{flops / 1e12:.2f} TFLOP/s"]
    if peaks.get("published"):
        parts.append(f"MFU {100 * flops / peaks['published']:.1f}% of {peaks['published'] / 1e12:.0f} published")
    if peaks.get("measured"):
        parts.append(f"{100 * flops / peaks['measured']:.1f}% of the measured bf16 matmul")
    return ", ".join(parts)


def check_precision(s: Setup, data, root: Path, peaks: dict, rep: Report) -> Loop | None:
    """bf16 and fp16 (CUDA) or fp32 and bf16 (CPU) through the loop; returns the last loop, for `adam`."""
    cuda = s.device == "cuda"
    if not cuda:
        rep.skip("cuda bf16 autocast", "no CUDA device")
        rep.skip("cuda fp16 with loss scaling", "no CUDA device")
        rep.skip("fused AdamW", "no CUDA device (the CPU runs below use the fused CPU kernel)")
        rep.skip("peak memory", "no CUDA device")
    precisions = ("bf16", "fp16") if cuda else ("fp32", "bf16")
    kept = None
    for precision in precisions:
        if kept is not None:  # freed first, so that the peak memory below is this run's alone
            kept.close()
            kept = loop = None  # both names held the previous trainer
            gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        loop = Loop(make_config(s, data.path, root / f"prec-{precision}", precision=precision), data)
        for _ in range(s.warmup + s.steps):
            loop.step()
        tps, flops = loop.rate(s.warmup)
        skipped = sum(1 for r in loop.rows if r.get("skipped"))
        adamw_ms = 1e3 * statistics.median(loop.adamw_s[s.warmup :] or loop.adamw_s)
        fused = bool(loop.tr.optimizer.defaults.get("fused"))
        text = f"  {precision} ({s.preset}, batch {s.batch} x {loop.rows[-1]['seqlen']}, {s.steps} timed steps): "
        text += f"{tps:,.0f} tokens/s, {mfu_text(flops, peaks) if cuda else f'{flops / 1e9:.1f} GFLOP/s'}; "
        text += (
            f"step {1e3 * statistics.median(loop.step_s[s.warmup :]):.1f} ms, AdamW {adamw_ms:.2f} ms (fused {fused})"
        )
        if cuda:
            mem = torch.cuda.max_memory_allocated() / 2**30
            text += f", peak memory {mem:.2f} GiB"
            rep.numbers[f"{precision}_peak_gib"] = mem
        if precision == "fp16":
            text += f", loss scale {loop.tr.scaler.get_scale():.0f}, overflow-skipped steps {skipped}"
        rep.line(text)
        losses = ", ".join(f"{r['loss']:.3f}" for r in loop.rows)
        rep.line(f"    losses: {losses}")
        rep.numbers[f"{precision}_tokens_per_s"] = tps
        rep.numbers[f"{precision}_adamw_ms"] = adamw_ms
        rep.numbers[f"{precision}_fused_adamw"] = int(fused)
        kept = loop
    return kept


def check_compile(s: Setup, data, root: Path, peaks: dict, rep: Report) -> None:
    """Compiled, under SLW: the length grows every step for `slw_steps`, then stays at full length."""
    torch._dynamo.reset()
    full = PRESETS[s.preset]["max_seqlen"]
    curriculum = {
        "kind": "slw",
        "pacing": "linear",
        "seqlen_start": s.slw_start,
        "seqlen_end": full,
        "duration": s.slw_steps,
        "multiple_of": s.multiple_of,
    }
    precision = "bf16" if s.device == "cuda" else "fp32"
    cfg = make_config(s, data.path, root / "compile", precision=precision, compile=True, curriculum=curriculum)
    before = dynamo_counts()
    loop = Loop(cfg, data)
    for _ in range(s.slw_steps + s.warmup + s.steps):
        loop.step()
    after = dynamo_counts()
    loop.close()
    lengths = [r["seqlen"] for r in loop.rows]
    frames, graphs = after["frames"] - before["frames"], after["graphs"] - before["graphs"]
    steady = loop.step_s[-s.steps :]
    compile_s = loop.step_s[0] - statistics.median(steady)
    tps, flops = loop.rate(len(loop.rows) - s.steps)
    rate = mfu_text(flops, peaks) if s.device == "cuda" else f"{flops / 1e9:.1f} GFLOP/s"
    rep.line(
        f"  compile, {precision}, SLW {s.slw_start} -> {full} over {s.slw_steps} steps "
        f"({len(set(lengths))} distinct lengths: {', '.join(map(str, sorted(set(lengths))))}): "
        f"{frames} frames compiled ({max(frames - 1, 0)} recompiles), {graphs} graphs; "
        f"first step {loop.step_s[0]:.1f} s ({compile_s:.1f} s over a steady step); "
        f"at full length {tps:,.0f} tokens/s, {rate}"
    )
    rep.numbers.update(
        compile_frames=frames,
        compile_recompiles=max(frames - 1, 0),
        compile_lengths=len(set(lengths)),
        compile_tokens_per_s=tps,
    )


def check_adam(loop: Loop | None, s: Setup, rep: Report, reps: int = 10) -> None:
    if loop is None:
        rep.skip("adam statistics", "no trained optimizer state (run with the precision part)")
        return
    times = []
    for _ in range(reps + 1):
        sync(s.device)
        t0 = time.perf_counter()
        stats = adam_statistics(loop.tr.optimizer)
        stats.tolist()  # the read-back the loop does: the host waits for the device
        times.append(time.perf_counter() - t0)
    ms = 1e3 * statistics.median(times[1:])
    step_ms = 1e3 * statistics.median(loop.step_s[s.warmup :])
    rep.line(
        f"  adam statistics ({s.preset}, {sum(p.numel() for p in loop.tr.model.parameters()):,} parameters): "
        f"{ms:.2f} ms per call (median of {reps}), {100 * ms / step_ms:.2f}% of a {step_ms:.1f} ms step"
    )
    rep.numbers["adam_ms"] = ms
    rep.numbers["adam_share"] = ms / step_ms


def check_ddp(s: Setup, data_path: Path, root: Path, rep: Report, timeout_s: float) -> None:
    backend = "nccl" if s.device == "cuda" else "gloo"
    if s.device != "cuda":
        rep.skip("DDP on NCCL", "no CUDA device; one process on gloo instead")
    precision = "bf16" if s.device == "cuda" else "fp32"
    cfg = make_config(s, data_path, root / "ddp", precision=precision)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    cmd += [__file__, "--ddp-child", json.dumps(cfg), "--steps", str(s.warmup + s.steps)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        rep.line(f"  DDP, 1 process on {backend}: FAILED, no result within {timeout_s:.0f} s")
        rep.numbers["ddp_ok"] = 0
        return
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        rep.line(f"  DDP, 1 process on {backend}: FAILED (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        rep.numbers["ddp_ok"] = 0
        return
    out = json.loads(lines[-1])
    times = out["step_s"][s.warmup :]
    tokens = out["tokens_per_step"]
    losses = ", ".join(f"{x:.3f}" for x in out["losses"])
    rep.line(
        f"  DDP, 1 process on {out['backend']} under torchrun ({s.preset}, {precision}, {out['engine']}): "
        f"{tokens / statistics.median(times):,.0f} tokens/s, losses {losses}"
    )
    rep.numbers["ddp_ok"] = 1
    rep.numbers["ddp_tokens_per_s"] = tokens / statistics.median(times)


def ddp_child(cfg: dict, steps: int) -> None:
    """Under torchrun: join the group, wrap the model in DDP, train `steps` steps, print one JSON line."""
    import torch.distributed as dist

    device = cfg["train"]["device"]
    backend = "nccl" if device == "cuda" else "gloo"
    kwargs = {"device_id": torch.device("cuda", 0)} if device == "cuda" else {}
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, **kwargs)
    data = TokenData(cfg["data"]["path"])

    def ddp(model):
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)

    loop = Loop(cfg, data, engine_wrap=ddp)
    for _ in range(steps):
        loop.step()
    loop.close()
    r = loop.rows[-1]
    print(
        json.dumps(
            {
                "backend": dist.get_backend(),
                "engine": type(loop.tr.engine).__name__,
                "step_s": loop.step_s,
                "losses": [row["loss"] for row in loop.rows],
                "tokens_per_step": r["batch_size"] * r["seqlen"],
            }
        )
    )
    dist.destroy_process_group()


def main(argv=None) -> Report:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    p.add_argument("--batch", type=int, help="sequences per step (default: 16 on CUDA, 4 on CPU)")
    p.add_argument("--data", type=Path, help="a prepared corpus (default: a synthetic one in a temp dir)")
    p.add_argument("--ddp-child", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_child:
        ddp_child(json.loads(args.ddp_child), args.steps)
        return Report()
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if bad := [x for x in parts if x not in PARTS]:
        p.error(f"--parts: unknown {', '.join(bad)} (choose from {', '.join(PARTS)})")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device: cuda requested but no CUDA device is available")
    s = Setup.for_device(device, args.batch)
    rep = Report()
    t_start = time.perf_counter()
    info = machine_info()
    rep.line(f"seqwarm device check, {info['date']}")
    rep.line(f"  torch {info['torch']}, python {info['python']}, seqwarm {info['seqwarm']}")
    rep.line(f"  cpu {info['cpu']}, {info['cpu_count']} logical cores, {info['torch_threads']} torch threads")
    peaks: dict = {}
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peaks["published"] = published_peak(name)
        peaks["measured"] = sgemm_peak("bf16", n=8192, reps=10, device="cuda") * 1e9
        known = f"{peaks['published'] / 1e12:.0f} TFLOP/s dense bf16 published" if peaks["published"] else None
        rep.line(
            f"  gpu {name}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        )
        rep.line(f"  bf16 peak: {known or f'unknown for {name!r}: MFU against the published peak not computed'}")
        rep.line(f"  bf16 matmul 8192^3 measured: {peaks['measured'] / 1e12:.0f} TFLOP/s (median of 10)")
    else:
        rep.line("  gpu none: every CUDA part is skipped; the rest runs at the tiny shape on the CPU")
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        root = Path(tmp)
        # Enough full-length gpt2-117m sequences for a 16-sequence batch; a smaller corpus for tiny.
        data_path = args.data or make_corpus(root / "corpus", docs=200 if device == "cuda" else 60)
        data = TokenData(data_path)
        loop = None
        if "precision" in parts:
            loop = check_precision(s, data, root, peaks, rep)
        if "adam" in parts:
            check_adam(loop, s, rep)
        if loop is not None:
            loop.close()
            del loop
        if "compile" in parts:
            check_compile(s, data, root, peaks, rep)
        if "ddp" in parts:
            check_ddp(s, Path(data_path), root, rep, timeout_s=120)  # inside the .sh's 300 s
    rep.line(f"  total {time.perf_counter() - t_start:.0f} s")
    return rep


if __name__ == "__main__":
    main()
