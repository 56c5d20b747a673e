import math

import pytest
import torch
import torch.nn.functional as F

from seqwarm.model import GPT, PRESETS, VOCAB_SIZE, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, d_model=64, max_seqlen=32)).eval()


def test_param_count_formula_matches_the_module(model):
    assert sum(p.numel() for p in model.parameters()) == model.cfg.n_params()


def test_gpt2_117m_has_124m_parameters_with_its_embeddings():
    # "117M" in the paper is GPT-2's published count; the same architecture has 124.4M with the
    # position table and the (padded) tied embedding, as Hugging Face's GPT2LMHeadModel does.
    cfg = GPTConfig(**PRESETS["gpt2-117m"])
    assert cfg.n_params() - (cfg.padded_vocab_size - VOCAB_SIZE) * cfg.d_model == 124_439_808


def test_any_length_up_to_max_and_vocab_never_padded(model):
    for T in (1, 7, 32):
        logits = model(torch.randint(0, VOCAB_SIZE, (3, T)))
        assert logits.shape == (3, T, VOCAB_SIZE)
    with pytest.raises(ValueError, match="exceeds the model's max_seqlen"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_attention_is_causal(model):
    x = torch.randint(0, VOCAB_SIZE, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % VOCAB_SIZE
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-5)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_truncated_input_equals_prefix_of_full_input(model):
    """Why truncation is sound: a causal model's outputs on a prefix do not depend on what follows."""
    x = torch.randint(0, VOCAB_SIZE, (2, 32))
    with torch.no_grad():
        assert torch.allclose(model(x[:, :8]), model(x)[:, :8], atol=1e-5)


def test_gpt2_initialisation():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=8, n_head=4, d_model=256, max_seqlen=64)
    m = GPT(cfg)
    assert m.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.blocks[0].mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert m.blocks[0].attn.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert m.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(m.blocks[0].attn.qkv.bias) == 0


