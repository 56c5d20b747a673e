"""The model's options (`GPTConfig`), its presets, and GPT-2: a decoder-only Transformer, torch only.

GPT-2: pre-LayerNorm blocks, learned absolute positions, tied input/output embeddings, a 4x GELU MLP and
causal attention through `scaled_dot_product_attention` (flash/memory-efficient kernels where the
device has them). The model accepts any input length up to `max_seqlen`, which is what Sequence
Length Warmup needs: a truncated batch is just a shorter input (paper, Section 4). The Llama-style family
is seqwarm/llama.py; both share seqwarm/layers.py (attention core, channels), and `build_model` picks one.
"""

from __future__ import annotations

import functools
from dataclasses import Field, dataclass, field, fields
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqwarm.layers import AttentionProbe, CausalSelfAttention, DecoderLM, window_mask
from seqwarm.llama import Llama
from seqwarm.loss import linear_cross_entropy  # noqa: F401  (part of this module's API, as window_mask)
from seqwarm.tokenizer import VOCAB_SIZE

ACTIVATIONS = ("gelu_tanh", "gelu")  # `model.activation`; MLP.forward maps each to F.gelu's `approximate`
FAMILIES = ("gpt2", "llama")  # `model.family`


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
    `activation_function: gelu`. Family `gpt2` only (the `llama` MLP is SwiGLU)."""
    family: Literal["gpt2", "llama"] = "gpt2"
    """The architecture (docs/MODEL.md): `gpt2`, GPT-2's (LayerNorm with biases, learned positions, a GELU MLP;
    the paper's models); `llama`, a Llama-style decoder (RMSNorm, rotary positions, a SwiGLU MLP, no biases;
    Touvron et al. 2023), seqwarm/llama.py."""
    n_kv_head: int | None = None
    """Key/value heads, a divisor of n_head: fewer than n_head is grouped-query attention (Ainslie et al. 2023,
    as Llama 2 70B, Qwen3); null: n_head (multi-head attention)."""
    qk_norm: bool = False
    """Normalise each head's queries and keys before their dot product (Dehghani et al. 2023; Wortsman et al. 2023,
    Section 3.1.2: against attention-logit growth): RMSNorm in the `llama` family (Qwen3), LayerNorm in `gpt2`
    (the norm of its blocks, as in Wortsman's experiments). One gain per head feature, shared by the heads."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding's frequencies (Su et al. 2021; 10,000 in RoFormer and Llama 2,
    500,000 in Llama 3). Family `llama` only."""
    mlp_hidden: int | None = None
    """The MLP's inner width; null: 4 x d_model (`gpt2`), or Llama's SwiGLU rule (`llama`): 2/3 of 4 x d_model
    rounded up to a multiple of 256 (Llama's `multiple_of`), 2,048 at d_model 768."""
    tie_embeddings: bool = True
    """The output layer is the input embedding's matrix (GPT-2, Qwen3's small models); false: a matrix of its own
    (Llama 2, OLMo 2)."""
    norm_eps: float = 1e-5
    """Epsilon of the LayerNorms (`gpt2`) or RMSNorms (`llama`): 1e-5, torch's LayerNorm default and Llama 2's;
    Llama 3 and Qwen3 use 1e-5 and 1e-6."""
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
        if self.family not in FAMILIES:
            raise ValueError(f"family: {self.family!r} is not one of {', '.join(FAMILIES)}")
        for name in ("n_kv_head", "mlp_hidden"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}: must be a positive integer or null, got {value!r}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_kv_head: {self.kv_heads} does not divide n_head ({self.n_head})")
        for name in ("rope_theta", "norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if self.family == "llama" and self.activation != "gelu_tanh":
            raise ValueError(f"activation: {self.activation!r} is GPT-2's option; the llama family's MLP is SwiGLU")
        if self.family == "gpt2" and self.rope_theta != 10000.0:
            raise ValueError("rope_theta: the gpt2 family has learned positions, not rotary ones (family: llama)")
        if self.family == "llama" and (self.d_model // self.n_head) % 2:
            raise ValueError("n_head: rotary positions need an even head size, d_model / n_head is odd")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self) -> int:
        """The MLP's inner width: `mlp_hidden`, else 4 d (GPT-2) or Llama's rule (`llama/model.py`,
        `FeedForward`: int(2/3 x 4d) rounded up to a multiple of 256; the SwiGLU's three matrices then hold
        about the parameters of a 4d two-matrix MLP, Shazeer 2020)."""
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.family == "gpt2":
            return 4 * self.d_model
        return 256 * -(-int(2 * 4 * self.d_model / 3) // 256)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_to
        return (self.vocab_size + m - 1) // m * m

    def n_params(self, *, embeddings: bool = True) -> int:
        """Parameter count of the built model (tied embeddings counted once); without `embeddings`, the
        token and position tables and an untied output matrix left out (the N of 6N, Kaplan et al. 2020,
        Section 2.1)."""
        counts = _module_counts(self)
        return counts["params"] if embeddings else counts["body_params"]

    def flop_split(self, seqlen: int) -> dict[str, float]:
        """Training FLOPs per token (forward + backward) at a given length, by where they are spent.

        Counted on the built modules, either family: `body`: 6 per non-embedding parameter (the blocks and
        the final norm), the matmuls of the Transformer; `attention`: 12 * width * seqlen per attention module
        for the attention scores and the weighted values (PaLM, Appendix B), the only term that depends on
        the length; `output`: 6 per weight of the output layer, the logits over the padded vocabulary
        (tied or not: the input embedding's lookup costs no matmul). Every term is an integer below 2**53,
        so the sum is exact.
        """
        counts = _module_counts(self)
        return {
            "body": 6.0 * counts["body_params"],
            "attention": float(12 * counts["attention_width"] * seqlen),
            "output": 6.0 * counts["output_weights"],
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
def _meta_model(cfg: GPTConfig) -> DecoderLM:
    """The model built on the `meta` device (shapes, no memory, no random numbers drawn), once per config."""
    with torch.device("meta"):
        return build_model(cfg)


@functools.cache
def _module_counts(cfg: GPTConfig) -> dict[str, int]:
    """What `n_params` and `flop_split` read off the built modules, counted once per config (`seqwarm plan` asks
    for every step of a 300K-step schedule): all parameters; those outside the embeddings and an untied output
    matrix; the summed width of the attention modules; the output layer's weights."""
    model = _meta_model(cfg)
    params = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    untied = 0 if cfg.tie_embeddings else model.output_weight().numel()
    return {
        "params": params,
        "body_params": params - embeddings - untied,
        "attention_width": sum(m.width for m in model.modules() if isinstance(m, CausalSelfAttention)),
        "output_weights": model.output_weight().numel(),
    }


def build_model(cfg: GPTConfig) -> DecoderLM:
    """The model of `cfg.family`: `GPT` (GPT-2) or `seqwarm.llama.Llama`. Every place that builds a model
    from a config (the trainer, a saved run, the HF import) goes through here."""
    return GPT(cfg) if cfg.family == "gpt2" else Llama(cfg)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_width)
        self.proj = nn.Linear(cfg.mlp_width, cfg.d_model)
        self.proj.residual = True
        self.dropout = nn.Dropout(cfg.dropout)
        # GPT-2 uses the tanh approximation of GELU (`gelu_tanh`); `gelu` is the exact erf form.
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        norm = functools.partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.ln_1 = norm(cfg.d_model)
        self.attn = CausalSelfAttention(
            cfg.d_model,
            cfg.n_head,
            cfg.kv_heads,
            layer=layer,
            bias=True,
            dropout=cfg.dropout,
            qk_norm=norm if cfg.qk_norm else None,  # LayerNorm, the family's norm (Wortsman et al. 2023)
        )
        self.ln_2 = norm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, probe: AttentionProbe | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, probe=probe)
        return x + self.mlp(self.ln_2(x))


class GPT(DecoderLM):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.family != "gpt2":
            raise ValueError(f"family: GPT builds the gpt2 family, not {cfg.family!r} (use build_model)")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seqlen, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        self.apply(self._init_weights)
        self.trunk = self.hidden  # replaced by its compiled version by `compile_trunk`

    def hidden(
        self, idx: torch.Tensor, window: torch.Tensor | None = None, probe: AttentionProbe | None = None
    ) -> torch.Tensor:
        """Token ids (B, T), T <= max_seqlen -> final hidden states (B, T, C), before the output layer.

        `window`: a 0-dim int64 tensor, a causal sliding window (`window_mask`) in every block; None: full
        causal attention. `probe`: collects the attention instruments (`DecoderLM.forward` with diagnostics).
        """
        B, T = idx.shape
        if T > self.cfg.max_seqlen:
            raise ValueError(f"input length {T} exceeds the model's max_seqlen {self.cfg.max_seqlen}")
        pos = torch.arange(T, device=idx.device)
        mask = None if window is None else window_mask(T, window.to(idx.device))  # one for all blocks
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, mask, probe)
        return self.ln_f(x)

    def output_weight(self) -> torch.Tensor:
        """The output layer's weight (padded vocabulary x d_model): the input embedding, tied (GPT-2), or
        `lm_head`'s with `tie_embeddings: false`."""
        return self.wte.weight if self.lm_head is None else self.lm_head.weight


# Named sizes: the options each sets (a config's `model.preset`; its other `model.` keys override them).
# The paper's models (Sections 3 and 5) and small ones that train on a laptop CPU in minutes, and their
# Llama-style counterparts: the same width, depth, heads and context, with Llama's SwiGLU width rule
# (2,048 at d_model 768: 85.0M non-embedding parameters against GPT-2's 85.1M). Every other option takes its
# default (`activation: gelu_tanh`, tied embeddings, multi-head attention, no QK-norm).
PRESETS: dict[str, dict[str, int | str]] = {
    "gpt2-117m": dict(n_layer=12, d_model=768, n_head=12, max_seqlen=1024),
    "gpt2-1.5b": dict(n_layer=48, d_model=1600, n_head=25, max_seqlen=1024),
    "gpt3-125m": dict(n_layer=12, d_model=768, n_head=12, max_seqlen=2048),
    "gpt3-1.3b": dict(n_layer=24, d_model=2048, n_head=16, max_seqlen=2048),
    "cpu-small": dict(n_layer=4, d_model=128, n_head=4, max_seqlen=256),
    "tiny": dict(n_layer=2, d_model=64, n_head=2, max_seqlen=128),
    "llama-117m": dict(family="llama", n_layer=12, d_model=768, n_head=12, max_seqlen=1024),
    "llama-125m": dict(family="llama", n_layer=12, d_model=768, n_head=12, max_seqlen=2048),
}
