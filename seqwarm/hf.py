"""Hugging Face interoperability: export to `transformers.GPT2LMHeadModel`, and import from it (the llama family:
`LlamaForCausalLM` or `Qwen3ForCausalLM`, mapped in seqwarm/hf_llama.py; the directories and checks are these).

seqwarm's GPT is GPT-2's architecture (pre-LayerNorm blocks with eps 1e-5, fused qkv projection
with biases, a GELU MLP, learned positions, tied output embedding), so a checkpoint maps one to one
onto `transformers.GPT2LMHeadModel`. A model option GPT-2's architecture has no place for is refused
in one line naming it (`check_gpt2_options`), and so is a parameter the mapping does not know: an
export never drops part of a model. Two differences in storage:

- HF's `Conv1D` stores its weight as (in, out), the transpose of `nn.Linear`'s (out, in);
- seqwarm pads the embedding to a multiple of 64 rows (tensor-core friendly, `GPTConfig.pad_vocab_to`).
  The padding rows are never looked up (no token id reaches them) and never predicted (their
  logits are cut off), so export drops them and import fills them with zeros, losslessly.

Export writes safetensors weights, config.json and the run's tokenizer: the exact GPT-2 BPE (built
offline from the files `seqwarm.tokenizer` verifies), or the data's own tokenizer.json as a
`PreTrainedTokenizerFast`, so `from_pretrained(OUT_DIR)` works with no network and gives the ids
the model was trained on. Import takes GPT-2-vocabulary models only (see `gpt2_config_problems`).
Import writes a run directory whose step-0 checkpoint holds the HF weights and a fresh optimizer,
written by the trainer's own `build` and `save`, so `seqwarm train --resume RUN_DIR` continues it.
Both directories appear whole or not at all (`seqwarm.files.atomic_directory`). `transformers` is an
optional dependency (`pip install 'seqwarm[hf]'`); `seqwarm.eval.harness` runs lm-eval on an export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError

from seqwarm import __version__, hf_llama
from seqwarm.checkpoint import load_weights
from seqwarm.config import load_config, save_config
from seqwarm.errors import ConfigError, SeqwarmError, first_line
from seqwarm.files import atomic_directory, check_writable, directory_lock, only_lock
from seqwarm.model import GPTConfig
from seqwarm.rundir import is_run_dir, write_marker
from seqwarm.saved import SavedModel, open_saved
from seqwarm.tokenizer import EOT, EOT_ID, VOCAB_SIZE, Tokenizer, gpt2_files

HF_HINT = "pip install 'seqwarm[hf]'"
LAYER_NORM_EPS = 1e-5  # torch's nn.LayerNorm default, what seqwarm's blocks use
# model.activation -> transformers' GPT-2 `activation_function` computing the same function
# (transformers/activations.py: "gelu_new" is the tanh approximation, "gelu" the exact erf form).
GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# ...and back, on import: "gelu_pytorch_tanh" is the same tanh approximation, fused.
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
# The model options GPT-2's architecture represents (`gpt2_config` maps each); any other option of
# `GPTConfig` at a value other than its default is refused by `check_gpt2_options`.
GPT2_OPTIONS = ("n_layer", "n_head", "d_model", "max_seqlen", "vocab_size", "dropout", "activation", "pad_vocab_to")
PROVENANCE = "seqwarm.json"
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")  # the weights import-hf reads (one file or shards)
PICKLE_SUFFIXES = {
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
}  # never loaded: torch.load of a pickle can run code  # export: which checkpoint; import: which HF directory

# seqwarm parameter -> (HF GPT2LMHeadModel parameter, stored transposed by HF's Conv1D)
_BLOCK = {
    "ln_1.weight": ("ln_1.weight", False),
    "ln_1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True),  # q, k, v stacked in the same order
    "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True),
    "attn.proj.bias": ("attn.c_proj.bias", False),
    "ln_2.weight": ("ln_2.weight", False),
    "ln_2.bias": ("ln_2.bias", False),
    "mlp.fc.weight": ("mlp.c_fc.weight", True),
    "mlp.fc.bias": ("mlp.c_fc.bias", False),
    "mlp.proj.weight": ("mlp.c_proj.weight", True),
    "mlp.proj.bias": ("mlp.c_proj.bias", False),
}
_TOP = {
    "wpe.weight": "transformer.wpe.weight",
    "ln_f.weight": "transformer.ln_f.weight",
    "ln_f.bias": "transformer.ln_f.bias",
}
# The causal-mask buffers older GPT-2 checkpoints carry (the original OpenAI conversion among
# them): constants, not weights, rebuilt by every implementation.
_MASK_BUFFER = re.compile(r"(^|\.)h\.\d+\.attn\.(masked_)?bias$")


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise SeqwarmError(f"this needs the transformers package, which is not installed: {HF_HINT}") from None
    return transformers


def _name_map(n_layer: int) -> dict[str, tuple[str, bool]]:
    names = {k: (v, False) for k, v in _TOP.items()}
    for i in range(n_layer):
        names |= {f"blocks.{i}.{k}": (f"transformer.h.{i}.{v}", t) for k, (v, t) in _BLOCK.items()}
    return names


def check_gpt2_options(gpt: GPTConfig) -> None:
    """ConfigError, naming the option, for a model GPT-2's architecture cannot represent."""
    for f in dataclasses.fields(gpt):
        value = getattr(gpt, f.name)
        if f.name not in GPT2_OPTIONS and value != f.default:
            raise ConfigError(
                f"model.{f.name}: {value!r} has no counterpart in transformers' GPT2LMHeadModel; "
                "export takes models that GPT-2's architecture represents"
            )
    if gpt.activation not in GPT2_ACTIVATIONS:
        raise ConfigError(f"model.activation: {gpt.activation!r} has no counterpart in transformers' GPT-2")


