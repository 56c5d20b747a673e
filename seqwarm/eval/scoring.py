"""Scoring a model on token tensors: the negative log-likelihoods behind every zero-shot metric.

Each scorer takes a model of either family (`hidden`, `output_weight()`, `cfg.vocab_size` and
`cfg.max_seqlen`) and returns sums, so a caller divides once: a split in full-length sequences
(`split_nll`), one text in Megatron-LM's overlapping sliding windows (`window_nll`), and
LAMBADA's strict greedy last-word hits (`lambada_hits`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from seqwarm.data.format import SequenceIndex
from seqwarm.loss import IGNORE_INDEX
from seqwarm.model import GPT
from seqwarm.tokenizer import EOT_ID


@torch.inference_mode()
def score_targets(
    model: GPT, inputs: torch.Tensor, targets: torch.Tensor, *, greedy: bool = False, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Negative log-likelihood of every target that is not IGNORE_INDEX (row-major), and with
    `greedy` whether the argmax prediction there is the target.

    inputs, targets (B, T). Only the scored positions go through the output layer, a chunk of them
    at a time: a window of a sliding evaluation scores a few of its positions, a LAMBADA item only
    its target word, and the full logits (B, T, 50257) of a batch would dwarf the model.
    """
    hidden = model.hidden(inputs)  # (B, T, C)
    keep = targets != IGNORE_INDEX
    h, y = hidden[keep], targets[keep]  # (n, C), (n,)
    weight = model.output_weight()[: model.cfg.vocab_size]  # padding rows never predicted
    nll, hit = [torch.zeros(0, device=h.device)], [torch.zeros(0, dtype=torch.bool, device=h.device)]
    for start in range(0, len(y), chunk):
        logits = (h[start : start + chunk] @ weight.T).float()  # (c, V)
        target = y[start : start + chunk]
        nll.append(F.cross_entropy(logits, target, reduction="none"))
        if greedy:
            hit.append(logits.argmax(dim=-1) == target)
    return torch.cat(nll), torch.cat(hit) if greedy else None


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, scored) of each window over a text of n_tokens tokens.

    A window feeds tokens[start:end] and predicts tokens[start + 1 : end + 1]; it scores only its
    last `scored` predictions. As in Megatron-LM's `_LMDataset`, the first window scores all its
    tokens and each later one moves `stride` tokens on and scores the new ones, so every token
    after the first is scored exactly once (the first has nothing to be predicted from). Unlike
    Megatron, whose last window starts on the stride grid and is padded, the last window here ends
    at the last token, which gives the text's final tokens the full context.
    """
    last = n_tokens - 1  # index of the last token, the last prediction target
    if last < 1:
        return []
    end = min(window, last)
    windows = [(0, end, end)]
    while end < last:
        new_end = min(end + stride, last)
        windows.append((new_end - window, new_end, new_end - end))
        end = new_end
    return windows


def window_nll(
    model: GPT, tokens: np.ndarray, *, stride: int, batch_size: int, device: torch.device, progress: bool, desc: str
) -> tuple[float, int]:
    """Total NLL and number of scored tokens of one text under overlapping sliding windows."""
    window = model.cfg.max_seqlen
    windows = sliding_windows(len(tokens), window, stride)
    total, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        group = windows[i : i + batch_size]
        # All windows have the model's full length, except a lone first one of a short text.
        inputs = torch.from_numpy(np.stack([tokens[s:e] for s, e, _ in group]).astype(np.int64))
        targets = torch.from_numpy(np.stack([tokens[s + 1 : e + 1] for s, e, _ in group]).astype(np.int64))
        for row, (s, e, scored) in enumerate(group):
            targets[row, : e - s - scored] = IGNORE_INDEX  # already scored by an earlier window
        nll, _ = score_targets(model, inputs.to(device), targets.to(device))
        total += nll.double().sum().item()
        count += len(nll)
    return total, count


def split_nll(
    model: GPT, index: SequenceIndex, *, batch_size: int, device: torch.device, progress: bool, desc: str
) -> tuple[float, int]:
    """Total NLL and token count over all full-length sequences of a split (the training validation's layout)."""
    total, count = 0.0, 0
    for i in tqdm(range(0, len(index), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        rows = index.rows(range(i, min(i + batch_size, len(index)))).to(device)
        nll, _ = score_targets(model, rows[:, :-1], rows[:, 1:])
        total += nll.double().sum().item()
        count += len(nll)
    return total, count


def lambada_hits(
    model: GPT,
    items: Sequence[tuple[list[int], list[int]]],
    *,
    batch_size: int,
    device: torch.device,
    progress: bool,
    desc: str,
    pad_id: int = EOT_ID,
) -> tuple[list[bool], float, int]:
    """Strict greedy hits of (context, target) token lists, the target words' total NLL and token count.

    An item counts only when the argmax at every target position is that target token, as in
    Megatron-LM's LAMBADA evaluation. A context longer than the model's window keeps its last
    tokens. Items are batched by length and padded on the right, which a causal model never sees.
    """
    window = model.cfg.max_seqlen
    seqs = []
    for context, target in items:
        context = context[max(0, len(context) + len(target) - 1 - window) :]
        seqs.append((context + target, len(target)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    hits = [False] * len(seqs)
    total, count = 0.0, 0
    for i in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        group = order[i : i + batch_size]
        width = max(len(seqs[j][0]) for j in group) - 1
        inputs = torch.full((len(group), width), pad_id, dtype=torch.long)  # the tokenizer's <|endoftext|>
        targets = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
        for row, j in enumerate(group):
            ids, n_target = seqs[j]
            n = len(ids) - 1
            inputs[row, :n] = torch.tensor(ids[:-1])
            targets[row, n - n_target : n] = torch.tensor(ids[-n_target:])
        nll, hit = score_targets(model, inputs.to(device), targets.to(device), greedy=True)
        per_row = (targets != IGNORE_INDEX).sum(dim=1).tolist()  # scored targets come row-major
        for j, row_hits in zip(group, hit.cpu().split(per_row)):
            hits[j] = bool(row_hits.all())
        total += nll.double().sum().item()
        count += len(nll)
    return hits, total, count


def safe_exp(x: float) -> float:
    """exp(x), or inf where it would overflow: the perplexity of an untrained model can be huge."""
    return math.exp(x) if x < 709 else math.inf
