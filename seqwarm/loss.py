"""The output layer and the loss in one pass: chunked linear + cross-entropy.

The logits of a GPT-2 batch are the largest tensor of a training step (tokens x 50,257 floats, and
several more of that size for log-softmax and its gradient). `linear_cross_entropy` never forms them
whole: it computes them chunk by chunk of tokens, so the step's peak memory is one chunk's logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seqwarm.tokenizer import VOCAB_SIZE

IGNORE_INDEX = -100  # a target with this value (padding) has no loss and is not a trained token


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against targets, one chunk of tokens at a time.

    The logits of a GPT-2 batch dwarf everything else (tokens x 50257 floats, several copies for
    log-softmax and its gradients). Here each chunk's logits live only while that chunk is
    processed: its gradients with respect to `hidden` and `weight` are computed right away in the
    forward pass (the gradient of cross-entropy is softmax - onehot) and scaled in `backward`. The
    arithmetic is the same as the plain path; the peak memory is one chunk's logits.

    The matmuls run over the whole padded vocabulary (`weight` has a multiple of 64 rows), which
    keeps their shapes friendly to the BLAS kernels; the padding's logits are set to -inf, so they
    get probability 0, no loss and no gradient, exactly as if those rows were not there.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size: int, chunk_size: int, ignore_index: int):
        acc = torch.promote_types(weight.dtype, torch.float32)  # at least fp32 for sums and softmax
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logp = _log_probs(h, weight, vocab_size, acc)  # (c, V_padded)
            valid = y != ignore_index
            y = torch.where(valid, y, 0)
            total -= (logp.gather(1, y[:, None]).squeeze(1) * valid).sum()
            probs = logp.exp_()  # softmax, in place of the log-probabilities
            probs[torch.arange(len(y), device=y.device), y] -= 1.0
            if not bool(valid.all()):  # padding targets (rare in training): no gradient from their rows
                probs.mul_(valid[:, None])
            dlogits = probs.to(h.dtype)
            grad_hidden[start : start + chunk_size] = dlogits @ weight
            grad_weight += dlogits.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_total, grad_weight * grad_total, None, None, None, None


def _log_probs(h: torch.Tensor, weight: torch.Tensor, vocab_size: int, acc: torch.dtype) -> torch.Tensor:
    """log-softmax over the vocabulary of one chunk's logits, in `acc`; padded ids get -inf (probability 0)."""
    logits = (h @ weight.T).to(acc)
    if weight.shape[0] > vocab_size:
        logits[:, vocab_size:] = float("-inf")
    return torch.log_softmax(logits, dim=-1)


def default_chunk_size(device: torch.device | str) -> int:
    """Tokens per chunk of the output layer: the logits of one chunk are chunk x padded vocabulary
    floats. On the CPU, 1,024 tokens (206 MB at GPT-2's vocabulary): 9% faster than 512 and within 3%
    of 4,096 at a quarter of its memory (`benchmarks/bench_output_layer.py`, docs/PERFORMANCE.md); a
    GPU has the memory for larger chunks, which keep its matmuls busy."""
    return 8192 if torch.device(device).type == "cuda" else 1024


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_size: int = VOCAB_SIZE,
    chunk_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """sum over targets != ignore_index of -log softmax(hidden @ weight[:vocab_size].T)[target].

    hidden (..., C), targets (...); `weight` may have padding rows past `vocab_size`, which are
    never predicted. With gradients enabled it uses the chunked function above; without
    (evaluation), it skips the gradient work. `chunk_size`: default by device (`default_chunk_size`).
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    chunk_size = chunk_size or default_chunk_size(hidden.device)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, vocab_size, chunk_size, ignore_index)
    acc = torch.promote_types(weight.dtype, torch.float32)
    total = torch.zeros((), dtype=acc, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        logp = _log_probs(hidden[start : start + chunk_size], weight, vocab_size, acc)
        total += F.nll_loss(logp, targets[start : start + chunk_size], ignore_index=ignore_index, reduction="sum")
    return total