def to_hf_state(state: dict[str, torch.Tensor], gpt: GPTConfig) -> dict[str, torch.Tensor]:
    """seqwarm state dict -> GPT2LMHeadModel state dict (embedding padding dropped, output layer tied).

    Every parameter of `state` must have its counterpart: one the mapping does not know (a model part
    added after this mapping was written) is an error, never silently left out of the export.
    """
    check_gpt2_options(gpt)
    names = _name_map(gpt.n_layer)
    unmapped = sorted(set(state) - set(names) - {"wte.weight"})
    if unmapped:
        raise SeqwarmError(f"no Hugging Face GPT-2 counterpart for the seqwarm parameter(s) {', '.join(unmapped)}")
    out = {hf: (state[name].T if transposed else state[name]).contiguous() for name, (hf, transposed) in names.items()}
    wte = state["wte.weight"][: gpt.vocab_size].contiguous()
    return out | {"transformer.wte.weight": wte, "lm_head.weight": wte}


def from_hf_state(hf_state: dict[str, torch.Tensor], gpt: GPTConfig) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel state dict -> seqwarm state dict, refusing what seqwarm's GPT cannot hold.

    An untied output layer (lm_head different from wte) has no counterpart: seqwarm ties them.
    Any other parameter without a counterpart is refused too. (Shapes follow from config.json,
    which transformers has checked the weights against.)
    """
    hf = {k: v.detach().to(torch.float32) for k, v in hf_state.items() if not _MASK_BUFFER.search(k)}
    if "transformer.wte.weight" not in hf:
        raise SeqwarmError("transformer.wte.weight: missing from the Hugging Face checkpoint")
    wte = hf.pop("transformer.wte.weight")
    lm_head = hf.pop("lm_head.weight", None)
    if lm_head is not None and not torch.equal(lm_head, wte):
        raise SeqwarmError(
            "lm_head.weight differs from transformer.wte.weight: an untied output layer, which seqwarm's GPT "
            "(tied input/output embedding) cannot represent"
        )
    state = {}
    for name, (hf_name, transposed) in _name_map(gpt.n_layer).items():
        if hf_name not in hf:
            raise SeqwarmError(f"{hf_name}: missing from the Hugging Face checkpoint")
        tensor = hf.pop(hf_name)
        state[name] = (tensor.T if transposed else tensor).contiguous()
    if hf:
        raise SeqwarmError(f"no seqwarm counterpart for the Hugging Face parameter(s) {', '.join(sorted(hf))}")
    padded = torch.zeros(gpt.padded_vocab_size, gpt.d_model)
    padded[: gpt.vocab_size] = wte
    state["wte.weight"] = padded
    return state


def gpt2_config(gpt: GPTConfig, eot_id: int = EOT_ID):
    """The transformers GPT2Config of a seqwarm model; `<|endoftext|>` (`eot_id`) is its bos and eos, as in GPT-2."""
    check_gpt2_options(gpt)
    transformers = require_transformers()
    return transformers.GPT2Config(
        vocab_size=gpt.vocab_size,
        n_positions=gpt.max_seqlen,
        n_embd=gpt.d_model,
        n_layer=gpt.n_layer,
        n_head=gpt.n_head,
        n_inner=None,  # 4 * n_embd
        activation_function=GPT2_ACTIVATIONS[gpt.activation],  # the GELU seqwarm's MLP computes
        resid_pdrop=gpt.dropout,
        embd_pdrop=gpt.dropout,
        attn_pdrop=gpt.dropout,
        layer_norm_epsilon=LAYER_NORM_EPS,
        scale_attn_weights=True,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        tie_word_embeddings=True,
        architectures=["GPT2LMHeadModel"],
    )


def gpt2_config_problems(config) -> list[str]:
    """What in an HF config.json seqwarm's GPT cannot reproduce (empty: it maps exactly)."""
    get = lambda key, default=None: getattr(config, key, default)  # noqa: E731
    problems = []
    if get("model_type") != "gpt2":
        return [f"model_type is {get('model_type')!r}, not 'gpt2'"]
    if get("vocab_size") != VOCAB_SIZE:
        # Another vocabulary would need its tokenizer to be the one the run's data was prepared
        # with, which nothing here can check: import takes GPT-2's only.
        problems.append(
            f"vocab_size is {get('vocab_size')}, not GPT-2's {VOCAB_SIZE} (import-hf takes GPT-2-vocabulary models only)"
        )
    if get("activation_function") not in HF_ACTIVATIONS:
        problems.append(
            f"activation_function is {get('activation_function')!r}; seqwarm's MLP is a GELU ({' or '.join(HF_ACTIVATIONS)})"
        )
    if get("layer_norm_epsilon") != LAYER_NORM_EPS:
        problems.append(f"layer_norm_epsilon is {get('layer_norm_epsilon')}, seqwarm's LayerNorm uses {LAYER_NORM_EPS}")
    if get("n_inner") not in (None, 4 * get("n_embd")):
        problems.append(f"n_inner is {get('n_inner')}; seqwarm's MLP is 4 * n_embd = {4 * get('n_embd')} wide")
    if get("n_embd") % get("n_head"):
        problems.append(f"n_embd ({get('n_embd')}) is not divisible by n_head ({get('n_head')})")
    if not get("scale_attn_weights", True):
        problems.append("scale_attn_weights is false; seqwarm scales attention scores by 1/sqrt(head size)")
    if get("scale_attn_by_inverse_layer_idx", False):
        problems.append("scale_attn_by_inverse_layer_idx is true; seqwarm does not scale attention by layer")
    if get("add_cross_attention", False):
        problems.append("add_cross_attention is true; seqwarm's GPT is decoder-only")
    return problems


