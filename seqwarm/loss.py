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


# --- z-loss and the output layer's instruments -----------------------------------------------------
#
# A sibling of `_LinearCrossEntropy` rather than a change to it: every existing caller (the model, the
# pinned loss curve, the benchmarks) keeps today's code path untouched, and tests/test_output_terms.py
# pins the two bit-identical (value and gradients) at z_loss = 0, so one can replace the other once the
# trainer's auxiliary-term channel (issue 23) lands.


class _OutputLayerTerms(torch.autograd.Function):
    """`_LinearCrossEntropy` plus the z-loss's gradient and the log-partition's statistics, in the same pass.

    z-loss (PaLM, Chowdhery et al. 2022, Section 5; Wortsman et al. 2023, Section 3.2) is
    coef * sum over valid targets of (log Z)^2, log Z = logsumexp of the row's logits; it pulls log Z
    toward 0 so that the output logits cannot drift together. Its gradient with respect to the logits is
    2 coef log Z * softmax, so the chunk's gradient becomes softmax * (1 + 2 coef log Z) - onehot: the same
    two matmuls as cross-entropy alone, only a per-row scale more.

    Outputs: `ce` (differentiable; its backward carries the z-loss's gradient too), `z` (the z-loss value,
    not differentiable: it is reported, never backpropagated on its own) and `stats` (not differentiable:
    [sum of log Z, valid rows, max log Z, max |logit|] over the valid rows). Folding the z gradient into
    `ce`'s backward keeps one matmul pair; backpropagating `ce` and `z` separately would need a second
    weight-gradient matmul, a third more work in the output layer.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab_size, chunk_size, ignore_index, z_coef: float, track: bool):
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        z = torch.zeros((), dtype=acc, device=hidden.device)
        stats = _new_stats(acc, hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            valid = y != ignore_index
            logp, logz = _log_probs_and_logz(h, weight, vocab_size, acc, valid, stats if track else None, z_coef)
            y = torch.where(valid, y, 0)
            total -= (logp.gather(1, y[:, None]).squeeze(1) * valid).sum()  # as _LinearCrossEntropy, op for op
            probs = logp.exp_()
            if z_coef:
                z += z_coef * (logz.square() * valid).sum()
                probs.mul_((1.0 + 2.0 * z_coef * logz)[:, None])  # d/dlogits coef (log Z)^2 = 2 coef log Z softmax
            probs[torch.arange(len(y), device=y.device), y] -= 1.0
            if not bool(valid.all()):
                probs.mul_(valid[:, None])
            dlogits = probs.to(h.dtype)
            grad_hidden[start : start + chunk_size] = dlogits @ weight
            grad_weight += dlogits.T @ h
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.mark_non_differentiable(z, stats)
        return total, z, stats

    @staticmethod
    def backward(ctx, grad_total, _grad_z, _grad_stats):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_total, grad_weight * grad_total, None, None, None, None, None, None


def _new_stats(acc: torch.dtype, device) -> torch.Tensor:
    """[sum of log Z, valid rows, max log Z, max |logit|], accumulated chunk by chunk on the device."""
    return torch.tensor([0.0, 0.0, float("-inf"), float("-inf")], dtype=acc, device=device)


def _log_probs_and_logz(h, weight, vocab_size: int, acc, valid, stats: torch.Tensor | None, z_coef: float):
    """`_log_probs` (the same ops, so the same bits) and, when z-loss or `stats` need it, the rows' log Z
    (else None); the valid rows are added to `stats` when given. Without either, nothing more is computed.

    log Z = max logit - max log-probability: at the argmax, log_softmax computes (x - max) - lse = -lse
    exactly, so this is max + lse without a second exp pass over the chunk (logsumexp would be one).
    """
    logits = (h @ weight.T).to(acc)
    if weight.shape[0] > vocab_size:
        logits[:, vocab_size:] = float("-inf")
    logp = torch.log_softmax(logits, dim=-1)
    if stats is None and not z_coef:
        return logp, None
    top = logits.amax(dim=-1)
    logz = top - logp.amax(dim=-1)
    if stats is not None:
        absmax = torch.maximum(top, -logits[:, :vocab_size].amin(dim=-1))  # the padding's -inf are not logits
        neg = torch.tensor(float("-inf"), dtype=acc, device=h.device)
        stats[0] += (logz * valid).sum()
        stats[1] += valid.sum()
        stats[2] = torch.maximum(stats[2], torch.where(valid, logz, neg).max())
        stats[3] = torch.maximum(stats[3], torch.where(valid, absmax, neg).max())
    return logp, logz


def output_layer_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_size: int = VOCAB_SIZE,
    z_loss: float = 0.0,
    stats: bool = False,
    chunk_size: int | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, torch.Tensor]:
    """The output layer's loss terms and instruments in one chunked pass (arguments as `linear_cross_entropy`).

    Returns, all 0-d tensors on the device (read them back together: one sync, not one each):

    - `ce`: the cross-entropy sum, bit-identical to `linear_cross_entropy` (with gradients or without).
      With `z_loss` > 0 its backward also carries the z-loss's gradient, so backpropagate `ce` (or
      `ce + z_loss`: `z_loss` is detached and adds no gradient of its own); the loss ratio, spikes and
      validation read `ce` alone.
    - `z_loss`: z_loss * sum over valid targets of (log Z)^2 (PaLM, Section 5: coefficient 1e-4, as Wortsman
      et al. 2023), detached; 0 when `z_loss` is 0.
    - with `stats`: `logz_mean`, `logz_max` (log Z over the valid targets; ln V at a uniform output) and
      `logit_absmax` (max |logit| over the real vocabulary of the valid rows), detached; NaN with no valid target.
    """
    if z_loss < 0:
        raise ValueError(f"z_loss: a coefficient >= 0, got {z_loss}")
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    chunk_size = chunk_size or default_chunk_size(hidden.device)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        ce, z, acc_stats = _OutputLayerTerms.apply(
            hidden, weight, targets, vocab_size, chunk_size, ignore_index, float(z_loss), stats
        )
    else:  # evaluation: the no-gradient path of linear_cross_entropy (nll_loss), op for op
        acc = torch.promote_types(weight.dtype, torch.float32)
        ce = torch.zeros((), dtype=acc, device=hidden.device)
        z = torch.zeros((), dtype=acc, device=hidden.device)
        acc_stats = _new_stats(acc, hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            y = targets[start : start + chunk_size]
            valid = y != ignore_index
            h = hidden[start : start + chunk_size]
            logp, logz = _log_probs_and_logz(h, weight, vocab_size, acc, valid, acc_stats if stats else None, z_loss)
            ce += F.nll_loss(logp, y, ignore_index=ignore_index, reduction="sum")
            if z_loss:
                z += z_loss * (logz.square() * valid).sum()
    terms = {"ce": ce, "z_loss": z}
    if stats:
        n = acc_stats[1]
        nan = torch.full_like(n, float("nan"))
        terms["logz_mean"] = torch.where(n > 0, acc_stats[0] / n, nan)
        terms["logz_max"] = torch.where(n > 0, acc_stats[2], nan)
        terms["logit_absmax"] = torch.where(n > 0, acc_stats[3], nan)
    return terms
