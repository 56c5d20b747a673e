"""The parts of a decoder both model families share: the causal attention core and its window mask."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def window_mask(T: int, window: torch.Tensor) -> torch.Tensor:
    """(T, T) boolean: query i attends key j iff i - window < j <= i, a causal sliding window (Longformer,
    Beltagy et al. 2020, Section 3.1; Mistral 7B). A window >= T is plain causal attention.

    Built in the graph from the tensor `window` (0-dim int64), so a compiled model does not specialise on
    its value. `window` must be >= 1 (a query with no key has no attention distribution).
    """
    pos = torch.arange(T, device=window.device)
    back = pos[:, None] - pos[None, :]  # (T, T): how far key j lies behind query i
    return (back >= 0) & (back < window)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):  # a seqwarm.model.GPTConfig
        super().__init__()
        assert cfg.d_model % cfg.n_head == 0, "d_model must be divisible by n_head"
        self.n_head = cfg.n_head
        self.width = cfg.d_model  # n_head x head size: what the attention FLOPs scale with (flop_split)
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.proj.residual = True  # scaled at init, see GPT._init_weights
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask` (T, T), True where a query may attend a key (`window_mask`); None: plain causal attention."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))
