"""The stability toolkit wired into the loop (issue 25, docs/STABILITY.md): what the trainer asks, in small calls.

- `step_inputs`: the model inputs of a step (`z_loss`, `diagnostics` on instrumented steps).
- `decide`: after the step's one host sync, before the optimizer step, whether to skip the update (skip-step)
  and the norm to clip the gradients to (`train.grad_clip_mode: zscore`).
- `instrument_row`: per-group Adam variance, the collapse and plateau events (`Events`) of an instrumented step.
- `summary`: the stability record summary.json adds.

Everything is off unless its switch is on; with all off, the trainer does exactly what it did before.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from seqwarm import distributed, instruments
from seqwarm.data.format import TokenData
from seqwarm.metrics import train_rows


def instrumented(tr, step: int) -> bool:
    """Whether step `step` (1-based, the row's `step`) logs the instruments (`monitor.instruments`, `monitor.every`)."""
    m = tr.cfg.monitor
    return m.instruments and step % m.every == 0


def step_inputs(tr, step: int) -> dict | None:
    """The model's keyword inputs for step `step` (None when there are none: the forward is called as before)."""
    inputs = {}
    if tr.cfg.train.z_loss > 0:
        # PaLM's z-loss inside the chunked output layer; the model returns it as `aux/z_loss`, which the trainer
        # adds to the gradient and logs, never to `loss` (the channel's rule).
        inputs["z_loss"] = tr.cfg.train.z_loss
    if instrumented(tr, step):
        inputs["diagnostics"] = True
    return inputs or None


def decide(tr, loss: float, grad_norm: float) -> tuple[str | None, float | None]:
    """(reason to skip the update or None, the max norm to clip the gradients to or None) for a finite step.

    Both read plain floats the step already brought to the host in its single sync, so neither adds one.
    Skip-step first: a skipped update is not clipped and its norm does not enter ZClip's EMA (the reference
    records the norms of the steps taken). ZClip's `step` records the raw norm, as the paper's Algorithm 1.
    """
    if tr.skip_guard is not None and (reason := tr.skip_guard.check(loss, grad_norm)) is not None:
        return reason, None
    if tr.zclip is not None:
        return None, tr.zclip.step(grad_norm)
    return None, None


def clip_to(tr, max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale the gradients so that their global norm is `max_norm` (`total_norm`, still on the device, is theirs)."""
    params = [p for p in tr.model.parameters() if p.grad is not None]
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)


# --- the instruments' events ---------------------------------------------------------------------


def attention_view(row: dict) -> dict:
    """A row's attention diagnostics under the names `instruments.collapse_events` reads.

    The model logs `diag/attn/<layer>/logit_max` (max-reduced) and `diag/attn/<layer>/entropy` (mean); the
    events read `attn/max_logit/<layer>` and `attn/entropy/<layer>`.
    """
    out = {"step": row.get("step")}
    for key, value in row.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[:2] == ["diag", "attn"] and parts[3] in ("logit_max", "entropy"):
            what = "max_logit" if parts[3] == "logit_max" else "entropy"
            out[instruments.attention_key(int(parts[2]), what)] = value
    return out


class Events:
    """The live state of the two derived events, for metrics.jsonl and the progress bar; in the checkpoint.

    - attention collapse: the layers past both thresholds at the last instrumented step
      (`instruments.COLLAPSE_ENTROPY`, `COLLAPSE_LOGIT`); a row gets `event/collapse` (the layers that
      collapsed there) and `event/recovered` (those that no longer are).
    - plateau: until the training loss is first at or below the unigram loss minus `instruments.PLATEAU_MARGIN`,
      the run is on the plateau; the row where it escapes gets `event/plateau_escape`. No unigram loss
      (a corpus prepared before seqwarm recorded it and without a val split): no plateau event.
    """

    def __init__(self, unigram_loss: float | None):
        self.unigram_loss = unigram_loss
        self.collapsed: list[int] = []
        self.escape_step: int | None = None

    def observe(self, row: dict) -> dict:
        out = {}
        view = attention_view(row)
        if len(view) > 1:  # an instrumented step
            now = instruments.collapsed_layers(view)
            if started := sorted(set(now) - set(self.collapsed)):
                out["event/collapse"] = started
            if ended := sorted(set(self.collapsed) - set(now)):
                out["event/recovered"] = ended
            self.collapsed = now
        loss = row.get("loss")
        if self.unigram_loss is not None and self.escape_step is None and loss is not None and math.isfinite(loss):
            if loss <= self.unigram_loss - instruments.PLATEAU_MARGIN:
                self.escape_step = row["step"]
                out["event/plateau_escape"] = row["step"]
        return out

    def postfix(self) -> dict:
        """What the progress bar shows: the collapsed layers, and `plateau` while the run is on it."""
        out = {}
        if self.collapsed:
            out["collapse"] = ",".join(f"L{x}" for x in self.collapsed)
        if self.unigram_loss is not None and self.escape_step is None:
            out["plateau"] = "on"
        return out

    def state_dict(self) -> dict:
        return {"collapsed": list(self.collapsed), "escape_step": self.escape_step}

    def load_state_dict(self, state: dict) -> None:
        self.collapsed = [int(x) for x in state["collapsed"]]
        self.escape_step = state["escape_step"]


def unigram_loss(data: TokenData) -> float | None:
    """The corpus's unigram loss for the plateau: meta.json's train split's, recorded by `seqwarm prepare`; for a
    directory prepared before it was recorded, computed once from the val split (smaller, same distribution)."""
    splits = data.meta.get("splits", {})
    for split in ("train", "val"):
        value = splits.get(split, {}).get("unigram_loss")
        if value is not None:
            return float(value)
    val = data.splits.get("val")
    if val is None or len(val) == 0:
        return None
    return instruments.unigram_entropy(np.asarray(val))


def instrument_row(tr) -> dict:
    """Adam's variance max and l1 norm per parameter group (`adam/<group>/var_max`, `var_l1`), one read-back."""
    stats = instruments.adam_group_statistics(
        (name, distributed.local(v)) for name, v in instruments.named_adam_variances(tr.model, tr.optimizer)
    )
    if not stats:
        return {}
    keys = sorted(stats)
    values = torch.stack([stats[k] for k in keys])
    if distributed.is_sharded(tr.model):  # each rank holds a shard: l1 norms add up, maxima take the max
        l1 = torch.tensor([k.endswith("var_l1") for k in keys], device=values.device)
        values = torch.where(l1, distributed.all_reduce(values), distributed.all_reduce(values, op="max"))
    return dict(zip(keys, values.tolist()))


# --- summary.json ---------------------------------------------------------------------------------


def summary(tr, rows: list[dict]) -> dict:
    """The toolkit's record in summary.json: what each switch did, and the events (only the switches that are on)."""
    out = {}
    if tr.skip_guard is not None:
        out["spike_skips"] = tr.skip_guard.skipped
    if tr.zclip is not None:
        out["zclip_clipped"] = tr.zclip.clipped
    if tr.rewinder is not None:
        out["rewinds"] = list(tr.rewinder.records)
    if tr.events is not None:
        train = train_rows(rows)
        out["collapse_events"] = instruments.collapse_events([attention_view(r) for r in train])
        out["unigram_loss"] = tr.events.unigram_loss
        if tr.events.unigram_loss is not None:
            out["plateau"] = instruments.plateau(train, tr.events.unigram_loss)
    return out
