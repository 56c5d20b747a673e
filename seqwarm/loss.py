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
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size: int, chunk_size: int, ignore_index: int):
        acc = torch.promote_types(weight.dtype, torch.float32)  # at least fp32 for sums and softmax
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = (h @ weight[:vocab_size].T).to(acc)  # (c, V): padded vocabulary rows never predicted
            lse = torch.logsumexp(logits, dim=-1)
            valid = y != ignore_index
            y = torch.where(valid, y, 0)
            total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * valid).sum()
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            probs[torch.arange(len(y), device=y.device), y] -= 1.0
            dlogits = (probs * valid[:, None]).to(h.dtype)
            grad_hidden[start : start + chunk_size] = dlogits @ weight[:vocab_size]
            grad_weight[:vocab_size] += dlogits.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_total, grad_weight * grad_total, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_size: int = VOCAB_SIZE,
    chunk_size: int = 512,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """sum over targets != ignore_index of -log softmax(hidden @ weight[:vocab_size].T)[target].

    hidden (..., C), targets (...). With gradients enabled it uses the chunked function above;
    without (evaluation), it skips the gradient work.
    """
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, vocab_size, chunk_size, ignore_index)
    acc = torch.promote_types(weight.dtype, torch.float32)
    total = torch.zeros((), dtype=acc, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        logits = (hidden[start : start + chunk_size] @ weight[:vocab_size].T).to(acc)
        total += F.cross_entropy(
            logits, targets[start : start + chunk_size], ignore_index=ignore_index, reduction="sum"
        )
    return total
