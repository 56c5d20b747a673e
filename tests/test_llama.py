"""The Llama-style family (seqwarm/llama.py, issue 24): its forward against a hand-written reference, positions
from 0 in every truncated row, grouped KV heads, presets, one compiled graph across lengths, and a tiny SLW run
that resumes bit-exactly after a kill."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqwarm.checkpoint import latest_checkpoint
from seqwarm.cli import main
from seqwarm.config import load_config
from seqwarm.lifecycle import train
from seqwarm.metrics import read_metrics
from seqwarm.model import PRESETS, GPTConfig, build_model
from seqwarm.saved import open_saved

V = 97
TINY = dict(family="llama", n_layer=2, n_head=4, d_model=32, max_seqlen=32, vocab_size=V)


def randomised(cfg: GPTConfig, seed: int = 0):
    """A model whose every parameter is random, norm gains included (gains of 1 would hide a mapping mistake)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.2))
    return model.eval()


def reference_logits(model, idx: torch.Tensor) -> torch.Tensor:
    """The Llama forward written out from the paper's formulas, sharing no code with seqwarm/layers.py: RMSNorm
    x / rms(x) * g; RoPE as a complex rotation of the pairs (x_i, x_{i + hs/2}) by p * theta^(-2i/hs); softmax
    attention with an explicit causal mask; silu(gate) * up; repeated KV heads for GQA."""
    cfg = model.cfg
    sd = {k: v.double() for k, v in model.state_dict().items()}
    nh, nkv, hs = cfg.n_head, cfg.kv_heads, cfg.d_model // cfg.n_head
    T = idx.shape[1]

    def rms(x, g):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.norm_eps) * g

    freqs = torch.tensor([[p * cfg.rope_theta ** (-2 * i / hs) for i in range(hs // 2)] for p in range(T)])
    rot = torch.polar(torch.ones_like(freqs), freqs).to(torch.complex128)  # (T, hs/2)

    def rope(x):  # (B, h, T, hs)
        z = torch.complex(x[..., : hs // 2], x[..., hs // 2 :]) * rot
        return torch.cat([z.real, z.imag], dim=-1)

    x = sd["wte.weight"][idx]
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm_1.weight"])
        q, k, v = (h @ sd[p + "attn.qkv.weight"].T).split([nh * hs, nkv * hs, nkv * hs], -1)
        q, k, v = (t.view(*t.shape[:2], -1, hs) for t in (q, k, v))
        if cfg.qk_norm:
            q, k = rms(q, sd[p + "attn.q_norm.weight"]), rms(k, sd[p + "attn.k_norm.weight"])
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = rope(q), rope(k)
        k, v = (t.repeat_interleave(nh // nkv, 1) for t in (k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(*x.shape)
        x = x + y @ sd[p + "attn.proj.weight"].T
        h = rms(x, sd[p + "norm_2.weight"])
        x = (
            x
            + (F.silu(h @ sd[p + "mlp.gate.weight"].T) * (h @ sd[p + "mlp.up.weight"].T)) @ sd[p + "mlp.down.weight"].T
        )
    x = rms(x, sd["norm.weight"])
    out = sd["wte.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    return (x @ out.T)[..., : cfg.vocab_size]


@pytest.mark.parametrize(
    "options", [{}, {"qk_norm": True}, {"n_kv_head": 2}, {"n_kv_head": 1, "tie_embeddings": False, "rope_theta": 500.0}]
)
def test_the_forward_equals_the_hand_written_reference(options):
    model = randomised(GPTConfig(**TINY | options)).double()
    idx = torch.randint(0, V, (2, 11))
    with torch.no_grad():
        got = model(idx)
    # float64 throughout, but the rotary tables are computed in fp32 as transformers computes them (so that the
    # exports agree): the difference is fp32's rounding of cos and sin, about 1e-7 relative.
    assert (got - reference_logits(model, idx)).abs().max().item() < 1e-5


def test_rms_norm_and_the_rotation_alone():
    from seqwarm.layers import RMSNorm, apply_rotary, rotary_tables

    norm = RMSNorm(4, eps=1e-5)
    x = torch.tensor([[3.0, -4.0, 0.0, 0.0]])  # mean square 6.25, rms 2.5
    assert torch.allclose(norm(x), x / math.sqrt(6.25 + 1e-5))
    cos, sin = rotary_tables(4, 3, theta=100.0)  # frequencies 1 and 1/10
    v = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, 1, 3, 4)  # the pair (x_0, x_2) = (1, 0)
    r = apply_rotary(v, cos, sin)[0, 0]
    for p in range(3):  # position p rotates the pair by p radians: (cos p, sin p)
        assert r[p].tolist() == pytest.approx([math.cos(p), 0.0, math.sin(p), 0.0], abs=1e-6)


def test_a_truncated_row_is_the_prefix_of_the_full_one():
    """Why SLW's truncation is sound for this family too: a row of T tokens has positions 0..T-1 (the first
    T rows of the rotary tables), so its outputs are those of the full row's first T positions."""
    model = randomised(GPTConfig(**TINY))
    x = torch.randint(0, V, (2, 32))
    with torch.no_grad():
        full = model(x)
        for T in (1, 8, 17):
            assert torch.allclose(model(x[:, :T]), full[:, :T], atol=1e-5)
        y = x.clone()
        y[:, 20:] = (y[:, 20:] + 1) % V
        assert torch.equal(model(y)[:, :20], full[:, :20]) or torch.allclose(model(y)[:, :20], full[:, :20], atol=1e-6)


def test_grouped_kv_heads_equal_multi_head_attention_with_the_kv_heads_repeated():
    gqa = randomised(GPTConfig(**TINY | {"n_kv_head": 2}))
    mha = build_model(GPTConfig(**TINY)).eval()
    state = dict(gqa.state_dict())
    nh, nkv, hs = 4, 2, 8
    for i in range(2):
        w = state[f"blocks.{i}.attn.qkv.weight"]
        q, k, v = w.split([nh * hs, nkv * hs, nkv * hs])
        rep = lambda t: t.view(nkv, hs, -1).repeat_interleave(nh // nkv, 0).reshape(nh * hs, -1)  # noqa: E731
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(state)
    x = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        assert torch.allclose(gqa(x), mha(x), atol=1e-5)
    assert gqa.cfg.n_params() < mha.cfg.n_params()


def test_llama_options_are_checked():
    for change, message in [
        ({"n_kv_head": 3}, "n_kv_head: 3 does not divide n_head"),
        ({"activation": "gelu"}, "activation: 'gelu' is GPT-2's option"),
        ({"family": "t5"}, "family: 't5' is not one of gpt2, llama"),
    ]:
        with pytest.raises(ValueError, match=message):
            GPTConfig(**TINY | change)
    with pytest.raises(ValueError, match="rope_theta: the gpt2 family has learned positions"):
        GPTConfig(**TINY | {"family": "gpt2", "rope_theta": 1e6})


def test_the_presets_and_the_llama_proxy_match_their_gpt2_counterparts():
    for gpt2, llama in [("gpt2-117m", "llama-117m"), ("gpt3-125m", "llama-125m")]:
        a, b = GPTConfig(**PRESETS[gpt2]), GPTConfig(**PRESETS[llama])
        assert (a.n_layer, a.d_model, a.n_head, a.max_seqlen) == (b.n_layer, b.d_model, b.n_head, b.max_seqlen)
        assert b.mlp_width == 2048  # Llama's rule: int(2/3 x 4 x 768) = 2048, a multiple of 256
        assert abs(b.n_params(embeddings=False) / a.n_params(embeddings=False) - 1) < 0.01
        assert b.flop_split(1024)["attention"] == a.flop_split(1024)["attention"]
    proxy, twin = load_config("proxy").model.gpt(), load_config("proxy-llama").model.gpt()
    assert twin.family == "llama" and (twin.n_layer, twin.d_model, twin.n_head) == (4, 128, 4)
    assert abs(twin.n_params(embeddings=False) / proxy.n_params(embeddings=False) - 1) < 0.10
    # the rest of the config is the proxy's: only the model and the run directory differ
    a, b = load_config("proxy").to_dict(), load_config("proxy-llama").to_dict()
    assert {k for k in a if a[k] != b[k]} == {"model", "run"}


def test_the_untied_output_layer_is_counted_outside_the_body():
    tied, untied = GPTConfig(**TINY), GPTConfig(**TINY | {"tie_embeddings": False})
    assert untied.n_params() - tied.n_params() == tied.padded_vocab_size * tied.d_model
    assert untied.n_params(embeddings=False) == tied.n_params(embeddings=False)


def test_one_compiled_graph_serves_every_length_and_window():
    """The rotary tables are sliced per length inside the graph: marking the length dynamic (as the trainer does
    under SLW) gives one graph for every length, with and without QK-norm and grouped KV heads."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    m = randomised(GPTConfig(**TINY | {"max_seqlen": 64, "qk_norm": True, "n_kv_head": 2}))
    m.compile_trunk(dynamic=False, backend=counting)
    with torch.no_grad():
        for T, w in [(16, 4), (24, 9), (40, 40), (64, 3)]:
            x = torch.randint(0, V, (2, T))
            torch._dynamo.mark_dynamic(x, 1)
            assert torch.allclose(m.trunk(x, torch.tensor(w)), m.hidden(x, torch.tensor(w)), atol=1e-5)
    torch._dynamo.reset()
    assert len(graphs) == 1


def test_a_tiny_llama_slw_run_killed_midway_resumes_bit_exactly(corpus_dir, tmp_path):
    """tiny-slw with the Llama family (QK-norm, grouped KV heads, SLW with drop_tail: false): killed at step 7,
    resumed from its step-5 checkpoint, its step-10 weights equal those of a run never interrupted."""
    overrides = [
        f"data.path={corpus_dir}",
        "train.num_threads=1",
        "model.family=llama",
        "model.qk_norm=true",
        "model.n_kv_head=1",
        "curriculum.drop_tail=false",
        "train.max_steps=10",
        "train.lr_decay_tokens=8000",
        "checkpoint.every_steps=5",
        "eval.every_tokens=null",
    ]
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(load_config("tiny-slw", [*overrides, f"run.dir={ref}"]), progress=False)

    def kill(clock):
        if clock.step == 7:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(load_config("tiny-slw", [*overrides, f"run.dir={run}"]), progress=False, on_step=kill)
    assert latest_checkpoint(run).name == "step-00000005"
    assert main(["train", "--resume", str(run)]) == 0
    a, b = (open_saved(d).model().state_dict() for d in (run, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "blocks.0.attn.q_norm.weight" in a and "wpe.weight" not in a
    rows = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    assert sorted(rows) == list(range(1, 11)) and rows[10] < rows[1]


def test_bf16_autocast_trains_the_family_close_to_fp32():
    """Under CPU bf16 autocast (train.precision: bf16) the norms compute in fp32 and the rotation in the
    activations' dtype, as transformers' Llama does: the loss stays within bf16's precision of fp32's and
    every parameter gets a finite gradient."""
    model = randomised(GPTConfig(**TINY | {"qk_norm": True, "n_kv_head": 2}))
    x, y = torch.randint(0, V, (4, 32)), torch.randint(0, V, (4, 32))
    fp32 = model(x, y)[0].item() / y.numel()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce, _ = model(x, y)
    (ce / y.numel()).backward()
    assert abs(ce.item() / y.numel() - fp32) < 0.05 * fp32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
