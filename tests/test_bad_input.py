"""Bad input to every subcommand is one line naming the file or field, exit code 2, no traceback (issue 15).

Table-driven: each case builds its bad input in a fresh directory and gives the command line and
what the error must name; one test runs them all through `seqwarm.cli.main` in-process. seqwarm runs
as root here, so permission-denied and read-only directories cannot come from chmod: those cases
deny writing through `os.access` (what `seqwarm.files.check_writable` asks) or raise the OSError a
full disk, a read-only mount or a forbidden directory gives (errno ENOSPC, EROFS, EACCES) from the
writes themselves. docs/RELIABILITY.md ("Validation and bad input") lists the cases and their count.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from importlib.util import find_spec
from pathlib import Path

import pytest

from seqwarm.cli import main
from seqwarm.config import PACKAGED_CONFIGS, load_config

TINY = str(PACKAGED_CONFIGS / "tiny-slw.yaml")
NOT_UTF8 = b"train:\n  lr: \xff\xfe\n"


@pytest.fixture(scope="module")
def world(corpus_dir, tmp_path_factory):
    """A tiny trained run (and its Hugging Face export when transformers is there) that cases copy and damage."""
    from seqwarm.lifecycle import train

    root = tmp_path_factory.mktemp("bad-input")
    cfg = load_config(
        TINY, [f"data.path={corpus_dir}", f"run.dir={root / 'run'}", "train.num_threads=1", "train.max_tokens=1024"]
    )
    train(cfg, progress=False)
    hf = None
    if find_spec("transformers") is not None:
        from seqwarm.hf import export_hf

        hf = export_hf(root / "run", root / "hf")
    return {"run": root / "run", "data": Path(corpus_dir), "hf": hf}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst))


def _checkpoint(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*"))[-1]


def _deny_writes(monkeypatch, directory: Path) -> None:
    """What a read-only or permission-denied directory answers to `os.access` (root bypasses chmod)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == directory and mode & os.W_OK:
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _fail_writes(monkeypatch, target, name: str, code: int) -> None:
    def fail(*args, **kwargs):
        path = next((a for a in args if isinstance(a, (str, Path))), "model.safetensors")
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(target, name, fail)