def gpt2_tokenizer(max_length: int):
    """The exact GPT-2 BPE as a transformers fast tokenizer, built offline from the verified files.

    Built as a `tokenizers.Tokenizer` (byte-level BPE, GPT-2's pre-tokenization) and wrapped, which
    works across transformers versions; the files are read as data (docs/DATA.md: handing their paths
    to `GPT2TokenizerFast(vocab_file=...)` silently yields an empty vocabulary).
    """
    transformers = require_transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab_bpe, encoder_json = gpt2_files()
    vocab = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")[1:]  # the first line is a version header
    merges = [tuple(line.split()) for line in lines if line.strip()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    eot = "<|endoftext|>"
    return transformers.GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot, model_max_length=max_length
    )


def hf_tokenizer(tok: Tokenizer, max_length: int):
    """A seqwarm tokenizer as a transformers fast tokenizer: GPT-2's exact BPE, or its tokenizer.json wrapped whole."""
    if tok.json is None:
        return gpt2_tokenizer(max_length)
    transformers = require_transformers()
    from tokenizers import Tokenizer as HFTokenizer

    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=HFTokenizer.from_str(tok.json),
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        model_max_length=max_length,
    )


@contextlib.contextmanager
def _claim_out(out: Path, force: bool, option: str, run: bool = False) -> Iterator[None]:
    """Hold `out` for the body: one writer per output directory, as for a run directory or `prepare --out`.

    The lock is beside `out` (`.NAME.lock`): `atomic_directory` replaces `out` whole, and a lock
    inside it would go with the old copy. An existing run directory given to import-hf is locked
    inside too, the lock a training run of it holds, so that `--force` never replaces a run that is
    training. A second writer is refused in one line before anything is written; what may be
    replaced is checked under the lock (`_check_out`), so two writers never both pass it.
    """
    check_writable(out, option, directory=True)  # first: the lock file is created beside `out`
    what = "import directory" if run else "export directory"
    with contextlib.ExitStack() as held:
        held.enter_context(directory_lock(out, inside=False, what=what))
        if run and out.is_dir():
            held.enter_context(directory_lock(out, what="run directory"))
        _check_out(out, force, option, run)
        yield