def test_weight_decay_only_on_matrices(model):
    decay, no_decay = model.param_groups(0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("ignored", [True, False])
@pytest.mark.parametrize("chunk_size", [7, 64, 4096])
def test_chunked_linear_cross_entropy_matches_the_plain_loss_and_gradients(chunk_size, ignored):
    """The padded-vocabulary matmul with masked logits equals the plain path over the sliced
    vocabulary, in float64, with and without ignored (padding) targets."""

    from seqwarm.model import linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(2, 150, 32, dtype=torch.float64, requires_grad=True)
    weight = (0.1 * torch.randn(50304, 32, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(0, VOCAB_SIZE, (2, 150))
    if ignored:
        targets[:, ::7] = -100  # ignored (padding)
    plain = F.cross_entropy((hidden @ weight.T)[..., :VOCAB_SIZE].flatten(0, 1), targets.flatten(), reduction="sum")
    grads = torch.autograd.grad(plain, (hidden, weight))
    chunked = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    got = torch.autograd.grad(0.5 * chunked, (hidden, weight))  # the upstream gradient scales it
    assert torch.allclose(got[0], 0.5 * grads[0], atol=1e-9) and torch.allclose(got[1], 0.5 * grads[1], atol=1e-9)
    assert got[1][VOCAB_SIZE:].abs().max() == 0  # padding rows of the vocabulary are never predicted
    with torch.no_grad():
        assert linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size).item() == pytest.approx(
            plain.item()
        )


def test_the_output_layer_chunk_size_is_chosen_by_device():
    from seqwarm.loss import default_chunk_size

    assert default_chunk_size("cpu") < default_chunk_size("cuda")
    assert default_chunk_size(torch.device("cuda", 1)) == default_chunk_size("cuda")


# Each preset's numbers as the hand-written formula of seqwarm 0.2 gave them (GPTConfig.n_params with
# `per_block = 12 d^2 + 13 d`, flop_split at max_seqlen), before they were counted on the built modules.
PINNED = {
    "gpt2-117m": (124475904, 85056000, {"body": 510336000, "attention": 113246208, "output": 231800832}),
    "gpt2-1.5b": (1557686400, 1475561600, {"body": 8853369600, "attention": 943718400, "output": 482918400}),
    "gpt3-125m": (125262336, 85056000, {"body": 510336000, "attention": 226492416, "output": 231800832}),
    "gpt3-1.3b": (1315819520, 1208602624, {"body": 7251615744, "attention": 1207959552, "output": 618135552}),
    "cpu-small": (7265024, 793344, {"body": 4760064, "attention": 1572864, "output": 38633472}),
    "tiny": (3327744, 100096, {"body": 600576, "attention": 196608, "output": 19316736}),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_parameter_and_flop_counts_of_the_presets_are_pinned(name):
    cfg = GPTConfig(**PRESETS[name])
    n, body, split = PINNED[name]
    assert (cfg.n_params(), cfg.n_params(embeddings=False)) == (n, body)
    assert cfg.flop_split(cfg.max_seqlen) == split
    assert cfg.flops_per_token(cfg.max_seqlen) == sum(split.values())


def test_counting_on_the_meta_device_draws_no_random_numbers():
    # Counting builds the model on `meta`; a draw from the global generator would move every run's weights.
    before = torch.get_rng_state()
    GPTConfig(n_layer=3, n_head=2, d_model=48, max_seqlen=40).n_params()
    assert torch.equal(before, torch.get_rng_state())


def test_activation_option_is_the_exact_or_the_tanh_gelu():
    x = torch.randint(0, VOCAB_SIZE, (2, 16))
    torch.manual_seed(0)
    tanh = GPT(GPTConfig(n_layer=1, n_head=2, d_model=32, max_seqlen=16)).eval()
    torch.manual_seed(0)
    erf = GPT(GPTConfig(n_layer=1, n_head=2, d_model=32, max_seqlen=16, activation="gelu")).eval()
    assert tanh.state_dict().keys() == erf.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(tanh.state_dict().values(), erf.state_dict().values()))
    h = torch.randn(4, 32)
    assert torch.equal(erf.blocks[0].mlp.proj(F.gelu(erf.blocks[0].mlp.fc(h))), erf.blocks[0].mlp.forward(h))
    with torch.no_grad():
        assert not torch.equal(tanh(x), erf(x))  # same weights, another function
    with pytest.raises(ValueError, match="activation: 'relu' is not one of gelu_tanh, gelu"):
        GPTConfig(n_layer=1, n_head=2, d_model=32, max_seqlen=16, activation="relu")


@pytest.mark.parametrize(
    "change, message",
    [({"n_layer": 0}, "n_layer: must be a positive integer"), ({"n_head": 3}, "d_model (64) must be divisible")],
)
def test_options_are_checked_where_they_are_declared(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GPTConfig(**({"n_layer": 2, "n_head": 2, "d_model": 64, "max_seqlen": 8} | change))


def test_window_mask_is_the_causal_band():
    from seqwarm.model import window_mask

    T, w = 7, 3
    band = torch.tensor([[i - w < j <= i for j in range(T)] for i in range(T)])
    assert torch.equal(window_mask(T, torch.tensor(w)), band)
    assert torch.equal(window_mask(T, torch.tensor(T)), torch.ones(T, T, dtype=torch.bool).tril())


def test_a_window_as_long_as_the_input_is_causal_attention_and_a_short_one_is_not(model):
    x = torch.randint(0, VOCAB_SIZE, (2, 32))
    with torch.no_grad():
        causal = model(x)
        assert (model(x, window=torch.tensor(32)) - causal).abs().max().item() <= 1e-6
        assert (model(x, window=torch.tensor(1000)) - causal).abs().max().item() <= 1e-6
        short = model(x, window=torch.tensor(4))
    # The first 4 positions see the same keys either way; later ones lose the keys past the window.
    assert (short[:, :4] - causal[:, :4]).abs().max().item() <= 1e-6
    assert not torch.allclose(short[:, 4:], causal[:, 4:])
    # Each of the 2 layers looks 3 positions back with window 4, so token 5 reaches positions 5..11 only.
    y = x.clone()
    y[:, 5] = (y[:, 5] + 1) % VOCAB_SIZE
    with torch.no_grad():
        other = model(y, window=torch.tensor(4))
    assert torch.equal(other[:, 12:], short[:, 12:]) and not torch.equal(other[:, 11], short[:, 11])


def test_with_targets_forward_returns_the_summed_cross_entropy_and_its_extras(model):
    x, y = torch.randint(0, VOCAB_SIZE, (2, 16)), torch.randint(0, VOCAB_SIZE, (2, 16))
    y[0, :3] = -100
    with torch.no_grad():
        ce, extras = model(x, y)
        plain = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum")
    assert extras == {} and ce.item() == pytest.approx(plain.item(), rel=1e-5)


def test_one_compiled_graph_serves_every_window_and_length():
    """The trainer compiles the trunk with static shapes and marks the length dynamic; the window is a
    tensor input, so neither its value nor the length recompiles. A backend that counts graphs sees one."""
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = GPT(GPTConfig(n_layer=1, n_head=2, d_model=32, max_seqlen=64)).eval()
    m.compile_trunk(dynamic=False, backend=counting)
    with torch.no_grad():
        for T, w in [(16, 4), (24, 9), (40, 40), (64, 3)]:
            x = torch.randint(0, VOCAB_SIZE, (2, T))
            torch._dynamo.mark_dynamic(x, 1)  # as trainer._loss_sum does under SLW
            eager = m.hidden(x, torch.tensor(w))
            assert torch.allclose(m.trunk(x, torch.tensor(w)), eager, atol=1e-6)
    torch._dynamo.reset()
    assert len(graphs) == 1
