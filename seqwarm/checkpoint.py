"""Checkpoints: `checkpoints/step-00001000/`, written atomically, no pickles.

A checkpoint holds everything a run needs to continue exactly: weights (model.safetensors),
Adam's moments (optimizer.safetensors + optimizer.json), the RNG states (rng.safetensors) and the
JSON state of the clock, the data position, the loss-ratio tracker and the loss scaler
(state.json). It is written into a temporary directory and renamed into place, so a crash during a
save leaves the previous checkpoint as the latest, never a half-written one.

manifest.json, written last, records every other file's size and sha256; `verify_checkpoint`
checks them, so a flipped byte or an edited state.json is found before a resume trusts it (a
checkpoint of seqwarm 0.2 and earlier has no manifest: what can be checked without one is).
A temporary directory left by a save that was killed (`.step-*.tmp-*`), the renamed old copy of a
re-saved step (`.step-*.old-*`), an old checkpoint being removed (`.step-*.del`) and an empty
`step-*` directory are not checkpoints: `clean_checkpoints` removes them at start-up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from seqwarm import __version__
from seqwarm.errors import SeqwarmError, first_line
from seqwarm.files import atomic_directory, file_sha256, fsync_path

CHECKPOINT_RE = re.compile(r"^step-(\d{8,})$")
LEFTOVER_RE = re.compile(r"^\.step-\d{8,}\.(tmp-|old-|del)")  # what an interrupted save or removal leaves
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "seqwarm-manifest-v1"
STATE_FORMAT = "seqwarm-checkpoint-v1"
"""The layout of a checkpoint's state.json; a checkpoint with another one is refused, not misread."""
FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json", "rng.safetensors", "state.json")
WEIGHTS = ("model.safetensors", "state.json")
"""What `eval` and `export` read of a checkpoint, and so all they verify: a damaged optimizer state
does not change the model they score or convert, and must not send them to an older one."""
T = TypeVar("T")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints, oldest first (temporary directories of interrupted saves and empty `step-*` ones are ignored).

    Listed is not verified: a resume checks each with `verify_checkpoint` before trusting it.
    """
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir() and any(p.iterdir())  # an empty one is debris
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


class CheckpointError(SeqwarmError):
    """A checkpoint failed verification (its manifest, its files, non-finite values): a resume tries the one before."""


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
        # The manifest's format, named in state.json too: a checkpoint whose manifest was deleted
        # does not pass for one of seqwarm 0.2 (which wrote none).
        (tmp / "state.json").write_text(json.dumps({**ck.state, "manifest": MANIFEST_FORMAT}, indent=2))
        write_manifest(tmp)  # last: it vouches for the files above
    for old in list_checkpoints(run_dir)[:-keep_last]:
        remove_checkpoint(old)
    return final


def write_manifest(path: Path) -> None:
    """manifest.json of a checkpoint directory: each file's size and sha256 (inside `atomic_directory`)."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(Path(path).iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (Path(path) / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1) + "\n")


def verify_checkpoint(path: Path, only: Sequence[str] | None = None) -> str | None:
    """What is wrong with a checkpoint's files, in a few words, or None when they are as written.

    With a manifest: every file it lists has its size and sha256 (no file missing or changed).
    Without one (seqwarm 0.2 and earlier), only that the files exist and are not empty; the loader
    then catches a truncated safetensors file or a JSON that does not parse. `only`: check just
    these files (`WEIGHTS`: what eval and export read); by default all of a resume's.
    """
    path = Path(path)
    manifest = path / MANIFEST
    wanted = FILES if only is None else tuple(only)
    if not manifest.exists():
        missing = [f for f in wanted if not (path / f).is_file() or not (path / f).stat().st_size]
        if missing:
            return f"{missing[0]} missing or empty (no manifest)"
        try:
            wrote_one = "manifest" in json.loads((path / "state.json").read_text())
        except (OSError, ValueError, TypeError):
            return "state.json: unreadable (no manifest)"
        return f"{MANIFEST} missing (state.json says one was written)" if wrote_one else None
    try:
        doc = json.loads(manifest.read_text())
        listed = doc["files"]
        if doc["format"] != MANIFEST_FORMAT or not isinstance(listed, dict):
            return f"{MANIFEST}: not a manifest of format {MANIFEST_FORMAT!r}"
        for name, want in listed.items():
            if only is not None and name not in only:
                continue
            file = path / name
            if not file.is_file():
                return f"{name} missing"
            if file.stat().st_size != want["size"]:
                return f"{name}: {file.stat().st_size} bytes, the manifest says {want['size']}"
            if file_sha256(file) != want["sha256"]:
                return f"{name}: sha256 differs from the manifest (the file changed after the save)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST}: unreadable"
    absent = [f for f in wanted if f not in listed]
    return f"{absent[0]}: not in the manifest" if absent else None


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint so that no kill can leave a half-deleted one that looks like a checkpoint.

    It is renamed out of the `step-*` namespace first (one atomic rename), then deleted; a kill
    during the deletion leaves a `.step-*.del` directory, which `clean_checkpoints` removes.
    """
    path = Path(path)
    doomed = path.with_name(f".{path.name}.del")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_checkpoints(run_dir: Path) -> list[str]:
    """Remove what interrupted saves and removals left in checkpoints/, and empty `step-*` directories.

    Call it holding the run directory's lock (no save can be in progress). An old copy whose step
    has no checkpoint any more (a kill between the two renames of a re-save) is put back instead.
    Returns the names removed or restored, for the log.
    """
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    done = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and LEFTOVER_RE.match(p.name):
            step = p.name[1:].split(".", 1)[0]  # ".step-00000010.old-abc" -> "step-00000010"
            kept = p / step
            if ".old-" in p.name and kept.is_dir() and not (root / step).exists():
                os.replace(kept, root / step)
                done.append(f"{p.name} (restored as {step})")
            else:
                done.append(p.name)
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir() and CHECKPOINT_RE.match(p.name) and not any(p.iterdir()):
            p.rmdir()
            done.append(f"{p.name} (empty)")
    return done


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that failed verification to `step-XXXXXXXX.failed` (kept for a look, no longer a checkpoint)."""
    path = Path(path)
    target = path.with_name(f"{path.name}.failed")
    if target.exists():
        shutil.rmtree(target)
    os.replace(path, target)
    return target


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


