"""A saved model: the weights and shape read back from a run directory or one of its checkpoints.

What `seqwarm eval` evaluates and `seqwarm export` converts, without the trainer: only
`model.safetensors` and `state.json` of a checkpoint are read, the weights and the model shape the
trainer recorded next to them (`state["model"]`, a `GPTConfig`), plus the clock for the
step and token count that results are labelled with. The run's `config.yaml` (beside
`checkpoints/`) is read only when a task needs the run's data (`val`/`test`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from seqwarm.checkpoint import CHECKPOINT_RE, CheckpointError, load_weights, newest_verified, verify_weights
from seqwarm.config import Config, load_config
from seqwarm.errors import SeqwarmError, first_line
from seqwarm.layers import DecoderLM
from seqwarm.model import GPTConfig, build_model


@dataclass(frozen=True)
class SavedModel:
    """A checkpoint's model, its step and tokens; the weights are loaded only by `model()`."""

    checkpoint: Path  # checkpoints/step-XXXXXXXX/
    run_dir: Path | None  # the run directory the checkpoint belongs to, when it is inside one
    gpt: GPTConfig
    step: int
    tokens: int

    def model(self, device: torch.device | str = "cpu") -> DecoderLM:
        """The model (either family) with the checkpoint's weights, in eval mode (no dropout)."""
        model = build_model(self.gpt)
        try:
            model.load_state_dict(load_weights(self.checkpoint))
        except (OSError, SafetensorError, RuntimeError) as e:
            raise SeqwarmError(
                f"{self.checkpoint / 'model.safetensors'}: does not hold the model state.json describes ({first_line(e)})"
            ) from None
        return model.to(device).eval()

    def config(self) -> Config | None:
        """The run's resolved config (config.yaml), or None for a checkpoint outside a run directory."""
        if self.run_dir is None or not (self.run_dir / "config.yaml").exists():
            return None
        return load_config(self.run_dir / "config.yaml")

    def describe(self) -> dict:
        """What results are labelled with (eval JSON, export provenance)."""
        return {"path": str(self.checkpoint), "step": self.step, "tokens": self.tokens}


def open_saved(path: str | Path, *, doing: str = "using") -> SavedModel:
    """A run directory (its newest checkpoint that passes verification) or a checkpoint directory
    (verified: it was named, so there is nothing to fall back to); SeqwarmError for anything else.

    Only what eval and export read is verified (`seqwarm.checkpoint.verify_weights`). A run's damaged
    newest checkpoint is passed over for the one before, as `--resume` does, and said in one line on
    stderr ending with `doing` ("evaluating", "exporting") and the checkpoint chosen; it is not set
    aside (a reader does not change a run another process may be writing).
    """
    path = Path(path)
    if not path.is_dir():
        raise SeqwarmError(f"{path}: no such run or checkpoint directory")
    if (path / "state.json").exists() and (path / "model.safetensors").exists():
        checkpoint = path
        try:
            verify_weights(checkpoint)
        except CheckpointError as e:
            raise SeqwarmError(f"{checkpoint}: {e}; give the run directory or another checkpoint") from None
    elif (path / "checkpoints").is_dir() or (path / "config.yaml").exists():
        chosen = newest_verified(path, verify_weights, doing=doing)
        if chosen is None:
            raise SeqwarmError(f"{path}: the run has no checkpoint yet (checkpoints/step-XXXXXXXX/)")
        checkpoint = chosen.path
    elif (path / "config.json").exists():
        raise SeqwarmError(
            f"{path}: a Hugging Face model directory, not a seqwarm run; convert it with `seqwarm import-hf {path} --out RUN_DIR`"
        )
    else:
        raise SeqwarmError(
            f"{path}: not a run directory (no checkpoints/) or a checkpoint directory (no model.safetensors + state.json)"
        )
    state_file = checkpoint / "state.json"
    try:
        state = json.loads(state_file.read_text())
        gpt = GPTConfig(**state["model"])
        clock = state.get("clock", {})
    except (OSError, ValueError, KeyError, TypeError) as e:  # ValueError: JSON, or GPTConfig's checks
        raise SeqwarmError(f"{state_file}: no readable model shape (field 'model': {first_line(e)})") from None
    parent = checkpoint.parent
    run_dir = parent.parent if parent.name == "checkpoints" and CHECKPOINT_RE.match(checkpoint.name) else None
    return SavedModel(checkpoint, run_dir, gpt, int(clock.get("step", 0)), int(clock.get("tokens", 0)))
