"""Checkpoints: `checkpoints/step-00001000/`, written atomically, no pickles.

A checkpoint holds everything a run needs to continue exactly: weights (model.safetensors),
Adam's moments (optimizer.safetensors + optimizer.json), the RNG states (rng.safetensors) and the
JSON state of the clock, the data position, the loss-ratio tracker and the loss scaler
(state.json). It is written into a temporary directory and renamed into place, so a crash during a
save leaves the previous checkpoint as the latest, never a half-written one.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from seqwarm.files import atomic_directory

CHECKPOINT_RE = re.compile(r"^step-(\d{8,})$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories of interrupted saves are ignored)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


@dataclass
class Checkpoint:
    """A checkpoint read back: tensors on CPU, in the single-process layout."""

    model: dict[str, torch.Tensor]
    optimizer: dict
    rng: dict[str, torch.Tensor]
    state: dict  # state.json: clock, loader, loss ratio, guard, scaler, time, model shape


def save_checkpoint(run_dir: Path, step: int, ck: Checkpoint, *, keep_last: int) -> Path:
    """Write `step-XXXXXXXX/` atomically, then delete all but the newest `keep_last` checkpoints.

    The state dicts are in the single-process layout (`seqwarm.distributed.full_*_state`), so a
    checkpoint does not depend on how many processes wrote it. Re-saving a step (after a resume)
    replaces the old directory in one rename.
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    with atomic_directory(final, mode=root.stat().st_mode & 0o777) as tmp:
        save_file(_cpu(ck.model), tmp / "model.safetensors")
        opt_tensors, opt_meta = _flatten_optimizer(ck.optimizer)
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        save_file(_cpu(ck.rng), tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps(ck.state, indent=2))
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    meta = json.loads((path / "optimizer.json").read_text())
    return Checkpoint(
        model=load_file(path / "model.safetensors"),
        optimizer=_unflatten_optimizer(load_file(path / "optimizer.safetensors"), meta),
        rng=load_file(path / "rng.safetensors"),
        state=json.loads((path / "state.json").read_text()),
    )


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / "model.safetensors")


def rng_state(rank: int = 0) -> dict[str, torch.Tensor]:
    """This process's RNG states (dropout), keyed by rank so that several processes' fit in one file."""
    prefix = "" if rank == 0 else f"rank{rank}."
    states = {f"{prefix}torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states[f"{prefix}torch_cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_state(states: dict[str, torch.Tensor], rank: int = 0) -> bool:
    """Restore this rank's RNG states; False when the checkpoint has none for this rank (fewer processes wrote it)."""
    prefix = "" if rank == 0 else f"rank{rank}."
    if f"{prefix}torch_cpu" not in states:
        return False
    torch.set_rng_state(states[f"{prefix}torch_cpu"])
    if f"{prefix}torch_cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[f"{prefix}torch_cuda"])
    return True


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch's optimizer state dict -> flat tensors (safetensors) + JSON (groups and scalars)."""
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}
