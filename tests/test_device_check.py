"""benchmarks/device_check.py on a CPU: every CUDA part skipped with a message, the rest measured.

And the benchmarks' own smoke tests: bench_train's arguments and a one-step tiny run. The figures
are not checked for speed (no timed assertions), only for having been measured.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_train  # noqa: E402
import device_check  # noqa: E402
import study2_gpu  # noqa: E402

CUDA_PARTS = ("cuda bf16 autocast", "cuda fp16 with loss scaling", "fused AdamW", "peak memory")


def test_device_check_on_cpu_skips_cuda_and_measures_the_rest(corpus_dir, capsys):
    rep = device_check.main(["--device", "cpu", "--parts", "precision,adam", "--data", str(corpus_dir)])
    out = capsys.readouterr().out
    for part in CUDA_PARTS:
        assert part in rep.skipped
        assert f"  {part}: skipped (no CUDA device" in out
    # The CPU versions of the other parts produced numbers.
    for precision in ("fp32", "bf16"):
        assert rep.numbers[f"{precision}_tokens_per_s"] > 0
        assert rep.numbers[f"{precision}_adamw_ms"] > 0
        assert rep.numbers[f"{precision}_fused_adamw"] == 1  # seqwarm fuses AdamW on the CPU too
    assert rep.numbers["adam_ms"] > 0 and 0 < rep.numbers["adam_share"] < 1
    assert "adam statistics (tiny" in out


def test_device_check_rejects_an_unknown_part(capsys):
    with pytest.raises(SystemExit) as e:
        device_check.main(["--device", "cpu", "--parts", "precision,nope"])
    assert e.value.code == 2
    assert "--parts: unknown nope" in capsys.readouterr().err


def test_published_peaks_match_specific_names_first():
    assert device_check.published_peak("NVIDIA H100 PCIe") == 756e12
    assert device_check.published_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert device_check.published_peak("NVIDIA H200") == 989e12
    assert device_check.published_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert device_check.published_peak("Some Future GPU") is None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_device_check_sh_on_cpu_compiles_and_runs_ddp_on_gloo(corpus_dir):
    """The wrapper, whole: compile under SLW and one-process DDP (gloo here) included."""
    # Inductor compiling on a busy 2-core CPU can outlast the 300 s sized for a GPU machine.
    env = {**os.environ, "DEVICE_CHECK_TIMEOUT": "800"}
    done = subprocess.run(
        [
            "bash",
            str(BENCHMARKS / "device_check.sh"),
            "--device",
            "cpu",
            "--parts",
            "compile,ddp",
            "--data",
            str(corpus_dir),
        ],
        capture_output=True,
        text=True,
        timeout=850,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DDP on NCCL: skipped (no CUDA device; one process on gloo instead)" in done.stdout
    assert "DDP, 1 process on gloo under torchrun" in done.stdout
    assert "DistributedDataParallel" in done.stdout
    line = next(x for x in done.stdout.splitlines() if x.startswith("  compile, fp32, SLW 16 -> 128"))
    assert "frames compiled" in line and "distinct lengths" in line


def test_bench_train_arguments():
    args = bench_train.parse_args(["--shapes", "tiny,6x384", "--precisions", "fp32,auto", "--compile", "--steps", "1"])
    assert args.shapes == ["tiny", "6x384"] and args.precisions == ["fp32", "auto"] and args.compile
    # `auto` is passed through to train.precision, for the config to judge.
    specs = bench_train.variants(bench_train.SHAPES["6x384"], args.precisions, args.compile)
    assert [s[3] for s in specs] == [
        {"precision": "fp32", "compile": False},
        {"precision": "fp32", "compile": True},
        {"precision": "auto", "compile": False},
        {"precision": "auto", "compile": True},
    ]
    assert {s[1] for s in specs} == {256}
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--shapes", "huge"])
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--parts", "slw,nope"])


@pytest.mark.slow
def test_bench_train_one_tiny_step_of_each_variant(corpus_dir, tmp_path, capsys, monkeypatch):
    import seqwarm.model

    # main() wraps the output layer with a timer: put the original back afterwards.
    monkeypatch.setattr(seqwarm.model, "linear_cross_entropy", seqwarm.model.linear_cross_entropy)
    out_json = tmp_path / "bench.json"
    bench_train.main(
        ["--shapes", "tiny", "--parts", "variants", "--steps", "1", "--warmup-steps", "1"]
        + ["--data", str(corpus_dir), "--json", str(out_json)]
    )
    out = capsys.readouterr().out
    assert "== tiny: precision and compile" in out
    import json

    report = json.loads(out_json.read_text())
    assert [r["precision"] for r in report["variants"]] == ["fp32", "bf16"]  # seen inside the steps
    assert all(r["tokens_per_s"] > 0 and r["gflop_per_s"] > 0 for r in report["variants"])
    assert set(report["peaks"]["tiny"]) == {"fp32", "bf16"}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bench_vs_steps_seqwarm_and_hf_alike(capsys, family):
    pytest.importorskip("transformers")
    import bench_vs

    shape = bench_vs.VsShape(n_layer=2, d_model=64, n_head=2, seqlen=32, batch=2, vocab=256, family=family)
    impls = {
        "seqwarm": bench_vs.seqwarm_model,
        "hf": bench_vs.hf_model if family == "gpt2" else bench_vs.hf_llama_model,
    }
    steppers = bench_vs.measure(shape, impls, ["fp32"], warmup=1, steps=2)
    assert [(s.name, len(s.times)) for s in steppers] == [("seqwarm", 2), ("hf", 2)]
    # The same shape: the same parameter count but for seqwarm's padded embedding rows (256 is a multiple of 64).
    counts = [sum(p.numel() for p in s.model.parameters()) for s in steppers]
    assert counts[0] == counts[1]
    # Both train on random tokens from about ln(256) = 5.55.
    assert all(5.0 < s.last_loss < 6.0 for s in steppers)
    rows = bench_vs.report("toy", shape, steppers, {"fp32": 100.0, "bf16": 200.0}, 1, 2)
    assert rows[0]["seqwarm_speedup"] == 1.0 and rows[1]["seqwarm_speedup"] > 0
    assert "seqwarm/this" in capsys.readouterr().out


# --- benchmarks/study2_gpu.py: Study 2 reduced, on a GPU; --toy runs the same code on the CPU ---------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_study2_gpu_toy_writes_its_table_and_csv(corpus_dir, tmp_path):
    """The wrapper, whole, in --toy mode: probe, budget, the three arms, the Markdown table and the CSV."""
    out = tmp_path / "s2"
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "study2_gpu.sh"), "--toy", "--out", str(out), "--data", str(corpus_dir)],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    md = (out / "study2_gpu.md").read_text()
    assert "(--toy: the CPU version, not a result)" in md and "bf16" in md and "instruments every 2 steps" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| arm | final val loss | plateau") and "tokens/s" in table[0]
    assert [line.split("|")[1].strip() for line in table[1:]] == ["baseline", "slw", "qk-norm"]
    with open(out / "study2_gpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == ["baseline", "slw", "qk-norm"]
    for r in rows:
        assert float(r["final_val_loss"]) > 0 and float(r["tokens_per_s"]) > 0 and float(r["max_attn_logit"]) > 0
        assert 0 <= float(r["min_attn_entropy"]) <= 1
    # the same token budget for every arm (SLW's last step may pass it by less than a full-length step), which SLW's
    # short early steps spread over more steps
    budget, full_step = int(rows[0]["tokens"]), study2_gpu.TOY.batch * study2_gpu.TOY.context
    assert all(budget <= int(r["tokens"]) < budget + full_step for r in rows)
    assert int(rows[1]["steps"]) > int(rows[0]["steps"])
    assert not (out / "baseline" / "checkpoints").exists()  # 1.5 GB each at the GPU's size
    assert "qk_norm: true" in (out / "qk-norm" / "config.yaml").read_text()


def test_study2_gpu_budget_and_arms():
    s = study2_gpu.GPU
    tokens_per_step = s.batch * s.context
    # 300K tokens/s, 360 s left for 3 arms: 0.8 x 120 s x 300K / 262,144 tokens a step = 109 steps
    assert study2_gpu.plan_steps(s, 300_000, 360, 3) == int(0.8 * 120 * 300_000 / tokens_per_step) == 109
    assert study2_gpu.plan_steps(s, 1_000, 360, 3) == s.min_steps  # a slow device still runs the minimum
    assert study2_gpu.plan_steps(s, 1e9, 360, 3) == s.max_steps
    assert s.context >= 1024 and s.batch >= 100 and s.preset == "gpt2-117m"


def test_study2_gpu_arms_are_the_studys(tmp_path):
    from seqwarm.study_arms import ARMS

    class Args:
        data, lr, seed, compile = "builtin-bpe1024", 1e-2, 11, False

    for arm in ("baseline", "slw", "qk-norm"):
        o = study2_gpu.overrides(study2_gpu.GPU, Args, 100, tmp_path, arm)
        assert o[-len(ARMS[arm]) :] == ARMS[arm] if ARMS[arm] else o[-1].startswith("run.dir=")
        assert "train.max_tokens=26214400" in o and "train.warmup_steps=10" in o and "curriculum.duration=40" in o


def test_study2_gpu_refuses_unknown_arms_and_a_missing_gpu(capsys):
    with pytest.raises(SystemExit):
        study2_gpu.main(["--out", "x", "--arms", "baseline,nope", "--toy"])
    assert "--arms: not study arms: nope" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            study2_gpu.main(["--out", "x"])
        assert "no CUDA device: run with --toy" in capsys.readouterr().err
