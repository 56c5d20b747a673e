"""The stability instruments of issue 25 on hand-built inputs: attention logits and entropy on known
patterns, Adam's variance per parameter group, and the collapse and plateau events on scripted series."""

import math

import numpy as np
import pytest
import torch

from seqwarm import instruments as ins


def _qk(B=2, H=3, T=6, hs=4):
    return torch.zeros(B, H, T, hs), torch.zeros(B, H, T, hs)


def test_equal_keys_give_uniform_attention_entropy_one_and_max_logit_known():
    q, k = _qk()
    q[...] = 1.0
    k[...] = 0.5  # every key alike: each query's attention is uniform over the keys it may see
    top, entropy = ins.attention_stats(q, k)
    assert top.item() == pytest.approx(4 * 0.5 / math.sqrt(4))  # q.k / sqrt(hs) = 2 * 0.5 = 1.0
    assert entropy.item() == pytest.approx(1.0, abs=1e-6)
    # the same under a window: uniform over the window's keys is still 1
    assert ins.attention_stats(q, k, window=3)[1].item() == pytest.approx(1.0, abs=1e-6)


def test_one_key_with_a_huge_logit_gives_entropy_near_zero():
    q, k = _qk(T=8, hs=4)
    q[...] = 1.0
    k[:, :, 0] = 25.0  # key 0: logit 4 * 25 / 2 = 50 for every query; the others 0
    top, entropy = ins.attention_stats(q, k)
    assert top.item() == pytest.approx(50.0)
    assert 0 <= entropy.item() < 1e-18  # e^-50 of the mass elsewhere: one-hot to float precision
    # a window that leaves key 0 behind: from query 3 on (window 3) attention is uniform again
    _, windowed = ins.attention_stats(q, k, window=3)
    # queries 1, 2 see key 0 (entropy ~0); queries 3..7 do not (entropy 1): 5 of the 7 queries with >= 2 keys
    assert windowed.item() == pytest.approx(5 / 7, abs=1e-6)


def test_entropy_matches_a_direct_computation_and_does_not_depend_on_the_block_size():
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 8)
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(8)
    want = []
    for i in range(1, 9):  # query 0 has one key: left out
        p = torch.softmax(logits[..., i, : i + 1], dim=-1)
        want.append((-(p * p.log()).sum(-1) / math.log(i + 1)).flatten())
    mask = torch.ones(9, 9).tril().bool()
    top, entropy = ins.attention_stats(q, k)
    assert entropy.item() == pytest.approx(torch.cat(want).mean().item(), rel=1e-5)
    assert top.item() == pytest.approx(logits[..., mask].max().item(), rel=1e-6)
    small = ins.attention_stats(q, k, max_elements=1)  # one query row per block
    assert small[0].item() == top.item() and small[1].item() == pytest.approx(entropy.item(), rel=1e-6)
    assert math.isnan(ins.attention_stats(q[:, :, :1], k[:, :, :1])[1].item())  # T = 1: no query with 2 keys
    with pytest.raises(ValueError, match="window"):
        ins.attention_stats(q, k, window=0)


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("wte.weight", "embeddings"),
        ("wpe.weight", "embeddings"),
        ("blocks.3.attn.qkv.weight", "attention"),
        ("blocks.3.attn.proj.bias", "attention"),
        ("blocks.3.mlp.fc.weight", "mlp"),
        ("blocks.3.mlp.proj.weight", "mlp"),
        ("blocks.3.ln_1.weight", "norms"),
        ("ln_f.bias", "norms"),
        ("_orig_mod.module.blocks.0.attn.qkv.weight", "attention"),
        # the Llama-style names of the model to come
        ("model.embed_tokens.weight", "embeddings"),
        ("model.layers.0.self_attn.q_proj.weight", "attention"),
        ("model.layers.0.self_attn.o_proj.weight", "attention"),
        ("model.layers.0.self_attn.q_norm.weight", "norms"),  # QK-norm's gain: a norm
        ("model.layers.0.mlp.gate_proj.weight", "mlp"),
        ("layers.0.feed_forward.down.weight", "mlp"),
        ("model.layers.0.input_layernorm.weight", "norms"),
        ("model.norm.weight", "norms"),
        ("lm_head.weight", "output"),
        ("something.else", "other"),
    ],
)
def test_parameters_are_grouped_by_name(name, group):
    assert ins.parameter_group(name) == group


