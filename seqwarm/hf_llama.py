"""Hugging Face interoperability of the llama family: `LlamaForCausalLM`, or `Qwen3ForCausalLM` with QK-norm.

seqwarm's Llama-style block is transformers' Llama block (pre-norm RMSNorm computed in fp32, half-split RoPE with
the same fp32 tables, SwiGLU, no biases, grouped KV heads), so a checkpoint maps onto `LlamaForCausalLM` by
renaming and splitting the fused projections (q, k and v are one `qkv` matrix here). QK-norm has no place in
Llama; Qwen3's block is Llama's plus an RMSNorm per head on q and k, applied before the rotation, one gain vector
of head size shared by the heads: exactly `model.qk_norm` of this family, so that is the class a QK-normed model
becomes. (OLMo 2 also norms q and k, but over the whole projection before the split into heads, and normalises the
sublayers' outputs instead of their inputs: neither matches; docs/EVALUATION.md.) `model.dropout` is a training
setting with no effect on the logits; the export's `attention_dropout` is 0.

The I/O (directories, tokenizer, safetensors only) is seqwarm.hf's; this module is the mapping and its checks.
"""

from __future__ import annotations

import dataclasses

import torch

from seqwarm.errors import ConfigError, SeqwarmError
from seqwarm.model import GPTConfig
from seqwarm.tokenizer import VOCAB_SIZE

MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# The options the two classes represent; any other at a value other than its default is refused in one line.
LLAMA_OPTIONS = (
    *("n_layer", "n_head", "d_model", "max_seqlen", "vocab_size", "dropout", "activation", "pad_vocab_to"),
    *("family", "n_kv_head", "qk_norm", "rope_theta", "mlp_hidden", "tie_embeddings", "norm_eps"),
)
# The model fields import-hf takes from config.json (so the command line may not set them)
IMPORTED = ("n_layer", "n_head", "d_model", "max_seqlen", "family", "n_kv_head", "qk_norm", "rope_theta")
IMPORTED += ("mlp_hidden", "tie_embeddings", "norm_eps")

# seqwarm parameter of block i -> transformers parameter of layer i (the fused qkv is split apart)
_BLOCK = {
    "norm_1.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "norm_2.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.up.weight": "mlp.up_proj.weight",
    "mlp.down.weight": "mlp.down_proj.weight",
}
_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")


def class_name(gpt: GPTConfig) -> str:
    return MODEL_TYPES["qwen3" if gpt.qk_norm else "llama"]


def check_options(gpt: GPTConfig) -> None:
    """ConfigError, naming the option, for a model the export classes cannot represent."""
    for f in dataclasses.fields(gpt):
        value = getattr(gpt, f.name)
        if f.name not in LLAMA_OPTIONS and value != f.default:
            raise ConfigError(f"model.{f.name}: {value!r} has no counterpart in transformers' {class_name(gpt)}")


def hf_config(transformers, gpt: GPTConfig, eot_id: int):
    """The transformers config of a llama-family model: LlamaConfig, or Qwen3Config with QK-norm."""
    check_options(gpt)
    common = dict(
        vocab_size=gpt.vocab_size,
        hidden_size=gpt.d_model,
        intermediate_size=gpt.mlp_width,
        num_hidden_layers=gpt.n_layer,
        num_attention_heads=gpt.n_head,
        num_key_value_heads=gpt.kv_heads,
        head_dim=gpt.d_model // gpt.n_head,  # explicit: Qwen3Config's default is 128 whatever the width
        hidden_act="silu",
        max_position_embeddings=gpt.max_seqlen,
        rms_norm_eps=gpt.norm_eps,
        rope_theta=gpt.rope_theta,
        attention_bias=False,
        attention_dropout=0.0,
        tie_word_embeddings=gpt.tie_embeddings,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        architectures=[class_name(gpt)],
    )
    if gpt.qk_norm:
        return transformers.Qwen3Config(**common, use_sliding_window=False)
    return transformers.LlamaConfig(**common, mlp_bias=False)


