"""The Weights & Biases mirror (`log.wandb`), offline: no account, no network. The offline run's own file is
read back (wandb's protobuf records) and must hold the rows of metrics.jsonl."""

import json
import struct
import time
from pathlib import Path

import pytest

from seqwarm.config import LogConfig, load_config
from seqwarm.errors import ConfigError
from seqwarm.lifecycle import train
from seqwarm.metrics import MetricsLog, WandbSettings, read_metrics

BLOCK, HEADER = 32768, 7  # the .wandb file is a LevelDB-style log: 32 KiB blocks of framed records


@pytest.fixture(autouse=True)
def wandb_offline_home(tmp_path, monkeypatch):
    """Keep wandb's own settings and caches out of the home directory."""
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)


def records(path: Path):
    """The protobuf records of an offline run's run-ID.wandb file (a ':W&B' header, then framed chunks:
    crc32 (4 bytes), length (2), type (1: whole, 2: first, 3: middle, 4: last); a block's tail under 7
    bytes is padding)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):  # a chunk still being written
            break
        parts += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def complete_records(file: Path, timeout_s: float = 240.0) -> list:
    """The records once the run's `exit` record is on disk: wandb-core writes the file from its own process,
    and `finish()` was seen to return before the records were there. The wait ends as soon as the record is
    there; the deadline only bounds a broken run, so it is generous (a busy machine delays wandb-core's process)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = list(records(file))
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def offline_run(run_dir: Path, file: Path | None = None) -> tuple[dict, list[dict]]:
    """The one offline run under RUN_DIR/wandb (or `file`): its run record's fields and its history rows."""
    if file is None:
        (file,) = (Path(run_dir) / "wandb").glob("offline-run-*/run-*.wandb")
    run, history = {}, []
    for record in complete_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = {"project": record.run.project, "name": record.run.display_name, "group": record.run.run_group}
            run["job_type"] = record.run.job_type
            run["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.append(row | {"_step": record.history.step.num})
    return run, history


@pytest.mark.slow
def test_offline_run_holds_the_metrics_of_metrics_jsonl(tiny_cfg):
    cfg = tiny_cfg("train.max_steps=5", "log.wandb=true", "log.wandb_mode=offline", "log.wandb_project=slw-test")
    train(cfg, progress=False)
    run, history = offline_run(cfg.run.dir)
    assert run["project"] == "slw-test" and run["name"] == run["group"] == "run"
    assert (
        run["config"]["curriculum"]["length"] == "slw" and run["config"]["train"]["max_steps"] == 5
    )  # the resolved config
    rows = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r]
    by_step = {h["_step"]: h for h in history}
    assert sorted(s for s, h in by_step.items() if "loss" in h) == [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    for r in rows:
        for key in ("loss", "loss_ratio", "lr", "tokens", "seqlen", "grad_norm", "adam/var_max"):
            assert by_step[r["step"]][key] == r[key], key
    evals = [r for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "val/loss" in r]
    assert evals and all(by_step[e["step"]]["val/ppl"] == e["val/ppl"] for e in evals)


@pytest.mark.slow
def test_a_resumed_session_is_a_second_wandb_run_in_the_group(tiny_cfg):
    class Crash(Exception):
        pass

    def crash_at_step_6(clock):
        if clock.step == 6:
            raise Crash

    cfg = tiny_cfg("train.max_steps=8", "checkpoint.every_steps=4", "log.wandb=true", "log.wandb_mode=offline")
    with pytest.raises(Crash):
        train(cfg, progress=False, on_step=crash_at_step_6)  # steps 5 and 6 are logged, then trained again
    train(cfg, resume=True, progress=False)
    files = sorted((Path(cfg.run.dir) / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda f: f.stat().st_mtime)
    (first, first_history), (second, second_history) = (offline_run(None, f) for f in files)
    assert (first["group"], first["job_type"]) == ("run", "train") and (second["group"], second["job_type"]) == (
        "run",
        "resume",
    )
    loss = lambda history: {h["_step"]: h["loss"] for h in history if "loss" in h}  # noqa: E731
    assert sorted(loss(first_history)) == [1, 2, 3, 4, 5, 6] and sorted(loss(second_history)) == [5, 6, 7, 8]
    rows = {r["step"]: r["loss"] for r in read_metrics(Path(cfg.run.dir) / "metrics.jsonl") if "loss" in r}
    assert loss(first_history) | loss(second_history) == rows  # the resumed session's values are metrics.jsonl's


def test_wandb_mode_from_the_environment_and_rank_0_only(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # log.wandb_mode unset: wandb's own variable decides
    rows = [{"step": 1, "loss": 3.5, "skipped": "non-finite"}, {"step": 2, "loss": 3.25, "clipped": True}]
    other = tmp_path / "rank1"
    other.mkdir()
    MetricsLog(other, tensorboard=False, enabled=False, wandb=WandbSettings(name="x")).close()  # another rank
    assert not (other / "wandb").exists()

    log = MetricsLog(tmp_path, tensorboard=False, wandb=WandbSettings(project="p", name="named"))
    for row in rows:
        log.write(row)
    log.close()
    run, history = offline_run(tmp_path)
    assert run["name"] == "named"
    assert [(h["_step"], h["loss"]) for h in history] == [(1, 3.5), (2, 3.25)]
    assert "skipped" not in history[0] and history[1]["clipped"] is True  # strings are not scalars


def test_wandb_missing_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^log\.wandb: the wandb package is missing; pip install 'seqwarm\[wandb\]'"):
        LogConfig(wandb=True)
    assert LogConfig(wandb_mode="offline").wandb is False  # settings alone need no package


def test_bad_wandb_settings_name_the_field():
    with pytest.raises(ConfigError, match=r"^log\.wandb_mode: 'local' is not one of online, offline, disabled"):
        load_config("tiny-slw", ["log.wandb_mode=local"])
    with pytest.raises(ConfigError, match=r"^log\.wandb_project: must not be empty"):
        LogConfig(wandb_project=" ")
