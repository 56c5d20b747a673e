"""GPT-2: a decoder-only Transformer, torch only, readable top to bottom.

Pre-LayerNorm blocks, learned absolute positions, tied input/output embeddings, a 4x GELU MLP and
causal attention through `scaled_dot_product_attention` (flash/memory-efficient kernels where the
device has them). The model accepts any input length up to `max_seqlen`, which is what Sequence
Length Warmup needs: a truncated batch is just a shorter input (paper, Section 4).
"""

from __future__ import annotations

import functools
import math
from dataclasses import Field, dataclass, field, fields
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqwarm.layers import CausalSelfAttention, window_mask  # noqa: F401  (window_mask: part of this module's API)
from seqwarm.loss import IGNORE_INDEX, linear_cross_entropy
from seqwarm.tokenizer import VOCAB_SIZE

ACTIVATIONS = ("gelu_tanh", "gelu")  # `model.activation`; MLP.forward maps each to F.gelu's `approximate`


@dataclass(frozen=True)
class GPTConfig:
    """The model's options, each declared once, here, with its docstring.

    The YAML `model:` section is these fields plus `preset` (a name in `PRESETS`) and `vocab_size: auto`
    (`seqwarm.config.ModelConfig` is built from this class). A new option is one field below, read by the
    module that implements it; `n_params` and `flop_split` follow from the built modules by themselves,
    and the Hugging Face export refuses a non-default value it has not been taught to map (`seqwarm.hf`).
    """

    n_layer: int
    """Transformer blocks."""
    n_head: int
    """Attention heads per block."""
    d_model: int
    """Hidden size."""
    max_seqlen: int
    """Longest input the model accepts (its learned position table)."""
    vocab_size: int = VOCAB_SIZE
    """Token ids the model embeds and predicts."""
    dropout: float = 0.0
    """Dropout on embeddings, attention and residual branches."""
    activation: Literal["gelu_tanh", "gelu"] = "gelu_tanh"
    """The MLP's GELU (Hendrycks & Gimpel 2016): `gelu_tanh`, the tanh approximation GPT-2 trained with (the
    paper's models); `gelu`, the exact form x * Phi(x) with the erf, which transformers' GPT-2 reads as
    `activation_function: gelu`."""
    pad_vocab_to: int = field(default=64, metadata={"option": False})
    """The embedding table is padded to a multiple of this so that the output matmul is tensor-core friendly;
    logits of the padding rows are cut off and never predicted. Not a config key."""

    def __post_init__(self):
        # ValueError, not seqwarm's ConfigError, so that the model imports nothing of the package;
        # `ModelConfig` names the `model.` section in front of the message.
        for name in ("n_layer", "n_head", "d_model", "max_seqlen", "vocab_size", "pad_vocab_to"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_to
        return (self.vocab_size + m - 1) // m * m

    def n_params(self, *, embeddings: bool = True) -> int:
        """Parameter count of the built model (tied embeddings counted once); without `embeddings`, the
        token and position tables left out (the N of 6N, Kaplan et al. 2020, Section 2.1)."""
        model = _meta_model(self)
        n = sum(p.numel() for p in model.parameters())
        if not embeddings:
            n -= sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
        return n

    def flop_split(self, seqlen: int) -> dict[str, float]:
        """Training FLOPs per token (forward + backward) at a given length, by where they are spent.

        Counted on the built modules: `body`: 6 per non-embedding parameter (the blocks and the final
        LayerNorm), the matmuls of the Transformer; `attention`: 12 * width * seqlen per attention module
        for the attention scores and the weighted values (PaLM, Appendix B), the only term that depends on
        the length; `output`: 6 per weight of the output layer, the logits over the padded vocabulary
        (tied to the input embedding, whose lookup costs no matmul). Every term is an integer below 2**53,
        so the sum is exact.
        """
        model = _meta_model(self)
        attention = sum(12 * m.width * seqlen for m in model.modules() if isinstance(m, CausalSelfAttention))
        return {
            "body": 6.0 * self.n_params(embeddings=False),
            "attention": float(attention),
            "output": 6.0 * model.output_weight().numel(),
        }

    def flops_per_token(self, seqlen: int) -> float:
        """Training FLOPs per token (forward + backward) at a given length: the sum of `flop_split`.

        6N for the matmuls of the N non-embedding parameters plus the output projection, and
        12 * n_layer * d_model * seqlen for attention scores and values (PaLM, Appendix B; the
        attention term is why the paper's time saving exceeds its token saving, Section 5.1).
        """
        split = self.flop_split(seqlen)
        return split["body"] + split["output"] + split["attention"]


def model_options() -> list[Field]:
    """The fields of `GPTConfig` that are config keys (`model.<name>`), in declaration order."""
    return [f for f in fields(GPTConfig) if f.metadata.get("option", True)]


@functools.cache
def _meta_model(cfg: GPTConfig) -> GPT:
    """The model built on the `meta` device (shapes, no memory, no random numbers drawn), once per config."""
    with torch.device("meta"):
        return GPT(cfg)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.proj.residual = True
        self.dropout = nn.Dropout(cfg.dropout)
        # GPT-2 uses the tanh approximation of GELU (`gelu_tanh`); `gelu` is the exact erf form.
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seqlen, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init_weights)
        self.trunk = self.hidden  # replaced by its compiled version by `compile_trunk`

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2 initialisation: N(0, 0.02), and the projections that write into the residual
        # stream scaled by 1/sqrt(2 * n_layer) since each block adds two of them.
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(module, "residual", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden(self, idx: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T), T <= max_seqlen -> final hidden states (B, T, C), before the output layer.

        `window`: a 0-dim int64 tensor, a causal sliding window (`window_mask`) in every block; None: full
        causal attention.
        """
        B, T = idx.shape
        if T > self.cfg.max_seqlen:
            raise ValueError(f"input length {T} exceeds the model's max_seqlen {self.cfg.max_seqlen}")
        pos = torch.arange(T, device=idx.device)
        mask = None if window is None else window_mask(T, window.to(idx.device))  # one for all blocks
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        ignore_index: int = IGNORE_INDEX,
        window: torch.Tensor | None = None,
        diagnostics: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token ids (B, T), T <= max_seqlen -> logits (B, T, vocab_size); with targets (B, T),
        `(ce_sum, extras)` instead (`loss_terms`), without materializing the logits.

        `window` and `diagnostics` are the step's inputs (the trainer's `train_step(inputs=...)`): an
        attention window (`hidden`), and whether to compute the diagnostics, which cost time.
        Training goes through `forward` (not `hidden`) so that DDP and FSDP wrappers see every
        step: FSDP gathers the tied embedding for the output layer only inside its root forward.
        """
        # Without a window, the trunk is called as before the window existed (wrappers of `hidden` keep working).
        hidden = self.trunk(idx) if window is None else self.trunk(idx, window)
        if targets is not None:
            return self.loss_terms(hidden, targets, ignore_index=ignore_index, diagnostics=diagnostics)
        logits = F.linear(hidden, self.output_weight())  # (B, T, padded_vocab)
        return logits[..., : self.cfg.vocab_size]

    def loss_terms(
        self, hidden: torch.Tensor, targets: torch.Tensor, *, ignore_index: int, diagnostics: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The output layer and what it yields: `(ce_sum, extras)`.

        `ce_sum`: the cross-entropy summed over targets != ignore_index, the loss that the loss ratio,
        Table 1 and `val/loss` read. `extras`: auxiliary loss terms under `aux/<name>`, summed over the
        same targets as `ce_sum` (the trainer adds them to the gradient, divided by the step's tokens, and
        logs their mean per token), and diagnostics under `diag/<name>`, detached scalars (logged; a name
        ending in `max` is max-reduced over micro-batches and processes, any other averaged). The model
        ships none yet; this method is the seam where a z-loss or an output-logit statistic joins.
        """
        ce = linear_cross_entropy(
            hidden, self.output_weight(), targets, vocab_size=self.cfg.vocab_size, ignore_index=ignore_index
        )
        return ce, {}

    def output_weight(self) -> torch.Tensor:
        """The output layer's weight (padded vocabulary x d_model): the input embedding, tied (GPT-2)."""
        return self.wte.weight

    def compile_trunk(self, **kwargs) -> None:
        """torch.compile the Transformer (`hidden`); the chunked output layer and loss stay eager."""
        self.trunk = torch.compile(self.hidden, **kwargs)  # `window` is a tensor: one graph for all its values

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay matrices (linear weights, embeddings), not biases or LayerNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]


# Named sizes: the options each sets (a config's `model.preset`; its other `model.` keys override them).
# The paper's models (Sections 3 and 5) and small ones that train on a laptop CPU in minutes. Every
# other option takes its default (`activation: gelu_tanh` for all of them).
PRESETS: dict[str, dict[str, int]] = {
    "gpt2-117m": dict(n_layer=12, d_model=768, n_head=12, max_seqlen=1024),
    "gpt2-1.5b": dict(n_layer=48, d_model=1600, n_head=25, max_seqlen=1024),
    "gpt3-125m": dict(n_layer=12, d_model=768, n_head=12, max_seqlen=2048),
    "gpt3-1.3b": dict(n_layer=24, d_model=2048, n_head=16, max_seqlen=2048),
    "cpu-small": dict(n_layer=4, d_model=128, n_head=4, max_seqlen=256),
    "tiny": dict(n_layer=2, d_model=64, n_head=2, max_seqlen=128),
}
