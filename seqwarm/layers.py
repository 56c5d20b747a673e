"""The parts of a decoder that both model families share: GPT-2 (seqwarm/model.py) and the Llama-style family
(seqwarm/llama.py).

- `CausalSelfAttention`: the attention core, through `scaled_dot_product_attention`, with grouped KV heads,
  QK-norm, rotary positions and a causal sliding window as options, and the attention instruments;
- `RMSNorm` and the rotary tables;
- `DecoderLM`: the model's channels, the same for every family: per-step inputs in (an attention `window`,
  `diagnostics`, a `z_loss` coefficient), `(ce_sum, extras)` out over the chunked output layer (`loss.py`).

torch, seqwarm.loss and seqwarm.instruments only: the model stands alone (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqwarm.instruments import attention_stats
from seqwarm.loss import IGNORE_INDEX, output_layer_terms


def window_mask(T: int, window: torch.Tensor) -> torch.Tensor:
    """(T, T) boolean: query i attends key j iff i - window < j <= i, a causal sliding window (Longformer,
    Beltagy et al. 2020, Section 3.1; Mistral 7B). A window >= T is plain causal attention.

    Built in the graph from the tensor `window` (0-dim int64), so a compiled model does not specialise on
    its value. `window` must be >= 1 (a query with no key has no attention distribution).
    """
    pos = torch.arange(T, device=window.device)
    back = pos[:, None] - pos[None, :]  # (T, T): how far key j lies behind query i
    return (back >= 0) & (back < window)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * gain over the last dimension (Zhang & Sennrich 2019), no bias, no centring.

    Normalised in fp32 and cast back before the gain, as Llama's reference and transformers' LlamaRMSNorm do,
    so that an export computes the same numbers.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotary_tables(head_size: int, max_seqlen: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (max_seqlen, head_size), fp32, of rotary position embedding (RoPE, Su et al. 2021, Eq. 34).

    Frequency i of a head is theta^(-2i / head_size) (RoFormer's 10,000 by default); position p rotates the pair
    (x_i, x_{i + head_size/2}) by p times it: the half-split pairing of GPT-NeoX and transformers' Llama (the
    original Llama code pairs neighbours; transformers permutes its q/k weights on conversion, which makes the
    two equal). Computed once for the longest input; a shorter input takes the first T rows, so every
    sequence, truncated or not, has positions 0..T-1, and a compiled model sees one table for all lengths.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.int64).float() / head_size))
    angles = torch.outer(torch.arange(max_seqlen).float(), inv_freq)  # (max_seqlen, head_size / 2)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, h, T, hs) rotated by position: x * cos + rotate_half(x) * sin, cos and sin (T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class AttentionProbe:
    """Collects each attention layer's instruments from the q and k it gives SDPA (issue 25):
    `diag/attn/<layer>/logit_max` (max-reduced by the trainer: the name ends in `max`) and
    `diag/attn/<layer>/entropy` (mean-reduced), by `instruments.attention_stats`, with the step's window."""

    def __init__(self, window: int | None):
        self.window = window
        self.stats: dict[str, torch.Tensor] = {}

    def record(self, layer: int, q: torch.Tensor, k: torch.Tensor) -> None:
        top, entropy = attention_stats(q.detach(), k.detach(), window=self.window)
        self.stats[f"diag/attn/{layer}/logit_max"] = top
        self.stats[f"diag/attn/{layer}/entropy"] = entropy