def test_adam_group_statistics_split_the_global_ones():
    from seqwarm.model import GPT, GPTConfig
    from seqwarm.monitor import adam_statistics

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, d_model=16, max_seqlen=8, vocab_size=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert ins.adam_group_statistics(ins.named_adam_variances(model, opt)) == {}  # no state yet
    x = torch.randint(0, 64, (2, 8))
    model(x, x)[0].backward()  # (ce_sum, extras)
    opt.step()
    stats = ins.adam_group_statistics(ins.named_adam_variances(model, opt))
    assert {k.split("/")[1] for k in stats} == {"embeddings", "attention", "mlp", "norms"}
    total_l1, total_max, _ = adam_statistics(opt).tolist()
    l1 = sum(v.item() for k, v in stats.items() if k.endswith("var_l1"))
    assert l1 == pytest.approx(total_l1, rel=1e-5)
    assert max(v.item() for k, v in stats.items() if k.endswith("var_max")) == pytest.approx(total_max, rel=1e-6)
    # each group's max is its own parameters' max of sqrt(v)
    attn = [opt.state[p]["exp_avg_sq"] for n, p in model.named_parameters() if ".attn." in n]
    assert stats["adam/attention/var_max"].item() == pytest.approx(max(v.max().sqrt().item() for v in attn))
    # a planted outlier in one group shows there, not elsewhere
    opt.state[model.blocks[1].mlp.fc.weight]["exp_avg_sq"][0, 0] = 1e6
    again = ins.adam_group_statistics(ins.named_adam_variances(model, opt))
    assert again["adam/mlp/var_max"].item() == pytest.approx(1e3)
    assert again["adam/attention/var_max"].item() == stats["adam/attention/var_max"].item()


def _row(step, entropies, logits, **extra):
    row = {"step": step, **extra}
    for layer, (e, m) in enumerate(zip(entropies, logits)):
        if e is not None:
            row[ins.attention_key(layer, "entropy")] = e
            row[ins.attention_key(layer, "max_logit")] = m
    return row


def test_collapse_needs_both_thresholds_and_records_layer_and_steps():
    rows = [
        _row(1, [0.9, 0.9], [2.0, 2.0]),
        _row(2, [0.05, 0.5], [4.0, 30.0]),  # layer 0 sharp at low logits, layer 1 big logits but spread: neither
        {"step": 3, "loss": 5.0},  # no instruments this step: changes nothing
        _row(4, [0.05, 0.5], [12.0, 30.0]),  # layer 0 collapses
        _row(5, [0.01, 0.08], [900.0, 11.0]),  # layer 1 too
        _row(6, [0.02, 0.3], [1500.0, 11.0]),  # layer 1 recovers
    ]
    assert ins.collapsed_layers(rows[4]) == [0, 1] and ins.collapsed_layers(rows[1]) == []
    assert ins.collapse_events(rows) == [
        {"layer": 0, "start": 4, "end": None, "min_entropy": 0.01, "max_logit": 1500.0},
        {"layer": 1, "start": 5, "end": 6, "min_entropy": 0.08, "max_logit": 11.0},
    ]
    # thresholds are parameters: a stricter logit threshold sees only layer 0, from step 5
    assert [(e["layer"], e["start"]) for e in ins.collapse_events(rows, logit_above=100.0)] == [(0, 5)]


def test_unigram_entropy_is_the_best_context_free_loss():
    assert ins.unigram_entropy(np.array([3, 3, 3, 3])) == 0.0
    assert ins.unigram_entropy(np.arange(8)) == pytest.approx(math.log(8))
    tokens = np.array([0] * 6 + [1] * 3 + [2])
    p = np.array([0.6, 0.3, 0.1])
    assert ins.unigram_entropy(tokens) == pytest.approx(-(p * np.log(p)).sum())
    # it is the cross-entropy of the frequencies themselves, below that of any other unigram model
    q = np.array([0.5, 0.3, 0.2])
    assert ins.unigram_entropy(tokens) < -(p * np.log(q)).sum()
    with pytest.raises(ValueError):
        ins.unigram_entropy(np.array([], dtype=np.int64))


def test_plateau_counts_steps_above_the_margin_and_the_escape():
    losses = [6.9, 5.2, 5.05, 5.1, float("nan"), 4.95, 4.85, 4.99, 4.5]
    rows = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
    rows.insert(3, {"step": 3, "val/loss": 5.0})  # an eval row: no training loss
    # unigram 5.0, margin 0.1: off the plateau at <= 4.9, first at step 7; 6.9 .. 4.95 and 4.99 are above
    assert ins.plateau(rows, 5.0) == {"steps_above": 7, "escape_step": 7}
    assert ins.plateau(rows, 5.0, margin=0.0) == {"steps_above": 5, "escape_step": 6}
    assert ins.plateau(rows, 3.0) == {"steps_above": 9, "escape_step": None}
    assert ins.plateau(rows, 5.0, key="val/loss") == {"steps_above": 1, "escape_step": None}