def to_hf_state(state: dict[str, torch.Tensor], gpt: GPTConfig) -> dict[str, torch.Tensor]:
    """seqwarm state dict -> LlamaForCausalLM / Qwen3ForCausalLM state dict (vocabulary padding dropped).

    Every parameter must have its counterpart: one the mapping does not know is an error, never left out.
    """
    check_options(gpt)
    nh, nkv, hs = gpt.n_head, gpt.kv_heads, gpt.d_model // gpt.n_head
    state, out = dict(state), {}
    for i in range(gpt.n_layer):
        p, h = f"blocks.{i}.", f"model.layers.{i}."
        for name, hf in _BLOCK.items():
            if p + name in state:
                out[h + hf] = state.pop(p + name)
        for hf, t in zip(_QKV, state.pop(p + "attn.qkv.weight").split([nh * hs, nkv * hs, nkv * hs])):
            out[h + hf] = t
    out["model.norm.weight"] = state.pop("norm.weight")
    out["model.embed_tokens.weight"] = state.pop("wte.weight")[: gpt.vocab_size]
    head = state.pop("lm_head.weight", None)
    out["lm_head.weight"] = out["model.embed_tokens.weight"] if head is None else head[: gpt.vocab_size]
    if state:
        raise SeqwarmError(
            f"no Hugging Face {class_name(gpt)} counterpart for the seqwarm parameter(s) {', '.join(state)}"
        )
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state(hf_state: dict[str, torch.Tensor], gpt: GPTConfig) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM / Qwen3ForCausalLM state dict -> seqwarm state dict (vocabulary padded with zero rows)."""
    hf = {k: v.detach().to(torch.float32) for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}
    state = {}

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise SeqwarmError(f"{name}: missing from the Hugging Face checkpoint")
        return hf.pop(name)

    for i in range(gpt.n_layer):
        p, h = f"blocks.{i}.", f"model.layers.{i}."
        state[p + "attn.qkv.weight"] = torch.cat([take(h + name) for name in _QKV])
        for name, hf_name in _BLOCK.items():
            if "_norm" not in name or gpt.qk_norm:
                state[p + name] = take(h + hf_name)
    state["norm.weight"] = take("model.norm.weight")
    wte = take("model.embed_tokens.weight")
    head = hf.pop("lm_head.weight", None)
    if gpt.tie_embeddings and head is not None and not torch.equal(head, wte):
        raise SeqwarmError("lm_head.weight differs from model.embed_tokens.weight though tie_word_embeddings is true")
    if hf:
        raise SeqwarmError(f"no seqwarm counterpart for the Hugging Face parameter(s) {', '.join(sorted(hf))}")
    state["wte.weight"] = _padded(wte, gpt)
    if not gpt.tie_embeddings:
        state["lm_head.weight"] = _padded(head, gpt)
    return state


def _padded(t: torch.Tensor, gpt: GPTConfig) -> torch.Tensor:
    out = torch.zeros(gpt.padded_vocab_size, gpt.d_model)
    out[: gpt.vocab_size] = t
    return out


def _rope(config) -> tuple[str, float | None]:
    """(rope type, theta) across transformers versions: `rope_parameters` (5.x) or `rope_scaling` + `rope_theta`."""
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    return kind, params.get("rope_theta", getattr(config, "rope_theta", None))


def config_problems(config) -> list[str]:
    """What in a Llama or Qwen3 config.json seqwarm's llama family cannot reproduce (empty: it maps exactly)."""
    get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    problems = []
    if get("vocab_size") != VOCAB_SIZE:  # as for GPT-2: the run's data must be in the model's vocabulary
        problems.append(f"vocab_size is {get('vocab_size')}, not GPT-2's {VOCAB_SIZE} (import-hf takes those only)")
    if get("hidden_act") != "silu":
        problems.append(f"hidden_act is {get('hidden_act')!r}; seqwarm's SwiGLU uses silu")
    if get("attention_bias", False) or get("mlp_bias", False):
        problems.append("attention_bias or mlp_bias is true; seqwarm's llama family has no biases")
    if get("hidden_size") % get("num_attention_heads") or get("head_dim", None) not in (
        None,
        get("hidden_size") // get("num_attention_heads"),
    ):
        problems.append(f"head_dim is {get('head_dim')}; seqwarm's is hidden_size / num_attention_heads")
    if _rope(config)[0] != "default":
        problems.append(f"rope type {_rope(config)[0]!r}; seqwarm's rotary embedding is the default (unscaled) one")
    if get("use_sliding_window", False):
        problems.append("use_sliding_window is true; seqwarm attends to the whole causal context")
    return problems


def imported_shape(config) -> dict:
    """The `model.` options of a Llama or Qwen3 config.json (checked by `config_problems` first)."""
    return {
        "family": "llama",
        "n_layer": config.num_hidden_layers,
        "n_head": config.num_attention_heads,
        "d_model": config.hidden_size,
        "max_seqlen": config.max_position_embeddings,
        "n_kv_head": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "qk_norm": config.model_type == "qwen3",
        "rope_theta": float(_rope(config)[1] or 10000.0),
        "mlp_hidden": config.intermediate_size,
        "tie_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "norm_eps": config.rms_norm_eps,
        "vocab_size": config.vocab_size,
    }
