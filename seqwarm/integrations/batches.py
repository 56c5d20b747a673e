"""Hugging Face-style dict batches: cut to the step's length (`truncate_dict`), their targets counted
(`dict_target_tokens`), or melted into shorter rows (`curriculum.packing: melt`) with every target kept.

In Hugging Face's convention `labels` are aligned with `input_ids` and the model shifts them: position i predicts
`labels[i + 1]`. Reshaping a row of W positions into k rows of L (what OLMo-core's `melt_batch` and Composer's
`truncate=False` do) would lose the k - 1 targets across the cuts, since each short row is shifted on its own.
`melt_dict` keeps them: it writes `shift_labels` (already shifted, which transformers' causal-LM loss takes as they
are), so piece i of a row predicts `labels[i*L + 1 : (i+1)*L + 1]`, the same targets as the full row: all W - 1
of a row of W positions, or seqlen_end of a row of seqlen_end + 1 (seqwarm's rows). `dict_target_tokens` counts them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from seqwarm.errors import DataError
from seqwarm.loss import IGNORE_INDEX


def melt_dict(batch: Mapping, seqlen: int, split: int) -> Mapping:
    """Each row's first `seqlen x split` positions as `split` rows of `seqlen`: tensors (B, W, ...) reshaped,
    per-row tensors (B,) repeated, `position_ids` restarted at 0 in every piece (each is a new sequence, as in
    OLMo-core and Composer), and `shift_labels` added from `labels` (or `input_ids` when there are none) so that
    no target is lost at a cut. The same type of mapping back (a shallow copy)."""
    ids = batch.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise DataError("batch: a dict batch needs input_ids as a (B, L) tensor; melt after the collator")
    rows, width = ids.shape
    span = seqlen * split
    if width < span:
        raise DataError(
            f"batch: melting into {split} rows of {seqlen} needs rows of at least {span} positions, got {width}"
        )
    out = copy.copy(batch)
    if batch.get("shift_labels") is None:
        labels = batch.get("labels", ids)
        # The target of position j is labels[j + 1]; the row's last position has none (as at full length).
        nxt = torch.full((rows, span), IGNORE_INDEX, dtype=labels.dtype, device=labels.device)
        avail = min(span, width - 1)
        nxt[:, :avail] = labels[:, 1 : avail + 1]
        out["shift_labels"] = nxt
    for key, value in list(out.items()):
        if not isinstance(value, torch.Tensor):
            continue
        if key == "position_ids":
            out[key] = torch.arange(seqlen, device=value.device).expand(rows * split, seqlen)
        elif value.dim() >= 2 and value.shape[0] == rows and value.shape[1] in (width, span):
            out[key] = value[:, :span].reshape(rows * split, seqlen, *value.shape[2:])
        elif value.dim() == 1 and value.shape[0] == rows:
            out[key] = value.repeat_interleave(split)
        elif value.dim() >= 2 and value.shape[0] == 1 and value.shape[1] == width:
            raise DataError(f"batch: {key} of shape {tuple(value.shape)} is shared by all rows; it cannot be melted")
    return out


def truncate_dict(batch: Mapping, seqlen: int) -> Mapping:
    """Every tensor of shape (B, L, ...) or (1, L, ...), L = input_ids' length, cut to its first `seqlen`
    positions (at most L); other values unchanged. The same type of mapping back (a shallow copy)."""
    ids = batch.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise DataError("batch: a dict batch needs input_ids as a (B, L) tensor; truncate after the collator")
    rows, width = ids.shape
    out = copy.copy(batch)
    for key, value in batch.items():
        if (
            isinstance(value, torch.Tensor)
            and value.dim() >= 2
            and value.shape[1] == width
            and value.shape[0] in (rows, 1)
        ):
            out[key] = value[:, :seqlen]
    return out


def dict_target_tokens(batch: Mapping) -> torch.Tensor | int:
    """The targets a causal LM trains on in a dict batch (Hugging Face's count, as its Trainer makes it):
    `shift_labels != -100`, else `labels[:, 1:] != -100`, else the set `attention_mask[:, 1:]` positions,
    else every position after the first."""
    if batch.get("shift_labels") is not None:
        return (batch["shift_labels"] != IGNORE_INDEX).sum()
    if batch.get("labels") is not None:
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    if batch.get("attention_mask") is not None:
        return (batch["attention_mask"][:, 1:] != 0).sum()
    rows, width = batch["input_ids"].shape
    return rows * max(width - 1, 0)
