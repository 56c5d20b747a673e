import math

import pytest
import torch

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
    n_layer, d_model, n_head, max_seqlen = PRESETS["gpt2-117m"]
    cfg = GPTConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, max_seqlen=max_seqlen)
    assert cfg.n_params() - (cfg.padded_vocab_size - VOCAB_SIZE) * d_model == 124_439_808


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
    import torch.nn.functional as F

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