class _Payload:
    """A pickle that would create a file if anything unpickled it (a malicious `pytorch_model.bin`)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --- the cases: (world, tmp, monkeypatch) -> (argv, what the error must name) ----------------------

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


@case
def prepare_out_is_a_file(w, tmp, mp):
    (tmp / "out").write_text("mine")
    (tmp / "a.txt").write_text("text " * 100)
    return ["prepare", str(tmp / "a.txt"), "--out", str(tmp / "out")], f"--out {tmp / 'out'}: is a file"


@case
def prepare_out_under_a_file(w, tmp, mp):
    (tmp / "f").write_text("mine")
    (tmp / "a.txt").write_text("text " * 100)
    return ["prepare", str(tmp / "a.txt"), "--out", str(tmp / "f" / "out")], f"{tmp / 'f'} is a file"


@case
def prepare_out_not_writable(w, tmp, mp):
    (tmp / "a.txt").write_text("text " * 100)
    (tmp / "ro").mkdir()
    _deny_writes(mp, tmp / "ro")
    return ["prepare", str(tmp / "a.txt"), "--out", str(tmp / "ro" / "out")], f"{tmp / 'ro'} is not writable"


@case
def prepare_input_not_utf8(w, tmp, mp):
    (tmp / "a.txt").write_bytes(b"\xff\xfe\x00binary")
    return ["prepare", str(tmp / "a.txt"), "--out", str(tmp / "out")], f"{tmp / 'a.txt'}: not UTF-8"


@case
def prepare_input_missing(w, tmp, mp):
    return ["prepare", str(tmp / "nothing.txt"), "--out", str(tmp / "out")], "nothing.txt: no such file"


@case
def prepare_disk_full(w, tmp, mp):
    from tqdm import tqdm

    import seqwarm.data.prepare as prepare
    from seqwarm.data import shards

    (tmp / "a.txt").write_text(("Some words here. " * 40 + "\n\n") * 40)

    def full(self, tokens):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    mp.setattr(shards.SplitWriter, "append", full)
    # the tokenizing bar has started when the write fails: kept off stderr, which must be the error alone
    mp.setattr(prepare, "tqdm", lambda *a, **k: tqdm(*a, **{**k, "disable": True}))
    argv = ["prepare", str(tmp / "a.txt"), "--out", str(tmp / "out"), "--val-fraction", "0", "--test-fraction", "0"]
    return argv, "train-000000.bin: No space left on device"


@case
def train_config_not_utf8(w, tmp, mp):
    (tmp / "c.yaml").write_bytes(NOT_UTF8)
    return ["train", str(tmp / "c.yaml")], f"{tmp / 'c.yaml'}: not UTF-8"


@case
def train_config_is_a_directory(w, tmp, mp):
    (tmp / "c.yaml").mkdir()
    return ["train", str(tmp / "c.yaml")], f"{tmp / 'c.yaml'}: cannot read config file"


@case
def train_data_path_is_a_file(w, tmp, mp):
    (tmp / "data").write_text("not a corpus")
    return ["train", TINY, f"data.path={tmp / 'data'}", f"run.dir={tmp / 'run'}"], f"{tmp / 'data'} is a file"


@case
def train_run_dir_under_a_file(w, tmp, mp):
    (tmp / "f").write_text("mine")
    return ["train", TINY, f"data.path={w['data']}", f"run.dir={tmp / 'f' / 'run'}"], str(tmp / "f")


@case
def train_run_dir_read_only(w, tmp, mp):
    import seqwarm.rundir as rundir

    _fail_writes(mp, rundir, "save_config", errno.EROFS)
    return ["train", TINY, f"data.path={w['data']}", f"run.dir={tmp / 'run'}"], "Read-only file system"


@case
def train_disk_full_in_a_checkpoint(w, tmp, mp):
    import seqwarm.checkpoint as checkpoint

    _fail_writes(mp, checkpoint, "save_file", errno.ENOSPC)
    argv = ["train", TINY, f"data.path={w['data']}", f"run.dir={tmp / 'run'}", "train.max_tokens=512"]
    return argv, "No space left on device"


@case
def train_lr_nan(w, tmp, mp):
    return ["train", TINY, "train.lr=.nan", f"run.dir={tmp / 'run'}"], "train.lr: must be a finite number"


@case
def train_seed_too_large(w, tmp, mp):
    return ["train", TINY, f"run.seed={2**70}", f"run.dir={tmp / 'run'}"], "run.seed: must be an integer in"


@case
def train_token_id_outside_the_vocabulary(w, tmp, mp):
    import hashlib

    import numpy as np

    data = _copy(w["data"], tmp / "data")
    meta = json.loads((data / "meta.json").read_text())
    shard = meta["splits"]["train"]["shards"][0]
    tokens = np.fromfile(data / shard["file"], dtype=np.uint16)
    tokens[5] = 60000
    tokens.tofile(data / shard["file"])
    shard["sha256"] = hashlib.sha256(tokens.tobytes()).hexdigest()  # the checksum still passes
    (data / "meta.json").write_text(json.dumps(meta))
    argv = ["train", TINY, f"data.path={data}", f"run.dir={tmp / 'run'}"]
    return argv, f"{data / shard['file']}: token id 60000 is outside the vocabulary"


@case
def train_meta_names_a_file_outside(w, tmp, mp):
    data = _copy(w["data"], tmp / "data")
    meta = json.loads((data / "meta.json").read_text())
    meta["splits"]["val"]["shards"][0]["file"] = "../../etc/passwd"
    (data / "meta.json").write_text(json.dumps(meta))
    argv = ["train", TINY, f"data.path={data}", f"run.dir={tmp / 'run'}"]
    return argv, "splits.val.shards[0].file: '../../etc/passwd'"


@case
def train_resume_a_file(w, tmp, mp):
    (tmp / "run").write_text("mine")
    return ["train", "--resume", str(tmp / "run")], str(tmp / "run")


@case
def plan_unbounded(w, tmp, mp):
    return ["plan", TINY, "train.max_tokens=1e15"], "train.max_tokens: the plan has at least"


@case
def plan_config_not_utf8(w, tmp, mp):
    (tmp / "c.yaml").write_bytes(NOT_UTF8)
    return ["plan", str(tmp / "c.yaml")], f"{tmp / 'c.yaml'}: not UTF-8"


@case
def export_schedule_config_not_utf8(w, tmp, mp):
    (tmp / "c.yaml").write_bytes(NOT_UTF8)
    return ["export-schedule", str(tmp / "c.yaml"), "--to", "deepspeed"], f"{tmp / 'c.yaml'}: not UTF-8"


@case
def report_binary_metrics(w, tmp, mp):
    run = _copy(w["run"], tmp / "run")
    (run / "metrics.jsonl").write_bytes(os.urandom(256) + b"\xff\xfe")
    return ["report", str(run), "--out", str(tmp / "report")], f"{run / 'metrics.jsonl'}: not UTF-8"


@case
def report_run_is_a_file(w, tmp, mp):
    (tmp / "run").write_text("mine")
    return ["report", str(tmp / "run"), "--out", str(tmp / "report")], str(tmp / "run")


@case
def report_out_is_a_file(w, tmp, mp):
    (tmp / "report").write_text("mine")
    return ["report", str(w["run"]), "--out", str(tmp / "report")], str(tmp / "report")


@case
def sweep_report_binary_metrics(w, tmp, mp):
    out = tmp / "sweep"
    argv = ["sweep", TINY, f"data.path={w['data']}", "train.max_tokens=512", "--grid", "train.lr=[1e-3]"]
    argv += ["--out", str(out), "--no-progress"]
    assert main(argv) == 0  # a finished sweep of one run
    (metrics,) = out.glob("*/metrics.jsonl")
    metrics.write_bytes(b"\x00\xff" * 100)
    return [*argv, "--report-only"], f"{metrics}: not UTF-8"


@case
def eval_json_under_a_file(w, tmp, mp):
    import seqwarm.eval.runner as runner

    mp.setattr(runner, "run_eval", lambda plan: pytest.fail("evaluated before checking --json"))
    (tmp / "f").write_text("mine")
    argv = ["eval", str(w["run"]), "--tasks", "val", "--json", str(tmp / "f" / "eval.json"), "--no-progress"]
    return argv, f"--json {tmp / 'f' / 'eval.json'}: {tmp / 'f'} is a file"


@case
def eval_json_is_a_directory(w, tmp, mp):
    import seqwarm.eval.runner as runner

    mp.setattr(runner, "run_eval", lambda plan: pytest.fail("evaluated before checking --json"))
    (tmp / "out").mkdir()
    argv = ["eval", str(w["run"]), "--tasks", "val", "--json", str(tmp / "out"), "--no-progress"]
    return argv, f"--json {tmp / 'out'}: is a directory"


@case
def eval_path_is_a_file(w, tmp, mp):
    (tmp / "run").write_text("mine")
    return ["eval", str(tmp / "run"), "--no-progress"], f"{tmp / 'run'}: no such run or checkpoint directory"


@case
def eval_truncated_weights(w, tmp, mp):
    run = _copy(w["run"], tmp / "run")
    weights = _checkpoint(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    # found by the checkpoint's verification (its only checkpoint: nothing to fall back to), before any work
    names = f"{run}: no checkpoint passes verification ({_checkpoint(run).name}: model.safetensors: 100 bytes"
    return ["eval", str(run), "--tasks", "val", "--no-progress"], names


@case
def export_missing_weights(w, tmp, mp):
    run = _copy(w["run"], tmp / "run")
    (_checkpoint(run) / "model.safetensors").unlink()
    return ["export", str(run), "--hf", str(tmp / "hf")], str(run)


@case
def export_truncated_weights(w, tmp, mp):
    run = _copy(w["run"], tmp / "run")
    weights = _checkpoint(run) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["export", str(run), "--hf", str(tmp / "hf")], f"({_checkpoint(run).name}: model.safetensors: "


@case
def export_out_is_a_file(w, tmp, mp):
    (tmp / "hf").write_text("mine")
    return ["export", str(w["run"]), "--hf", str(tmp / "hf")], f"--hf {tmp / 'hf'}: is a file"


@case
def export_out_not_writable(w, tmp, mp):
    _deny_writes(mp, tmp)
    return ["export", str(w["run"]), "--hf", str(tmp / "hf")], f"{tmp} is not writable"


@case
def import_hf_missing_weights(w, tmp, mp):
    hf = _copy(w["hf"], tmp / "hf")
    (hf / "model.safetensors").unlink()
    return ["import-hf", str(hf), "--out", str(tmp / "run"), TINY], f"{hf / 'model.safetensors'}: missing"


@case
def import_hf_truncated_weights(w, tmp, mp):
    hf = _copy(w["hf"], tmp / "hf")
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return ["import-hf", str(hf), "--out", str(tmp / "run"), TINY], f"{hf}: cannot load the weights"


@case
def import_hf_pickle_weights(w, tmp, mp):
    hf = _copy(w["hf"], tmp / "hf")
    (hf / "model.safetensors").unlink()
    (hf / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(tmp / "pwned")))
    return [
        "import-hf",
        str(hf),
        "--out",
        str(tmp / "run"),
        TINY,
    ], "pytorch_model.bin: pickled PyTorch weights are refused"


@case
def import_hf_dir_is_a_file(w, tmp, mp):
    (tmp / "hf").write_text("mine")
    return ["import-hf", str(tmp / "hf"), "--out", str(tmp / "run"), TINY], f"{tmp / 'hf'}: not a Hugging Face model"


@case
def import_hf_out_is_a_file(w, tmp, mp):
    (tmp / "run").write_text("mine")
    return ["import-hf", str(w["hf"]), "--out", str(tmp / "run"), TINY], f"--out {tmp / 'run'}: is a file"


@case
def demo_out_is_a_file(w, tmp, mp):
    (tmp / "demo").write_text("mine")
    return ["demo", "--out", str(tmp / "demo")], str(tmp / "demo")


@case
def tune_config_not_utf8(w, tmp, mp):
    (tmp / "c.yaml").write_bytes(NOT_UTF8)
    return ["tune", str(tmp / "c.yaml"), "--out", str(tmp / "tune")], f"{tmp / 'c.yaml'}: not UTF-8"


NEEDS_HF = {"import_hf_missing_weights", "import_hf_truncated_weights", "import_hf_pickle_weights"}
NEEDS_HF |= {"import_hf_out_is_a_file", "export_truncated_weights", "export_missing_weights", "export_out_not_writable"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_bad_input_is_one_line_naming_the_file_or_field_with_exit_code_2(case, world, tmp_path, monkeypatch, capsys):
    if case.__name__ in NEEDS_HF and world["hf"] is None:
        pytest.skip("needs transformers")
    monkeypatch.chdir(tmp_path)
    argv, names = case(world, tmp_path, monkeypatch)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("seqwarm: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and names in err, err
    if case is import_hf_pickle_weights:
        assert not (tmp_path / "pwned").exists()  # the pickle was never loaded


def test_the_table_covers_every_subcommand():
    from seqwarm.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    covered = {cmd for cmd in sub.choices for c in CASES if c.__name__.startswith(cmd.replace("-", "_") + "_")}
    assert covered == set(sub.choices) and len(CASES) >= 35


def test_check_writable_accepts_what_can_be_written(tmp_path):
    from seqwarm.files import check_writable

    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "dir").mkdir()
    check_writable(tmp_path / "old.json", "--json", directory=False)  # replaced beside itself
    check_writable(tmp_path / "new" / "deeper" / "x.json", "--json", directory=False)  # parents made
    check_writable(tmp_path / "dir", "--out", directory=True)
    check_writable(tmp_path / "new-dir", "--out", directory=True)