class CausalSelfAttention(nn.Module):
    """Causal self-attention through `scaled_dot_product_attention`, the core of both families' blocks.

    q, k and v come from one fused projection (one matmul; an export splits it). Options, each off by default:
    `n_kv_head` < `n_head` (grouped-query attention, Ainslie et al. 2023: query head h reads KV head
    h // (n_head / n_kv_head), transformers' `repeat_kv` order); `qk_norm`, a norm over each head's features
    applied to q and k before the rotary embedding (Qwen3; Wortsman et al. 2023, Section 3.1.2); `rotary`
    (the block passes its tables); a window mask.
    """

    def __init__(
        self,
        d_model: int,
        n_head: int,
        n_kv_head: int,
        *,
        layer: int,
        bias: bool,
        dropout: float,
        qk_norm: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        assert d_model % n_head == 0 and n_head % n_kv_head == 0, "heads must divide d_model, KV heads n_head"
        self.n_head, self.n_kv_head, self.head_size = n_head, n_kv_head, d_model // n_head
        self.layer = layer  # its index: the name of its instruments
        self.width = d_model  # n_head x head size: what the attention FLOPs scale with (flop_split)
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, (n_head + 2 * n_kv_head) * self.head_size, bias=bias)
        self.q_norm = qk_norm(self.head_size) if qk_norm else None
        self.k_norm = qk_norm(self.head_size) if qk_norm else None
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.proj.residual = True  # scaled at init: it writes into the residual stream
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        probe: AttentionProbe | None = None,
    ) -> torch.Tensor:
        """`mask` (T, T), True where a query may attend a key (`window_mask`); None: plain causal attention.
        `rotary`: cos and sin (T, hs). `probe`: records this layer's instruments (diagnostics steps only)."""
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_size
        q, k, v = self.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q, k, v = q.view(B, T, nh, hs), k.view(B, T, nkv, hs), v.view(B, T, nkv, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # each head over its own hs features, one gain for all heads
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hs)
        if rotary is not None:
            cos, sin = (t.to(q.dtype) for t in rotary)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if nkv != nh:
            k, v = (t.repeat_interleave(nh // nkv, dim=1) for t in (k, v))
        if probe is not None:
            probe.record(self.layer, q, k)  # what SDPA receives: after QK-norm and rotation
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class DecoderLM(nn.Module):
    """The channels of a seqwarm model, whatever its family: a subclass builds its modules, sets `cfg` and
    `trunk = hidden`, and implements `hidden(idx, window=None, probe=None)` and `output_weight()`."""

    cfg: object  # a seqwarm.model.GPTConfig
    trunk: Callable

    def hidden(self, idx: torch.Tensor, window: torch.Tensor | None = None, probe: AttentionProbe | None = None):
        raise NotImplementedError

    def output_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's initialisation, for both families (so that they differ by architecture alone): N(0, 0.02), the
        projections that write into the residual stream (`residual = True`: attention's and the MLP's output)
        scaled by 1/sqrt(2 n_layer) since each block adds two of them; biases at 0; norm gains start at 1."""
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        ignore_index: int = IGNORE_INDEX,
        window: torch.Tensor | None = None,
        diagnostics: bool = False,
        z_loss: float = 0.0,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token ids (B, T), T <= max_seqlen -> logits (B, T, vocab_size); with targets (B, T),
        `(ce_sum, extras)` instead (`loss_terms`), without materializing the logits.

        `window`, `diagnostics` and `z_loss` are the step's inputs (the trainer's `train_step(inputs=...)`): an
        attention window (`hidden`); whether to compute the diagnostics, which cost time; the z-loss
        coefficient. Training goes through `forward` (not `hidden`) so that DDP and FSDP wrappers see every
        step: FSDP gathers the tied embedding for the output layer only inside its root forward.
        """
        probe = None
        if diagnostics:
            # The attention instruments read every layer's q and k, so this step runs the eager trunk: the
            # instruments' loop stays out of the compiled graph, and a step without them has nothing of them.
            probe = AttentionProbe(None if window is None else int(window))
            hidden = self.hidden(idx, window, probe)
        else:  # without a window, the trunk is called as before the window existed (wrappers of `hidden` work)
            hidden = self.trunk(idx) if window is None else self.trunk(idx, window)
        if targets is None:
            logits = F.linear(hidden, self.output_weight())  # (B, T, padded_vocab)
            return logits[..., : self.cfg.vocab_size]
        ce, extras = self.loss_terms(hidden, targets, ignore_index=ignore_index, diagnostics=diagnostics, z_loss=z_loss)
        return ce, (extras | probe.stats) if probe else extras

    def loss_terms(
        self, hidden: torch.Tensor, targets: torch.Tensor, *, ignore_index: int, diagnostics: bool, z_loss: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The output layer and what it yields: `(ce_sum, extras)`, in one chunked pass (`loss.output_layer_terms`).

        `ce_sum`: the cross-entropy summed over targets != ignore_index, the loss that the loss ratio,
        Table 1 and `val/loss` read. `extras`: auxiliary loss terms under `aux/<name>`, summed over the
        same targets as `ce_sum` (the trainer adds them to the objective, divided by the step's tokens, and
        logs their mean per token), and diagnostics under `diag/<name>`, detached scalars (logged; a name
        ending in `max` is max-reduced over micro-batches and processes, any other averaged).

        With `z_loss` > 0: `aux/z_loss` = z_loss x sum of (log Z)^2 (PaLM, Section 5), *detached*: its gradient
        rides on `ce_sum`'s backward (one matmul pair for both), so the objective ce + z has the right gradient
        and the value is there to be logged. With `diagnostics`: `diag/output/logz_mean`, `diag/output/logz_max`
        and `diag/output/logit_absmax` (Wortsman et al. 2023, Section 3.2: a drifting log-partition).
        """
        terms = output_layer_terms(
            hidden,
            self.output_weight(),
            targets,
            vocab_size=self.cfg.vocab_size,
            z_loss=z_loss,
            stats=diagnostics,
            ignore_index=ignore_index,
        )
        extras = {"aux/z_loss": terms["z_loss"]} if z_loss else {}
        if diagnostics:
            extras |= {f"diag/output/{k}": terms[k] for k in ("logz_mean", "logz_max", "logit_absmax")}
        return terms["ce"], extras

    def compile_trunk(self, **kwargs) -> None:
        """torch.compile the Transformer (`hidden`); the chunked output layer and loss stay eager."""
        self.trunk = torch.compile(self.hidden, **kwargs)  # `window` is a tensor: one graph for all its values

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices (linear weights, embeddings), not biases or norm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
