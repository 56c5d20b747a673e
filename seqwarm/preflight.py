"""Preflight (`train.preflight`, on by default): the largest step's memory, tried before step 1.

With SLW the longest sequences come last, so a run whose full-length step does not fit would find out hours in
(Composer allocates at full length up front for this reason). Before step 1, `preflight` runs one forward and
backward of one micro-batch at the largest length the step plan reaches, with the step's model inputs at their
costliest (diagnostics on when the instruments are), then restores everything it touched: it takes no
optimizer step (the weights and Adam's state are untouched), sets the gradients back to None as the optimizer's
`zero_grad` leaves them, restores the RNG states it drew from (dropout), and never reads the loader (its tokens
are zeros, the memory does not depend on their values). A run is therefore bit-identical with and without it.

An out-of-memory error there is a one-line `PreflightError` naming the length, the micro-batch and what to
change; `seqwarm.lifecycle.train` runs the preflight before it writes anything in the run directory.
Not covered: Adam's moments, allocated at the first optimizer step (2 x the parameters' memory).
"""

from __future__ import annotations

import contextlib

import torch

from seqwarm.errors import SeqwarmError
from seqwarm.loss import IGNORE_INDEX


class PreflightError(SeqwarmError):
    """The run's largest step does not fit in memory (exit 2, nothing written)."""


def largest_length(tr) -> int:
    """The longest sequence the run's step plan reaches: the curriculum's full length (every length axis ends there)."""
    return tr.cfg.curriculum.seqlen_end


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def preflight(tr, autocast, inputs: dict | None) -> None:
    """One forward and backward of a micro-batch at the largest length, then everything restored (see the module)."""
    seqlen, micro = largest_length(tr), tr.cfg.train.micro_batch_size
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if tr.device.type == "cuda" else None
    x = torch.zeros((micro, seqlen), dtype=torch.long, device=tr.device)
    if tr.cfg.train.compile and tr.plan.curriculum.varies_length:
        torch._dynamo.mark_dynamic(x, 1)  # as the steps mark it (trainer._loss_sum): the one graph they reuse
    try:
        with _local(tr.engine):
            with autocast:
                ce, terms = tr.engine(x, x, ignore_index=IGNORE_INDEX, **(inputs or {}))
                objective = ce + sum(v for k, v in terms.items() if k.startswith("aux/"))
            objective.backward()
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        del e  # its traceback holds the activations
        raise PreflightError(
            f"preflight: out of memory in one forward and backward of train.micro_batch_size={micro} sequences "
            f"at length {seqlen} (the largest step this run reaches, on {tr.device}); lower train.micro_batch_size "
            "(the global batch stays, accumulated over more micro-batches), or curriculum.seqlen_end or the model; "
            "train.preflight=false skips this check"
        ) from None
    finally:
        tr.model.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
            torch.cuda.empty_cache()


def _local(engine: torch.nn.Module):
    """No gradient communication for the preflight's backward under DDP (`no_sync`: the gradients stay in
    `param.grad`, which the restore clears). Not under FSDP2: without sync it accumulates the unsharded gradients
    in buffers of its own that `zero_grad` does not reach, and the first step's update would include them (the
    losses parted from step 2); with sync the preflight's reduce-scatter lands in the sharded `.grad`, cleared."""
    return engine.no_sync() if hasattr(engine, "no_sync") else contextlib.nullcontext()