def _check_out(out: Path, force: bool, option: str, run: bool = False) -> None:
    """Never write into a user's non-empty directory: --force replaces only one seqwarm wrote (its seqwarm.json)."""
    if not only_lock(out) and not force:
        raise SeqwarmError(f"{option} {out}: directory exists and is not empty (use --force to replace it)")
    made = (out / PROVENANCE).is_file() or (run and is_run_dir(out))  # `run`: import-hf's --out, a run directory
    if not only_lock(out) and not made:
        raise SeqwarmError(
            f"{option} {out}: not a directory seqwarm wrote (no {PROVENANCE}); --force replaces only those: "
            "choose another directory or empty it yourself"
        )


# --- export --------------------------------------------------------------------------------------


def export_hf(
    path: str | Path | SavedModel, out: str | Path, *, force: bool = False, tokenizer: Tokenizer | None = None
) -> Path:
    """`seqwarm export RUN_DIR|CHECKPOINT_DIR --hf OUT_DIR`: GPT2LMHeadModel + tokenizer, safetensors.

    The tokenizer is `tokenizer`, else that of the run's data (`seqwarm.data.corpus.trained_tokenizer`).
    """
    out = Path(out)
    with _claim_out(out, force, "--hf"):
        return _export(path, out, tokenizer)


def _export(path: str | Path | SavedModel, out: Path, tokenizer: Tokenizer | None) -> Path:
    saved = path if isinstance(path, SavedModel) else open_saved(path, doing="exporting")
    transformers = require_transformers()
    gpt = saved.gpt
    if tokenizer is None:
        from seqwarm.data.corpus import trained_tokenizer

        cfg = saved.config()
        tokenizer = trained_tokenizer(gpt.vocab_size, cfg.data.path if cfg else None, saved.checkpoint)
    if tokenizer.vocab_size != gpt.vocab_size:
        raise SeqwarmError(
            f"{saved.checkpoint}: vocabulary of {gpt.vocab_size} tokens; tokenizer {tokenizer.name} has {tokenizer.vocab_size}"
        )
    if gpt.family == "llama":
        hf_class, to_hf = getattr(transformers, hf_llama.class_name(gpt)), hf_llama.to_hf_state
        model = hf_class(hf_llama.hf_config(transformers, gpt, tokenizer.eot_id))
    else:
        model, to_hf = transformers.GPT2LMHeadModel(gpt2_config(gpt, tokenizer.eot_id)), to_hf_state
    try:
        weights = load_weights(saved.checkpoint)
        model.load_state_dict(to_hf(weights, gpt), strict=True)
    except (OSError, SafetensorError, RuntimeError, KeyError) as e:  # missing, truncated or another model's
        raise SeqwarmError(
            f"{saved.checkpoint / 'model.safetensors'}: does not hold the model state.json describes ({first_line(e)})"
        ) from None
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)  # safetensors, the tied output layer stored once
        hf_tokenizer(tokenizer, gpt.max_seqlen).save_pretrained(tmp)
        provenance = {"seqwarm": __version__, "exported_from": saved.describe(), "tokenizer": tokenizer.name}
        if tokenizer.json is not None:
            provenance["tokenizer_sha256"] = tokenizer.sha256()
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out


# --- import --------------------------------------------------------------------------------------

MODEL_FIELDS = ("n_layer", "n_head", "d_model", "max_seqlen")


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    config: str | None = None,
    overrides: list[str] = (),
    *,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """`seqwarm import-hf HF_DIR --out RUN_DIR [CONFIG] [key=value ...]`: a run that starts from HF GPT-2 weights.

    The model section comes from config.json (everything but `model.dropout`, which stays the
    config's); the rest is CONFIG with its overrides, so the run trains on `data.path` with the
    config's optimizer and curriculum. The run directory gets config.yaml and a checkpoint at step
    0 (imported weights, fresh Adam state, clock at zero); `seqwarm train --resume RUN_DIR` starts
    training from there, and `seqwarm eval RUN_DIR` evaluates the imported model as it is.
    """
    hf_dir, out = Path(hf_dir), Path(out)
    with _claim_out(out, force, "--out", run=True):
        return _import(hf_dir, out, config, overrides, progress)


