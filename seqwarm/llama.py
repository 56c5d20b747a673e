"""The Llama-style family (`model.family: llama`): a decoder as Llama 2 (Touvron et al. 2023), OLMo 2 and Qwen3
build it, beside GPT-2 (seqwarm/model.py) and sharing its attention core and channels (seqwarm/layers.py).

Against GPT-2: RMSNorm instead of LayerNorm (pre-norm, no biases anywhere); rotary positions on q and k instead
of a learned position table (nothing position-specific to train, so SLW leaves no row of a table untrained); a
SwiGLU MLP (Shazeer 2020); optionally grouped KV heads, QK-norm and an untied output matrix. Parameter names
follow the GPT-2 model's (`wte`, `blocks.N.attn.qkv`, `blocks.N.attn.proj`), so the export (seqwarm/hf_llama.py)
is a renaming plus a split of the fused projections. Torch only: the model stands alone.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqwarm.layers import AttentionProbe, CausalSelfAttention, DecoderLM, RMSNorm, rotary_tables, window_mask


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) (Shazeer 2020, "GLU Variants Improve Transformer", Eq. 6; Llama's FeedForward)."""

    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.down.residual = True
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))


class LlamaBlock(nn.Module):
    """x + attn(norm_1(x)), then + mlp(norm_2(x)): pre-norm, as Llama (OLMo 2 normalises the sublayers' outputs
    instead, which is why its transformers class is not an export target)."""

    def __init__(self, cfg, layer: int):
        super().__init__()
        norm = functools.partial(RMSNorm, eps=cfg.norm_eps)
        self.norm_1 = norm(cfg.d_model)
        self.attn = CausalSelfAttention(
            cfg.d_model,
            cfg.n_head,
            cfg.kv_heads,
            layer=layer,
            bias=False,
            dropout=cfg.dropout,
            qk_norm=norm if cfg.qk_norm else None,  # RMSNorm per head, as Qwen3
        )
        self.norm_2 = norm(cfg.d_model)
        self.mlp = SwiGLU(cfg.d_model, cfg.mlp_width, cfg.dropout)

    def forward(self, x, mask=None, rotary=None, probe: AttentionProbe | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), mask, rotary, probe)
        return x + self.mlp(self.norm_2(x))


class Llama(DecoderLM):
    """Token ids -> hidden states -> the chunked output layer (`DecoderLM`), for a `GPTConfig` of family llama."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.family != "llama":
            raise ValueError(f"family: Llama builds the llama family, not {cfg.family!r} (use build_model)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(LlamaBlock(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        # Constants, not state: computed for the longest input and sliced per length (one compiled graph for
        # every SLW length); not in the state dict, so checkpoints and exports hold weights only.
        cos, sin = rotary_tables(cfg.d_model // cfg.n_head, cfg.max_seqlen, cfg.rope_theta)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        self.apply(self._init_weights)
        self.trunk = self.hidden  # replaced by its compiled version by `compile_trunk`

    def hidden(
        self, idx: torch.Tensor, window: torch.Tensor | None = None, probe: AttentionProbe | None = None
    ) -> torch.Tensor:
        """Token ids (B, T), T <= max_seqlen -> final hidden states (B, T, C), before the output layer.

        Every row has positions 0..T-1 (a truncated sequence starts at its first token). `window`: a 0-dim
        int64 tensor, a causal sliding window in every block; `probe`: collects the attention instruments.
        """
        B, T = idx.shape
        if T > self.cfg.max_seqlen:
            raise ValueError(f"input length {T} exceeds the model's max_seqlen {self.cfg.max_seqlen}")
        rotary = (self.rotary_cos[:T], self.rotary_sin[:T])
        mask = None if window is None else window_mask(T, window.to(idx.device))
        x = self.drop(self.wte(idx))  # (B, T, C): no position table, positions enter as rotations of q and k
        for block in self.blocks:
            x = block(x, mask, rotary, probe)
        return self.norm(x)

    def output_weight(self) -> torch.Tensor:
        """The output layer's weight (padded vocabulary x d_model): the input embedding when tied, else `lm_head`."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight
