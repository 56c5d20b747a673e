"""torchrun on CPU (gloo, 2 processes): the same steps as one process, resumable across process counts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from seqwarm.errors import ConfigError
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics

pytestmark = pytest.mark.distributed  # every test here starts processes with torchrun

# SLW is active during all 10 steps (T = 8: lengths 8 ... 64), two micro-batches per process.
ARGS = ["train.max_steps=10", "train.global_batch_size=8", "train.micro_batch_size=2", "train.num_threads=1"]
COMPARED = ("loss", "grad_norm", "val/loss", "adam/var_l1", "adam/var_max", "adam/mom_l1")


def torchrun(*args: str, nproc: int = 2, module: str | None = "seqwarm") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", module] if module else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train_rows(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def assert_same_steps(a: list[dict], b: list[dict], keys=COMPARED, rel: float = 1e-5) -> None:
    assert [(r["step"], r["tokens"], r["seqlen"], r["batch_size"]) for r in a] == [
        (r["step"], r["tokens"], r["seqlen"], r["batch_size"]) for r in b
    ]
    for x, y in zip(a, b):
        for k in keys:
            if k in x:
                assert y[k] == pytest.approx(x[k], rel=rel), (x["step"], k)


@pytest.fixture(scope="module")
def runs(corpus_dir, tmp_path_factory):
    """A 1-process reference run and 2-process DDP and FSDP2 runs of the same config."""
    root = tmp_path_factory.mktemp("dist")
    common = ["tiny-slw", f"data.path={corpus_dir}", *ARGS]
    from seqwarm.config import load_config

    train(load_config("tiny-slw", [*common[1:], f"run.dir={root / 'single'}"]), progress=False)
    torchrun("train", *common, f"run.dir={root / 'ddp'}")
    torchrun("train", *common, f"run.dir={root / 'fsdp'}", "train.parallel=fsdp")
    return root, common


def test_ddp_steps_equal_single_process_steps(runs):
    root, _ = runs
    single = read_metrics(root / "single" / "metrics.jsonl")
    ddp = read_metrics(root / "ddp" / "metrics.jsonl")
    assert [r["seqlen"] for r in train_rows(root / "ddp")] == [8, 8, 16, 24, 32, 40, 48, 56, 64, 64]
    assert len(single) == len(ddp)  # eval rows too, at the same steps
    assert_same_steps([r for r in single if "loss" in r], [r for r in ddp if "loss" in r])
    for x, y in zip([r for r in single if "val/loss" in r], [r for r in ddp if "val/loss" in r]):
        assert (x["step"], x["tokens"]) == (y["step"], y["tokens"]) and y["val/loss"] == pytest.approx(
            x["val/loss"], rel=1e-5
        )
    # one writer: one metrics row per step, one summary
    summary = json.loads((root / "ddp" / "summary.json").read_text())
    assert summary["steps"] == 10


def test_fsdp2_losses_equal_single_process_losses(runs):
    root, _ = runs
    # Losses agree to float precision. Gradient norms and Adam's moments agree only to ~1e-3: Adam's
    # first updates are g / (|g| + eps), which amplifies last-bit differences of near-zero gradient
    # coordinates; FSDP reduce-scatters in another order than single-process accumulation.
    assert_same_steps(train_rows(root / "single"), train_rows(root / "fsdp"), keys=("loss", "val/loss"))
    assert_same_steps(
        train_rows(root / "single"), train_rows(root / "fsdp"), keys=("grad_norm", "adam/var_l1"), rel=1e-3
    )


def test_kill_and_resume_under_ddp_and_on_one_process(runs, tmp_path):
    root, common = runs
    # A DDP run stopped after 6 steps (its checkpoint is written at the stop) ...
    torchrun("train", *common, "train.max_steps=6", f"run.dir={tmp_path / 'a'}")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    # ... continues under DDP exactly as the uninterrupted DDP run,
    torchrun("train", "--resume", str(tmp_path / "a"), "train.max_steps=10")
    assert_same_steps(train_rows(root / "ddp"), train_rows(tmp_path / "a"), rel=1e-6)
    # ... and on a single process like the single-process run.
    from seqwarm.lifecycle import main_train

    main_train(None, ["train.max_steps=10"], resume=str(tmp_path / "b"), force=False)
    assert_same_steps(train_rows(root / "single"), train_rows(tmp_path / "b"))


def test_fsdp2_checkpoint_resumes_on_one_process(runs, tmp_path):
    root, common = runs
    torchrun("train", *common, "train.max_steps=6", f"run.dir={tmp_path / 'f'}", "train.parallel=fsdp")
    from seqwarm.lifecycle import main_train

    main_train(None, ["train.max_steps=10"], resume=str(tmp_path / "f"), force=False)
    assert_same_steps(train_rows(root / "single"), train_rows(tmp_path / "f"), keys=("loss",))


@pytest.mark.slow
def test_the_llama_family_under_ddp_and_fsdp2_takes_the_single_process_steps(corpus_dir, tmp_path):
    """Issue 24: the Llama-style blocks (QK-norm, one KV head, an untied output layer) are DDP's and FSDP2's too;
    FSDP2 shards each block (`distributed.wrap`), the root holds the embedding, the final norm and lm_head."""
    llama = ["model.family=llama", "model.qk_norm=true", "model.n_kv_head=1", "model.tie_embeddings=false"]
    common = ["tiny-slw", f"data.path={corpus_dir}", *ARGS, *llama]
    from seqwarm.config import load_config

    train(load_config("tiny-slw", [*common[1:], f"run.dir={tmp_path / 'single'}"]), progress=False)
    torchrun("train", *common, f"run.dir={tmp_path / 'ddp'}")
    torchrun("train", *common, f"run.dir={tmp_path / 'fsdp'}", "train.parallel=fsdp")
    single = train_rows(tmp_path / "single")
    assert [r["seqlen"] for r in single] == [8, 8, 16, 24, 32, 40, 48, 56, 64, 64]
    assert_same_steps(single, train_rows(tmp_path / "ddp"))
    assert_same_steps(single, train_rows(tmp_path / "fsdp"), keys=("loss", "val/loss"))


def test_bad_batch_split_fails_before_training(tiny_cfg, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    cfg = tiny_cfg()  # global batch 8, micro-batch 4: 8 is not a multiple of 3 x 4
    with pytest.raises(ConfigError, match=r"train.global_batch_size \(8\) must be a multiple of processes x "):
        train(cfg, progress=False)
    assert not Path(cfg.run.dir).exists()


def test_bad_batch_split_under_torchrun_is_one_line_per_rank_exit_2(corpus_dir, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "seqwarm",
        "train",
    ]
    args = ["tiny-slw", f"data.path={corpus_dir}", "train.micro_batch_size=8", f"run.dir={tmp_path / 'r'}"]
    done = subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode != 0
    # The two ranks write to one stderr at the same time, so their lines may interleave: count, don't split.
    message = "train.global_batch_size (8) must be a multiple of processes x train.micro_batch_size (2 x 8 = 16)"
    assert done.stderr.count("seqwarm: error: ") == 2 and done.stderr.count(message) == 2
    assert done.stderr.count("seqwarm: error: [rank 1] ") == 1
    assert not (tmp_path / "r").exists()


# Ends like a training run: a DDP backward, a last collective (the summary broadcast), then shutdown
# and interpreter exit. The long switch interval keeps the GIL on the main thread until it blocks,
# which is when the race below is most likely.
LAST_COLLECTIVE_THEN_EXIT = """
import sys; sys.setswitchinterval(1000)
import torch
from seqwarm import distributed
env = distributed.env_from_torchrun()
distributed.init(env, torch.device("cpu"), timeout_s=60)
model = distributed.wrap(torch.nn.Linear(4, 4), env, "ddp", torch.device("cpu"))
model(torch.ones(2, 4)).sum().backward()
distributed.broadcast({"done": True}, env)
distributed.shutdown()
"""


def test_ranks_exit_cleanly_right_after_the_last_collective(tmp_path):
    """Regression: a gloo worker thread that still had to drop a finished collective's tensors (which
    needs the GIL) when the interpreter began to finalize aborted the process ("terminate called
    without an active exception"). Without the drain in `distributed.shutdown`, about 1 launch in 3
    of this script aborted, so four clean launches make a regression very likely to show."""
    script = tmp_path / "last_collective.py"
    script.write_text(LAST_COLLECTIVE_THEN_EXIT)
    for _ in range(4):
        done = torchrun(str(script), module=None)
        assert "terminate called" not in done.stderr