def _import(hf_dir: Path, out: Path, config: str | None, overrides: list[str], progress: bool) -> Path:
    if not (hf_dir / "config.json").is_file():
        raise SeqwarmError(f"{hf_dir}: not a Hugging Face model directory (no config.json)")
    set_by_hf = {f"model.{f}" for f in ("preset", "vocab_size", "activation", *MODEL_FIELDS, *hf_llama.IMPORTED)}
    fixed = [o for o in overrides if o.partition("=")[0].strip() in set_by_hf]
    if fixed:
        raise ConfigError(
            f"{fixed[0].partition('=')[0]}: set by {hf_dir / 'config.json'}; only model.dropout can be chosen on import"
        )
    transformers = require_transformers()
    try:
        hf_config = transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise SeqwarmError(f"{hf_dir / 'config.json'}: cannot be read by transformers ({first_line(e)})") from None
    llama = getattr(hf_config, "model_type", None) in hf_llama.MODEL_TYPES
    problems = (hf_llama.config_problems if llama else gpt2_config_problems)(hf_config)
    if problems:
        what = hf_llama.MODEL_TYPES[hf_config.model_type] if llama else "GPT-2"
        raise SeqwarmError(f"{hf_dir / 'config.json'}: not seqwarm's {what} architecture: {'; '.join(problems)}")
    if llama:
        shape = hf_llama.imported_shape(hf_config)
    else:
        shape = dict(zip(MODEL_FIELDS, (hf_config.n_layer, hf_config.n_head, hf_config.n_embd, hf_config.n_positions)))
        # Explicit, not `auto`: data prepared with another tokenizer is the one-line vocabulary error.
        shape["vocab_size"] = hf_config.vocab_size
        shape["activation"] = HF_ACTIVATIONS[hf_config.activation_function]
    cfg = load_config(
        config, [*overrides, "model.preset=null", *(f"model.{k}={v}" for k, v in shape.items()), f"run.dir={out}"]
    )
    state = _read_hf_weights(transformers, hf_dir, cfg.model.gpt())

    from seqwarm.data.corpus import open_data
    from seqwarm.trainer import build, save  # the trainer writes its own kind of checkpoint

    data = open_data(cfg, progress)
    with atomic_directory(out) as tmp:
        trainer = build(cfg, tmp, data)
        trainer.model.load_state_dict(state)
        save(trainer)
        save_config(cfg, tmp / "config.yaml")
        write_marker(tmp)  # a run seqwarm made: `train --resume` continues it, `--force` may replace it
        provenance = {"seqwarm": __version__, "imported_from": str(hf_dir.resolve()), "hf_config": hf_config.to_dict()}
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    return out


def _read_hf_weights(transformers, hf_dir: Path, gpt: GPTConfig) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as a seqwarm state dict; any weight transformers had to invent is an error."""
    if not any((hf_dir / name).is_file() for name in SAFETENSORS):
        pickles = sorted(p.name for p in hf_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise SeqwarmError(
                f"{hf_dir / pickles[0]}: pickled PyTorch weights are refused (loading a pickle can run any code); "
                "import-hf reads model.safetensors only: convert it with a tool you trust"
            )
        raise SeqwarmError(f"{hf_dir / SAFETENSORS[0]}: missing; import-hf reads safetensors weights only")
    try:
        hf_class = transformers.AutoModelForCausalLM if gpt.family == "llama" else transformers.GPT2LMHeadModel
        model, info = hf_class.from_pretrained(
            hf_dir, local_files_only=True, output_loading_info=True, use_safetensors=True
        )
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise SeqwarmError(f"{hf_dir}: cannot load the weights ({first_line(e)})") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if not _MASK_BUFFER.search(k))
    unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not _MASK_BUFFER.search(k))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing:
        raise SeqwarmError(f"{hf_dir}: weights missing from the checkpoint: {', '.join(missing)}")
    if unexpected or mismatched:
        raise SeqwarmError(f"{hf_dir}: weights seqwarm's GPT cannot hold: {', '.join(unexpected + mismatched)}")
    return (hf_llama.from_hf_state if gpt.family == "llama" else from_hf_state)(model.state_dict(), gpt)
