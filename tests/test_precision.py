"""`train.precision: auto`: bf16 where the device multiplies it natively, fp32 elsewhere, fixed per run."""

from pathlib import Path

import pytest
import torch
import yaml

from seqwarm import runtime
from seqwarm.errors import ConfigError
from seqwarm.lifecycle import train
from seqwarm.runtime import resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(("units", "expected"), [([], "fp32"), (["avx512_bf16"], "bf16"), (["amx_bf16"], "bf16")])
def test_auto_on_the_cpu_follows_its_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: units)
    assert resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("explicit", ["fp32", "bf16", "fp16"])
def test_an_explicit_precision_passes_through(monkeypatch, explicit):
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: ["amx_bf16"])
    assert resolve_precision(explicit, CPU) == explicit


@pytest.mark.parametrize(("supported", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_never_picks_fp16(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert resolve_precision("auto", torch.device("cuda", 0)) == expected


def test_the_detection_reads_torchs_own_cpu_capabilities():
    units = runtime.cpu_bf16_units()
    assert set(units) <= {"amx_bf16", "avx512_bf16"}
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else None
    if flags is not None and "avx512_bf16" not in flags and "amx_bf16" not in flags:
        assert units == []  # no unit the kernel does not report


@pytest.mark.parametrize("units", [[], ["amx_bf16"]])
def test_a_run_records_what_auto_resolved_to_and_a_resume_keeps_it(tiny_cfg, monkeypatch, units):
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: units)
    cfg = tiny_cfg("train.precision=auto", "train.max_steps=2", "eval.every_tokens=null", "checkpoint.every_steps=1")
    train(cfg, progress=False)
    saved = yaml.safe_load((Path(cfg.run.dir) / "config.yaml").read_text())
    expected = "bf16" if units else "fp32"
    assert saved["train"]["precision"] == expected
    # resumed on a machine whose detection says the opposite: the run keeps its precision
    monkeypatch.setattr(runtime, "cpu_bf16_units", lambda: [] if units else ["amx_bf16"])
    from seqwarm.lifecycle import main_train

    summary = main_train(None, ["train.max_steps=3"], resume=cfg.run.dir, force=False)
    assert summary["steps"] == 3
    assert yaml.safe_load((Path(cfg.run.dir) / "config.yaml").read_text())["train"]["precision"] == expected


def test_fp16_off_cuda_is_refused_by_the_config_and_on_the_device_auto_became(tiny_cfg, monkeypatch):
    """One check (`runtime.check_precision`), two callers: the config sees `train.device: cpu`, the
    lifecycle the device `auto` resolved to, before the run directory exists."""
    message = r"train.precision: fp16 needs CUDA \(use bf16 or fp32 on cpu\)"
    with pytest.raises(ConfigError, match=message):
        tiny_cfg("train.device=cpu", "train.precision=fp16")
    cfg = tiny_cfg("train.device=auto", "train.precision=fp16")  # cannot tell yet: passes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message):
        train(cfg, progress=False)
    assert not Path(cfg.run.dir).exists()
    runtime.check_precision("fp16", "cuda")
