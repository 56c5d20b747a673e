"""Hugging Face interoperability of the llama family (issue 24): export to LlamaForCausalLM (Qwen3ForCausalLM with
QK-norm) loadable by AutoModelForCausalLM, import back, equal logits both ways, one-line refusals."""

import json
import os
from dataclasses import asdict

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: nothing here may reach the Hub
transformers = pytest.importorskip("transformers")

from seqwarm import hf_llama  # noqa: E402
from seqwarm.checkpoint import latest_checkpoint  # noqa: E402
from seqwarm.cli import main  # noqa: E402
from seqwarm.config import load_config  # noqa: E402
from seqwarm.errors import ConfigError  # noqa: E402
from seqwarm.hf import export_hf, to_hf_state  # noqa: E402
from seqwarm.lifecycle import train  # noqa: E402
from seqwarm.model import GPTConfig, build_model  # noqa: E402
from seqwarm.saved import open_saved  # noqa: E402

SHAPE = dict(family="llama", n_layer=2, n_head=4, d_model=32, max_seqlen=64)  # GPT-2's vocabulary (for import)
VARIANTS = {
    "llama": {},
    "qwen3 (qk_norm)": {"qk_norm": True},
    "gqa, untied, theta": {"n_kv_head": 2, "tie_embeddings": False, "rope_theta": 500000.0, "norm_eps": 1e-6},
    "qwen3 gqa": {"qk_norm": True, "n_kv_head": 1, "mlp_hidden": 40},
}


def random_model(cfg: GPTConfig, seed: int = 0):
    """Every parameter random, norm gains included (gains of 1 would hide a mapping mistake)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + torch.randn_like(p) * (0.15 if p.dim() > 1 else 0.2))
    return model.eval()


def write_checkpoint(model, path):
    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    (path / "state.json").write_text(json.dumps({"model": asdict(model.cfg), "clock": {"step": 3, "tokens": 96}}))
    return path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_and_import_give_equal_logits_both_ways(variant, tmp_path):
    cfg = GPTConfig(**SHAPE | VARIANTS[variant])
    model = random_model(cfg)
    out = export_hf(write_checkpoint(model, tmp_path / "step-00000003"), tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM")
    ids = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max().item() <= 1e-5  # seqwarm -> transformers
        # transformers -> seqwarm: a model of transformers' own random init, through the import mapping
        torch.manual_seed(2)
        theirs = type(hf)(hf.config).eval()
        for name, p in theirs.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.2)
        back = build_model(cfg).eval()
        back.load_state_dict(hf_llama.from_hf_state(theirs.state_dict(), cfg))
        assert (back(ids) - theirs(ids).logits).abs().max().item() <= 1e-5


def test_the_import_command_continues_training_an_export(tmp_path, corpus_dir, capsys):
    model = random_model(GPTConfig(**SHAPE | VARIANTS["qwen3 gqa"]))
    hf_dir = export_hf(write_checkpoint(model, tmp_path / "step-00000003"), tmp_path / "hf")
    run = tmp_path / "run"
    overrides = [f"data.path={corpus_dir}", "train.max_tokens=600", "train.num_threads=1", "eval.every_tokens=null"]
    assert main(["import-hf", str(hf_dir), "--out", str(run), "tiny-slw", *overrides]) == 0
    saved = open_saved(run)
    assert saved.gpt == model.cfg and latest_checkpoint(run).name == "step-00000000"
    imported, exported = saved.model().state_dict(), model.state_dict()
    exported["wte.weight"][50257:] = 0  # the vocabulary's padding rows: dropped on export, zeros on import
    assert imported.keys() == exported.keys() and all(torch.equal(imported[k], exported[k]) for k in imported)
    summary = train(load_config(run / "config.yaml", [f"run.dir={run}"]), resume=True, progress=False)
    assert summary["steps"] > 0
    capsys.readouterr()
    assert main(["eval", str(run), "--tasks", "val", "--no-progress"]) == 0  # the native scorers read it too
    assert "val" in capsys.readouterr().out
    # the options config.json sets cannot be chosen on the command line
    assert main(["import-hf", str(hf_dir), "--out", str(tmp_path / "r2"), "tiny-slw", "model.qk_norm=false"]) == 2
    assert "model.qk_norm: set by" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_act": "gelu"}, "hidden_act is 'gelu'"),
        ({"attention_bias": True}, "no biases"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope type 'linear'"),
        ({"vocab_size": 32000}, "vocab_size is 32000"),
    ],
)
def test_import_refuses_what_the_family_cannot_hold_in_one_line(tmp_path, capsys, change, message):
    model = random_model(GPTConfig(**SHAPE))
    hf_dir = export_hf(write_checkpoint(model, tmp_path / "step-00000003"), tmp_path / "hf")
    config = json.loads((hf_dir / "config.json").read_text()) | change
    if "rope_scaling" in change:
        config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (hf_dir / "config.json").write_text(json.dumps(config))
    capsys.readouterr()  # the export's progress bars
    assert main(["import-hf", str(hf_dir), "tiny-slw", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_the_gpt2_export_refuses_qk_norm_and_the_llama_family_in_one_line():
    gpt2 = GPTConfig(n_layer=1, n_head=2, d_model=16, max_seqlen=8, qk_norm=True)
    state = build_model(gpt2).state_dict()
    with pytest.raises(ConfigError, match=r"^model\.qk_norm: True has no counterpart in transformers' GPT2LMHeadModel"):
        to_hf_state(state, gpt2)
    llama = GPTConfig(**SHAPE)
    with pytest.raises(
        ConfigError, match=r"^model\.family: 'llama' has no counterpart in transformers' GPT2LMHeadModel"
    ):
        to_hf_state(random_model(llama).state_dict(), llama)
