"""Nothing lost, nobody clobbered: locks, atomic files, checkpoint integrity and fallback, interrupts, --force.

Each test reproduces a defect an outside reliability probe found (issue 15) and fails without its fix.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seqwarm import checkpoint as ckpt
from seqwarm import files, rundir
from seqwarm.cli import main
from seqwarm.config import PACKAGED_CONFIGS, load_config
from seqwarm.errors import SeqwarmError
from seqwarm.interrupt import Interrupted
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
# 10 steps with checkpoints at 5 and 10; the LR decays over a fixed token count, so a resume may lengthen the run
SHORT = ["train.max_steps=10", "train.lr_decay_tokens=8000", "checkpoint.every_steps=5", "eval.every_tokens=null"]


def config(corpus_dir, run_dir, *overrides):
    return load_config(
        PACKAGED_CONFIGS / "tiny-slw.yaml",
        [f"data.path={corpus_dir}", f"run.dir={run_dir}", "train.num_threads=1", *SHORT, *overrides],
    )


@pytest.fixture(scope="module")
def finished(corpus_dir, tmp_path_factory):
    """A finished 10-step run with checkpoints step-5 and step-10 (copied by each test that changes it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(config(corpus_dir, run), progress=False)
    return run


@pytest.fixture
def run_copy(finished, tmp_path):
    """A copy of the finished run, with summary.json removed so that a resume trains again from a checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / rundir.SUMMARY).unlink()
    (run / files.LOCK).unlink(missing_ok=True)
    return run


def weights(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint_dir / "model.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    return err[-1]


# --- atomic files ---------------------------------------------------------------------------------


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    files.atomic_write(path, '{"old": 1}\n')

    def crash(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        files.atomic_write(path, '{"new": 2}\n' * 1000)
    assert path.read_text() == '{"old": 1}\n'  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left


def test_a_line_cut_by_a_crash_does_not_swallow_the_next(tmp_path):
    log = tmp_path / "resumes.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "cha')  # a kill inside the second write
    files.append_line(log, json.dumps({"step": 3}))
    assert [r["step"] for r in read_metrics(log)] == [1, 3]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"st')
    with files.open_append(metrics) as f:
        f.write('{"step": 2}\n')
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2]


def test_a_resume_of_a_run_whose_config_is_empty_is_refused(run_copy, capsys):
    (run_copy / "config.yaml").write_text("")  # what an in-place rewrite killed mid-way left (seqwarm <= 0.2)
    assert main(["train", "--resume", str(run_copy), "train.max_steps=12"]) == 2
    assert (
        one_line_error(capsys)
        == f"seqwarm: error: {run_copy / 'config.yaml'}: empty; the run's config is lost, so it cannot be resumed (start a new run)"
    )
    assert ckpt.latest_checkpoint(run_copy).name == "step-00000010"  # nothing trained on the defaults


# --- the lock -------------------------------------------------------------------------------------

HOLD = """
import sys, time
from seqwarm.files import directory_lock
with directory_lock(sys.argv[1], inside=sys.argv[2] == "inside"):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold_lock(directory: Path, inside: bool = True) -> subprocess.Popen:
    """Another process holding `directory`'s lock, until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), "inside" if inside else "beside"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over(run_copy, corpus_dir, capsys):
    before = (run_copy / "metrics.jsonl").read_text()
    holder = hold_lock(run_copy)
    try:
        for args in (
            ["--resume", str(run_copy), "train.max_steps=12"],
            ["tiny-slw", f"data.path={corpus_dir}", f"run.dir={run_copy}", "--force"],
        ):
            assert main(["train", *args]) == 2
            err = one_line_error(capsys)
            assert f"{run_copy}: run directory in use by another seqwarm process, pid {holder.pid} on host" in err
        assert (run_copy / "metrics.jsonl").read_text() == before  # neither appended to nor deleted
    finally:
        holder.kill()  # kill -9: the kernel releases its flock; its lock file stays behind
        holder.wait()
    assert json.loads((run_copy / files.LOCK).read_text())["pid"] == holder.pid  # the stale record
    assert main(["train", "--resume", str(run_copy), "train.max_steps=12"]) == 0
    assert [r["step"] for r in read_metrics(run_copy / "metrics.jsonl") if "loss" in r] == list(range(1, 13))


def test_prepare_locks_its_output_directory(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("some text\n\n" * 200)
    out = tmp_path / "prepared"
    holder = hold_lock(out, inside=False)
    try:
        assert main(["prepare", str(src), "--out", str(out), "--val-fraction", "0", "--test-fraction", "0"]) == 2
        assert f"in use by another seqwarm process, pid {holder.pid}" in one_line_error(capsys)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_refused_new_run_leaves_no_directory_behind(corpus_dir, tmp_path):
    run = tmp_path / "new"
    with pytest.raises(SeqwarmError, match="does not exist"):
        train(config(tmp_path / "missing-data", run), progress=False)
    assert not run.exists()  # so the next attempt needs no --force


# --- checkpoint integrity and fallback ------------------------------------------------------------


def test_flipped_bytes_in_the_latest_checkpoint_fall_back_to_the_previous_one(run_copy, finished, capsys):
    model = run_copy / "checkpoints" / "step-00000010" / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # inside a tensor: safetensors itself still loads it
    model.write_bytes(bytes(data))
    assert main(["train", "--resume", str(run_copy)]) == 0
    err = capsys.readouterr().err
    assert "step-00000010: model.safetensors: sha256 differs from the manifest" in err
    assert "resuming from step-00000005, the newest checkpoint that passes verification" in err
    assert (run_copy / "checkpoints" / "step-00000010.failed").is_dir()  # kept for a look, not a checkpoint
    # steps 6-10 trained again from step 5: the same weights as the run that was never damaged
    assert same(
        weights(run_copy / "checkpoints" / "step-00000010"), weights(finished / "checkpoints" / "step-00000010")
    )
    assert [r["step"] for r in read_metrics(run_copy / "metrics.jsonl") if "loss" in r] == list(range(1, 11))


def test_an_edited_state_json_and_a_nan_weight_are_detected(run_copy):
    latest = run_copy / "checkpoints" / "step-00000010"
    state = json.loads((latest / "state.json").read_text())
    state["clock"]["tokens"] += 1
    (latest / "state.json").write_text(json.dumps(state, indent=2))
    assert "state.json: " in ckpt.verify_checkpoint(latest)
    # a NaN under a manifest that agrees (a checkpoint from elsewhere): found by the finiteness check
    w = weights(latest)
    name = next(iter(w))
    w[name][0] = float("nan")
    save_file(w, latest / "model.safetensors")
    (latest / "state.json").write_text(json.dumps(json.loads((latest / "state.json").read_text())))
    ckpt.write_manifest(latest)
    assert ckpt.verify_checkpoint(latest) is None
    from seqwarm.checkpoint import read_checkpoint

    with pytest.raises(ckpt.CheckpointError, match=f"{name} holds non-finite values"):
        read_checkpoint(latest, verify=True)


def test_no_checkpoint_passes_verification_is_one_line(run_copy, capsys):
    for step in ("step-00000005", "step-00000010"):
        (run_copy / "checkpoints" / step / "optimizer.json").write_text("{")
    assert main(["train", "--resume", str(run_copy)]) == 2
    assert "no checkpoint passes verification (step-00000010: optimizer.json: " in one_line_error(capsys)
    assert (run_copy / "checkpoints" / "step-00000010").is_dir()  # nothing set aside when nothing passes


def test_a_checkpoint_without_a_manifest_still_loads(run_copy, finished):
    latest = run_copy / "checkpoints" / "step-00000010"
    (latest / ckpt.MANIFEST).unlink()  # a manifest deleted: not taken for an old checkpoint
    assert ckpt.verify_checkpoint(latest) == "manifest.json missing (state.json says one was written)"
    old = run_copy / "checkpoints" / "step-00000005"  # made into one as seqwarm 0.2 wrote it
    (old / ckpt.MANIFEST).unlink()
    state = json.loads((old / "state.json").read_text())
    del state["manifest"]
    (old / "state.json").write_text(json.dumps(state))
    assert ckpt.verify_checkpoint(old) is None
    shutil.rmtree(latest)
    assert main(["train", "--resume", str(run_copy)]) == 0  # trains steps 6-10 from it
    assert same(weights(latest), weights(finished / "checkpoints" / "step-00000010"))
    (old / "rng.safetensors").write_bytes(b"")
    assert ckpt.verify_checkpoint(old) == "rng.safetensors missing or empty (no manifest)"


def test_leftovers_of_interrupted_saves_are_ignored_and_cleaned(run_copy, capsys):
    root = run_copy / "checkpoints"
    (root / "step-00000099").mkdir()  # an empty stray directory: used to block every resume
    (root / ".step-00000011.tmp-abc123").mkdir()  # a save killed mid-way
    (root / ".step-00000011.tmp-abc123" / "model.safetensors").write_bytes(b"x" * 100)
    (root / ".step-00000004.del").mkdir()  # a keep_last removal killed mid-way
    assert [p.name for p in ckpt.list_checkpoints(run_copy)] == ["step-00000005", "step-00000010"]
    assert main(["train", "--resume", str(run_copy), "train.max_steps=11"]) == 0
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000011"]
    assert "removed, left by an interrupted save" in capsys.readouterr().err


def test_a_kill_between_the_renames_of_a_resave_restores_the_old_copy(tmp_path):
    root = tmp_path / "checkpoints"
    old = root / ".step-00000010.old-xyz" / "step-00000010"
    old.mkdir(parents=True)
    (old / "state.json").write_text("{}")
    assert ckpt.clean_checkpoints(tmp_path) == [".step-00000010.old-xyz (restored as step-00000010)"]
    assert (root / "step-00000010" / "state.json").exists() and not (root / ".step-00000010.old-xyz").exists()


def test_keep_last_removal_killed_midway_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in (5, 10):
        d = root / f"step-{step:08d}"
        d.mkdir(parents=True)
        for name in ckpt.FILES:
            (d / name).write_text("x")

    def killed(path, ignore_errors=False):
        raise KeyboardInterrupt  # the kill lands inside the deletion

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.remove_checkpoint(root / "step-00000005")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000010"]  # step-5 is not half there
    monkeypatch.undo()
    assert ckpt.clean_checkpoints(tmp_path) == [".step-00000005.del"]


def flip_a_byte(checkpoint: Path) -> None:
    model = checkpoint / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF  # inside a tensor: safetensors itself still loads it
    model.write_bytes(bytes(data))


needs_transformers = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None, reason="needs seqwarm[hf] (transformers)"
)


def test_eval_falls_back_from_a_damaged_checkpoint_and_says_so_in_one_line(run_copy, capsys):
    flip_a_byte(run_copy / "checkpoints" / "step-00000010")
    assert main(["eval", str(run_copy), "--tasks", "val", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("seqwarm: step-00000010: model.safetensors: sha256 differs from the manifest")
    assert err[0].endswith("; evaluating step-00000005, the newest checkpoint that passes verification")
    doc = json.loads((run_copy / "eval.json").read_text())
    assert Path(doc["checkpoint"]["path"]).name == "step-00000005" and doc["checkpoint"]["step"] == 5
    assert (run_copy / "checkpoints" / "step-00000010").is_dir()  # a reader sets nothing aside


@needs_transformers
def test_export_falls_back_from_a_damaged_checkpoint_and_refuses_when_none_passes(run_copy, tmp_path, capsys):
    flip_a_byte(run_copy / "checkpoints" / "step-00000010")
    out = tmp_path / "hf"
    assert main(["export", str(run_copy), "--hf", str(out)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("seqwarm")]  # not transformers'
    assert len(err) == 1 and "exporting step-00000005, the newest checkpoint that passes verification" in err[0]
    assert Path(json.loads((out / "seqwarm.json").read_text())["exported_from"]["path"]).name == "step-00000005"
    # every checkpoint damaged: one line naming each and why, exit 2, the earlier export left as it was
    flip_a_byte(run_copy / "checkpoints" / "step-00000005")
    before = (out / "model.safetensors").read_bytes()
    assert main(["export", str(run_copy), "--hf", str(out), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"seqwarm: error: {run_copy}: no checkpoint passes verification")
    assert "step-00000010: model.safetensors: sha256 differs" in err[0] and "step-00000005: model.safetensors" in err[0]
    assert (out / "model.safetensors").read_bytes() == before
    # a damaged checkpoint named directly: nothing to fall back to
    assert main(["eval", str(run_copy / "checkpoints" / "step-00000005"), "--tasks", "val"]) == 2
    assert "step-00000005: model.safetensors: sha256 differs from the manifest" in one_line_error(capsys)


def test_eval_and_export_verify_only_what_they_read(run_copy, capsys):
    """A damaged optimizer state does not change the model: eval keeps the newest checkpoint."""
    (run_copy / "checkpoints" / "step-00000010" / "optimizer.json").write_text("{")
    ckpt.verify_weights(run_copy / "checkpoints" / "step-00000010")
    w = weights(run_copy / "checkpoints" / "step-00000010")
    name = next(iter(w))
    w[name][0] = float("inf")  # under a manifest that agrees: found by the finiteness check
    save_file(w, run_copy / "checkpoints" / "step-00000010" / "model.safetensors")
    ckpt.write_manifest(run_copy / "checkpoints" / "step-00000010")
    with pytest.raises(ckpt.CheckpointError, match=f"{name} holds non-finite values"):
        ckpt.verify_weights(run_copy / "checkpoints" / "step-00000010")


@needs_transformers
def test_a_held_lock_on_an_export_or_import_output_is_refused_in_one_line(run_copy, tmp_path, capsys):
    out = tmp_path / "hf"
    holder = hold_lock(out, inside=False)  # another export writing `out`
    try:
        assert main(["export", str(run_copy), "--hf", str(out)]) == 2
        err = one_line_error(capsys)
        assert f"{out}: export directory in use by another seqwarm process, pid {holder.pid}" in err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["export", str(run_copy), "--hf", str(out)]) == 0
    assert not (tmp_path / ".hf.lock").exists()  # the killed holder's stale lock, taken over, goes with the export
    # import-hf --force onto a run that is training (its run-directory lock held): refused, not replaced
    before = (run_copy / "metrics.jsonl").read_text()
    holder = hold_lock(run_copy)
    try:
        assert main(["import-hf", str(out), "--out", str(run_copy), "--force", "tiny-slw"]) == 2
        assert f"{run_copy}: run directory in use by another seqwarm process, pid {holder.pid}" in one_line_error(
            capsys
        )
        assert (run_copy / "metrics.jsonl").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    holder = hold_lock(run_copy, inside=False)  # another import-hf writing it
    try:
        assert main(["import-hf", str(out), "--out", str(run_copy), "--force", "tiny-slw"]) == 2
        assert f"{run_copy}: import directory in use by another seqwarm process" in one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait()


# --- --force and --resume -------------------------------------------------------------------------


def test_force_replaces_only_a_run_seqwarm_made(corpus_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["train", "tiny-slw", f"data.path={corpus_dir}", f"run.dir={mine}", "--force"]) == 2
    assert "not a seqwarm run directory" in one_line_error(capsys)
    assert (mine / "thesis.tex").read_text() == "years of work"
    # the training data inside the run directory: --force would delete it
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_marker(run)
    shutil.copytree(corpus_dir, run / "data")
    assert main(["train", "tiny-slw", f"data.path={run / 'data'}", f"run.dir={run}", "--force"]) == 2
    assert "inside run.dir" in one_line_error(capsys) and (run / "data" / "meta.json").exists()


def test_resume_and_force_conflict(run_copy, capsys):
    assert main(["train", "--resume", str(run_copy), "--force"]) == 2
    assert one_line_error(capsys).startswith("seqwarm: error: --resume and --force conflict")


def test_prepare_force_never_deletes_its_inputs_or_a_users_directory(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("the input texts\n")
    assert main(["prepare", str(src), "--out", str(src), "--force"]) == 2
    assert "an input inside --out" in one_line_error(capsys) and (src / "a.txt").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["prepare", str(src), "--out", str(other), "--force"]) == 2
    assert "not a prepared-data directory" in one_line_error(capsys) and (other / "notes.txt").exists()


def test_a_crash_before_the_first_checkpoint_resumes_from_step_0(corpus_dir, tmp_path, finished):
    run = tmp_path / "run"

    def crash(clock):
        if clock.step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(config(corpus_dir, run), progress=False, on_step=crash)
    assert ckpt.latest_checkpoint(run) is None
    assert main(["train", "--resume", str(run)]) == 0  # no --force needed
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == list(range(1, 11))
    assert same(weights(run / "checkpoints" / "step-00000010"), weights(finished / "checkpoints" / "step-00000010"))


# --- interrupts -----------------------------------------------------------------------------------


def test_sigint_saves_the_step_and_a_second_signal_stops_at_once(corpus_dir, tmp_path, capsys):
    run = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)

    def signal_at(step, times):
        def hook(clock):
            if clock.step == step:
                for _ in range(times):
                    os.kill(os.getpid(), signal.SIGINT)

        return hook

    with pytest.raises(Interrupted, match=r"^SIGINT: stopped after step 3 with a checkpoint") as e:
        train(config(corpus_dir, run), progress=False, on_step=signal_at(3, 1))
    assert e.value.exit_code == 130
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000003"]
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are put back
    with pytest.raises(Interrupted, match="SIGINT again: stopped at once") as e:
        train(config(corpus_dir, run), resume=True, progress=False, on_step=signal_at(4, 2))
    assert e.value.exit_code == 130
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000003"]  # no new checkpoint
    # a signal during the last step lets the run finish
    summary = train(config(corpus_dir, run), resume=True, progress=False, on_step=signal_at(10, 1))
    assert summary["steps"] == 10
    assert "SIGINT received as the run ended: it finished" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_mid_run_saves_and_resumes_to_the_same_weights(corpus_dir, tmp_path):
    """A real SIGTERM to a `seqwarm train` process, then --resume: the weights of a run never interrupted."""
    run = tmp_path / "run"
    long = ["train.max_tokens=400000", "train.max_steps=null"]  # far longer than the test waits
    args = [f"data.path={corpus_dir}", f"run.dir={run}", "train.num_threads=1", *SHORT, *long]
    proc = subprocess.Popen(
        [sys.executable, "-m", "seqwarm", "train", "tiny-slw", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 300
    while not [r for r in read_metrics(run / "metrics.jsonl") if r.get("step", 0) >= 3]:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be signalled"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    (line,) = err.strip().splitlines()
    assert line.startswith("seqwarm: SIGTERM: stopped after step ") and "--resume" in line
    stopped = int(line.split("after step ")[1].split()[0])
    assert [p.name for p in ckpt.list_checkpoints(run)][-1] == f"step-{stopped:08d}"
    end = f"train.max_steps={stopped + 4}"
    assert main(["train", "--resume", str(run), end]) == 0
    ref = tmp_path / "ref"
    train(config(corpus_dir, ref, *long, end), progress=False)
    final = f"step-{stopped + 4:08d}"
    assert same(weights(run / "checkpoints" / final), weights(ref / "checkpoints" / final))
    rows = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert rows == list(range(1, stopped + 5))
