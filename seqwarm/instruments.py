"""What a failing run is doing: attention logits and entropy, Adam's variance per parameter group, and the
two events derived from them (attention collapse, the unigram plateau).

Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training instabilities", Section
3.1) diagnose a small model trained at a high LR by its attention logits: their max grows without bound
and each head's attention distribution collapses onto one key ("attention entropy collapse", Zhai et al.
2023, "Stabilizing Transformer Training by Preventing Attention Entropy Collapse"), while the loss sits
at the level of a model that ignores context. The paper's own instruments (loss ratio, Adam's variance
over all parameters, seqwarm.monitor) can miss this: a probe for issue 28 saw a run collapse completely
with a loss ratio under 1.06, and the global variance max in the token embedding.

Everything here is a pure function of tensors or of plain numbers (the metric rows), torch only; the
trainer decides when to call it (`monitor.instruments`, `monitor.every`). Tensors come back on the device
so that the caller reads every statistic of a step at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

# --- attention -----------------------------------------------------------------------------------


def attention_key(layer: int, what: str) -> str:
    """The metric name of one layer's attention statistic: `attn/max_logit/3`, `attn/entropy/3`."""
    return f"attn/{what}/{layer}"


@torch.no_grad()
def attention_stats(
    q: torch.Tensor, k: torch.Tensor, *, window: int | None = None, max_elements: int = 1 << 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """(max attention logit, mean normalised attention entropy) of one layer, as 0-d fp32 tensors.

    q, k: (B, H, T, hs), after any QK-norm and rotary embedding, i.e. what SDPA receives. A query i
    attends to keys j <= i (causal) and, with `window`, to j > i - window (the `window` latest keys,
    itself included). The logits are q.k / sqrt(hs), SDPA's default scale.

    - max logit: over the batch, heads and every allowed (query, key) pair.
    - entropy: each query's attention distribution p has entropy -sum p log p, divided by log(n), n the
      number of keys the query may attend: 1 is uniform over those keys, 0 is one-hot. The mean is over
      batch, heads and queries with n >= 2. A query with a single key (the first, always) has entropy
      0 / log 1, undefined: it is left out rather than counted as 1 or 0, either of which would pull short
      sequences (SLW's first steps: 1 query in 8) toward uniform or toward collapse without any
      attention having changed. With T = 1 there is no such query and the entropy is NaN.

    The queries are processed in blocks of at most `max_elements` logits (B x H x rows x T), so the
    memory stays bounded at long context; the result does not depend on the block size.
    """
    B, H, T, hs = q.shape
    if window is not None and window < 1:
        raise ValueError(f"window: at least 1 key, got {window}")
    scale = 1.0 / math.sqrt(hs)
    keys = torch.arange(T, device=q.device)
    rows = max(1, max_elements // max(1, B * H * T))
    top = torch.tensor(float("-inf"), device=q.device)
    entropy_sum = torch.zeros((), device=q.device)
    counted = 0
    kf = k.float()
    for start in range(0, T, rows):
        qi = torch.arange(start, min(start + rows, T), device=q.device)
        allowed = keys[None, :] <= qi[:, None]  # (rows, T): causal
        if window is not None:
            allowed &= keys[None, :] > qi[:, None] - window
        logits = (q[:, :, start : start + len(qi)].float() @ kf.transpose(-2, -1)) * scale  # (B, H, rows, T)
        logits = logits.masked_fill(~allowed, float("-inf"))
        top = torch.maximum(top, logits.amax())
        logp = torch.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp.masked_fill(~allowed, 0.0)).sum(-1)  # masked keys: p = 0, p log p = 0
        n = allowed.sum(-1)  # keys per query
        several = n >= 2
        norm = torch.where(several, n.float().log(), 1.0)
        entropy_sum += (ent / norm * several).sum()  # a product, not a boolean index: no device sync
        # the queries with 2 or more keys, counted on the host (no device sync): every query but the
        # first, unless a window of 1 leaves each query only itself
        counted += (len(qi) - (start == 0)) * B * H if window is None or window >= 2 else 0
    mean = entropy_sum / counted if counted else torch.tensor(float("nan"), device=q.device)
    return top, mean


# --- Adam's variance per parameter group ----------------------------------------------------------

GROUPS = ("embeddings", "attention", "mlp", "norms", "output", "other")

# Name parts that place a parameter in a group, for seqwarm's GPT (wte, wpe, blocks.N.attn.qkv/proj,
# blocks.N.mlp.fc/proj, blocks.N.ln_1/ln_2, ln_f) and the Llama-style names (embed_tokens, q_proj, k_proj,
# v_proj, o_proj, gate_proj/up_proj/down_proj or gate/up/down, input_layernorm, norm, lm_head). Checked
# in this order, so a QK-norm's gain inside attention (attn.q_norm) counts as a norm, and `output` last
# (an `attention.output` module is attention).
_NORM = ("ln", "norm")  # a part that starts with one (ln_1, ln_f, norm) or ends in "norm" (q_norm, input_layernorm)
_PARTS = {
    "embeddings": {"wte", "wpe", "embed_tokens", "tok_embeddings", "embeddings", "embedding", "embed"},
    "attention": {"attn", "self_attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "qkv", "wq", "wk", "wv", "wo"},
    "mlp": {"mlp", "feed_forward", "ffn", "fc", "c_fc", "gate_proj", "up_proj", "down_proj", "gate", "up", "down", "w1", "w2", "w3"},
    "output": {"lm_head", "output"},
}  # fmt: skip


def parameter_group(name: str) -> str:
    """The group of a parameter by its name (`blocks.0.attn.qkv.weight` -> attention); `other` if none.

    Wrappers' prefixes (`module.` of DDP, `_orig_mod.` of torch.compile) are only more name parts.
    """
    parts = name.split(".")[:-1] or name.split(".")  # the module path; a bare name is its own part
    if any(p.startswith(_NORM) or p.endswith("norm") for p in parts):
        return "norms"
    for group, names in _PARTS.items():
        if any(p in names for p in parts):
            return group
    return "other"


def adam_key(group: str, what: str) -> str:
    """The metric name of one group's statistic: `adam/attention/var_max`."""
    return f"adam/{group}/{what}"


@torch.no_grad()
def adam_group_statistics(named_variances: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per parameter group, the l1 norm and the max element of sqrt(v_t), as monitor.adam_statistics does
    over all parameters (the paper's footnote 5), so the groups' `var_l1` add up to the global one.

    `named_variances`: (parameter name, its exp_avg_sq) pairs, e.g. `named_adam_variances(model, opt)`;
    under FSDP pass each rank's local shard and combine ranks as for the global statistics. Returns
    {`adam/<group>/var_l1`: tensor, `adam/<group>/var_max`: tensor} for the groups that have parameters,
    0-d fp32 tensors on the device.
    """
    l1: dict[str, list[torch.Tensor]] = {}
    top: dict[str, list[torch.Tensor]] = {}
    for name, v in named_variances:
        group = parameter_group(name)
        if v.numel() == 0:  # an empty shard; v >= 0, so 0 is neutral for both
            v = torch.zeros(1, device=v.device)
        l1.setdefault(group, []).append(v.sqrt().sum(dtype=torch.float32))
        top.setdefault(group, []).append(v.max().float())
    out = {}
    for group in (g for g in GROUPS if g in l1):
        out[adam_key(group, "var_l1")] = torch.stack(l1[group]).sum()
        out[adam_key(group, "var_max")] = torch.stack(top[group]).max().sqrt()  # sqrt is monotone: once
    return out


def named_adam_variances(model: torch.nn.Module, optimizer: torch.optim.Optimizer):
    """(name, exp_avg_sq) of every parameter that Adam has state for (none before the first step)."""
    for name, p in model.named_parameters():
        state = optimizer.state.get(p)
        if state and "exp_avg_sq" in state:
            yield name, state["exp_avg_sq"]


# --- derived events --------------------------------------------------------------------------------

# Attention collapse: a layer whose mean normalised entropy is under COLLAPSE_ENTROPY *and* whose max
# logit is over COLLAPSE_LOGIT. 0.1 of log n means the average query spreads its attention like a uniform
# distribution over n^0.1 keys (1.6 keys of 128, 2 of 1,024): one key, in effect. A logit gap of 10 gives
# one key e^10 = 22,000 times the weight of a key at logit 0, so with fewer keys than that one key takes
# most of the mass; at initialisation the logits are O(1). Requiring both keeps apart a head that attends
# sharply by design (low entropy at moderate logits, e.g. a previous-token head) and logits that grow
# while still spread (high max, high entropy). Wortsman et al. 2023 (Section 3.1) show the failing
# runs' max attention logits growing by orders of magnitude; issue 28's probe saw the
# proxy's layer 0 pass 10 within 4-8 steps at the LRs that fail. Study 2 calibrates these defaults.
COLLAPSE_ENTROPY = 0.1
COLLAPSE_LOGIT = 10.0


def collapsed_layers(
    row: dict, *, entropy_below: float = COLLAPSE_ENTROPY, logit_above: float = COLLAPSE_LOGIT
) -> list[int]:
    """The layers past both thresholds in one metrics row (its `attn/entropy/L` and `attn/max_logit/L`)."""
    out = []
    for key, entropy in row.items():
        if key.startswith("attn/entropy/"):
            layer = int(key.rsplit("/", 1)[1])
            logit = row.get(attention_key(layer, "max_logit"))
            if logit is not None and entropy is not None and entropy < entropy_below and logit > logit_above:
                out.append(layer)
    return sorted(out)


def collapse_events(rows: Sequence[dict], **thresholds) -> list[dict]:
    """Each episode of attention collapse in a run's rows: {layer, start, end, min_entropy, max_logit}.

    `start` is the step of the first row where the layer is collapsed (`collapsed_layers`), `end` the step
    of the first instrumented row where it no longer is (None: collapsed to the end), and the extremes are
    over the episode's rows. Rows without the layer's instruments (steps between `monitor.every`) neither
    start nor end an episode. Ordered by start, then layer.
    """
    open_: dict[int, dict] = {}
    done = []
    for row in rows:
        measured = {int(k.rsplit("/", 1)[1]) for k in row if k.startswith("attn/entropy/")}
        if not measured:
            continue
        now = set(collapsed_layers(row, **thresholds))
        for layer in sorted(measured):
            event = open_.get(layer)
            if layer in now:
                entropy, logit = row[attention_key(layer, "entropy")], row[attention_key(layer, "max_logit")]
                if event is None:
                    event = open_[layer] = {"layer": layer, "start": row["step"], "end": None,
                                            "min_entropy": entropy, "max_logit": logit}  # fmt: skip
                event["min_entropy"] = min(event["min_entropy"], entropy)
                event["max_logit"] = max(event["max_logit"], logit)
            elif event is not None:
                event["end"] = row["step"]
                done.append(open_.pop(layer))
    done += open_.values()
    return sorted(done, key=lambda e: (e["start"], e["layer"]))


def unigram_entropy(tokens: np.ndarray | Sequence[int], vocab_size: int | None = None) -> float:
    """The loss, in nats per token, of the best model that ignores context: the entropy of the token
    frequencies, -sum_v p_v ln p_v. A language model's loss starts at ln V, drops to about this within the
    first steps (learning the frequencies is easy), and goes below it only as it learns to use context;
    a run that stays near it is on the plateau. `prepare` can record it per corpus and split.
    """
    return counts_entropy(np.bincount(np.asarray(tokens, dtype=np.int64).reshape(-1), minlength=vocab_size or 0))


def counts_entropy(counts: np.ndarray) -> float:
    """`unigram_entropy` from token counts (summed over shards by `prepare`, so no split is read whole)."""
    counts = np.asarray(counts)
    n = counts.sum()
    if n == 0:
        raise ValueError("unigram_entropy: no tokens")
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


PLATEAU_MARGIN = 0.1  # nats under the unigram loss that count as off the plateau; Study 2 calibrates it


def plateau(rows: Sequence[dict], unigram_loss: float, *, margin: float = PLATEAU_MARGIN, key: str = "loss") -> dict:
    """Time on the unigram plateau: {steps_above, escape_step} over the rows that have `key`.

    `steps_above`: rows whose loss is above unigram_loss - margin (non-finite counts as above: a step that
    learned nothing). `escape_step`: the step of the first row at or below it (None: never), the
    "steps until the loss is a set margin below the unigram loss" of issue 28's protocol. With the
    training loss (`key` "loss") every step counts; with `val/loss` every evaluation.
    """
    level = unigram_loss - margin
    above, escape = 0, None
    for row in rows:
        value = row.get(key)
        if value is None:
            continue
        if math.isfinite(value) and value <= level:
            escape = row["step"] if escape is None else escape
        else:
            above += 1
    return {"steps_above": above, "escape_step": escape}