def read_checkpoint(path: Path, *, verify: bool = False) -> Checkpoint:
    """A checkpoint of this format, read back; SeqwarmError naming the file when it is of another one.

    `verify`: first check the files against the manifest, and afterwards that every weight and Adam
    moment is finite (seqwarm never saves other ones); CheckpointError saying what failed.
    """
    path = Path(path)
    if verify and (problem := verify_checkpoint(path)):
        raise CheckpointError(problem)
    try:
        ck = load_checkpoint(path)
    except FileNotFoundError as e:
        raise CheckpointError(f"{Path(e.filename).name} missing") from None
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise CheckpointError(f"unreadable ({first_line(e)})") from None
    found = ck.state.get("format", STATE_FORMAT)  # seqwarm 0.1.0 wrote this layout without naming it
    if found != STATE_FORMAT:
        raise SeqwarmError(
            f"{path / 'state.json'}: checkpoint format {found!r} (written by seqwarm {ck.state.get('seqwarm', '?')}); "
            f"this seqwarm {__version__} reads {STATE_FORMAT!r}"
        )
    if verify:
        _check_finite([*ck.model.items(), *((f"optimizer {k}", v) for k, v in _optimizer_tensors(ck.optimizer))])
    return ck


def verify_weights(path: Path) -> None:
    """CheckpointError unless what `eval` and `export` read is as saved: `WEIGHTS` against the manifest,
    and every weight finite (read one tensor at a time: memory does not grow with the model)."""
    path = Path(path)
    if problem := verify_checkpoint(path, WEIGHTS):
        raise CheckpointError(problem)
    try:
        with safe_open(path / "model.safetensors", framework="pt") as f:
            _check_finite((name, f.get_tensor(name)) for name in f.keys())
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"model.safetensors: unreadable ({first_line(e)})") from None


def _check_finite(tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """seqwarm never saves a non-finite weight or Adam moment: one is damage, or a checkpoint from elsewhere."""
    for name, value in tensors:
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{name} holds non-finite values")


@dataclass(frozen=True)
class Verified(Generic[T]):
    """The checkpoint `newest_verified` chose, what its `read` returned, and the newer ones that failed."""

    path: Path
    value: T
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (checkpoint, why), newest first


def newest_verified(run_dir: Path, read: Callable[[Path], T], *, doing: str) -> Verified[T] | None:
    """The newest checkpoint of `run_dir` that `read` accepts; None when the run has no checkpoint.

    The one place that chooses a checkpoint to trust (`--resume`, `eval`, `export`): `read(path)`
    verifies and loads a checkpoint, raising CheckpointError when it fails; the one before is then
    tried. A fallback is said on stderr in one line, what failed and why, then `doing` (e.g.
    "resuming from") with the checkpoint chosen. SeqwarmError, listing why each failed, when none
    passes. Nothing is renamed here: a reader (eval, export) holds no lock on the run and must not
    change it; the resume sets the failed ones aside itself (`set_aside`).
    """
    found = list_checkpoints(run_dir)
    failed = []
    for path in reversed(found):
        try:
            value = read(path)
        except CheckpointError as e:
            failed.append((path, str(e)))
            continue
        if failed:
            why = "; ".join(f"{p.name}: {reason}" for p, reason in failed)
            print(
                f"seqwarm: {why}; {doing} {path.name}, the newest checkpoint that passes verification", file=sys.stderr
            )
        return Verified(path, value, failed)
    if not found:
        return None
    raise SeqwarmError(
        f"{run_dir}: no checkpoint passes verification ({'; '.join(f'{p.name}: {why}' for p, why in failed)})"
    )


def _optimizer_tensors(sd: dict) -> Iterator[tuple[str, torch.Tensor]]:
    for pid, entries in sd.get("state", {}).items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                yield f"{pid}.{name}", value
