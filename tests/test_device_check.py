"""benchmarks/device_check.py on a CPU: every CUDA part skipped with a message, the rest measured.

And the benchmarks' own smoke tests: bench_train's arguments and a one-step tiny run. The figures
are not checked for speed (no timed assertions), only for having been measured.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_train  # noqa: E402
import device_check  # noqa: E402

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
        assert rep.numbers[f"{precision}_fused_adamw"] == 0  # seqwarm fuses AdamW on CUDA only
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
def test_device_check_sh_on_cpu_compiles_and_runs_ddp_on_gloo(corpus_dir):
    """The wrapper, whole: compile under SLW and one-process DDP (gloo here) included."""
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
        timeout=600,
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
