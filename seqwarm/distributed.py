"""Several processes, one run: torchrun's environment, DDP/FSDP2 wrapping, collectives, full state dicts.

`torchrun --nproc_per_node N -m seqwarm train CONFIG` starts N copies of the same command. Each reads
its rank from the environment torchrun sets; all build the same config, the same model (same seed)
and the same data order, and each trains on its own contiguous share of every global batch
(`TrainLoader(rank=, world_size=)`). Gradients are averaged by DDP (or reduce-scattered by FSDP2),
so the update is the single-process one: the loss of each share is scaled by `world_size` (see
`train_step`). The SLW length, the batch size, the LR and the token clock are computed on every rank
from the same global quantities, so they agree without communication.

Checkpoints hold full, unsharded tensors in the single-process layout whatever the parallelism, so
a run resumes with any number of processes and either wrapper (docs/DISTRIBUTED.md).
Without torchrun (no WORLD_SIZE in the environment, or 1) every helper here is a no-op.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from seqwarm.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes logs, progress, checkpoints and the summary."""
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    """The process's place in the job, from the variables torchrun sets (a plain run is rank 0 of 1)."""
    try:
        return DistEnv(
            rank=int(os.environ.get("RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK: not integers in the environment ({e})") from None


def init(env: DistEnv, device: torch.device, timeout_s: float) -> bool:
    """Join the process group: nccl on CUDA, gloo on CPU.

    The timeout bounds every collective: if a rank dies or hangs, the others fail with an error
    after `train.dist_timeout_s` instead of waiting forever (torchrun also stops the rest of a
    node's workers as soon as one of them exits with an error). Returns whether this call joined (and so should leave) the group.
    """
    if not env.enabled or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return True


# How long `shutdown` gives the backend's worker threads to release the last collectives' tensors.
_DRAIN_S = 0.2


def shutdown() -> None:
    """Leave the process group, and let its worker threads finish before the interpreter does.

    A gloo worker thread drops its reference to a collective's tensors just after the collective
    completes, and that needs the GIL. If the main thread reaches interpreter finalization first,
    the worker thread is killed inside `take_gil` and the process aborts ("terminate called
    without an active exception", SIGABRT): 5 in 110 runs of the tiny 2-process FSDP2 test, 1 in 3 of
    the script in `test_ranks_exit_cleanly_right_after_the_last_collective`. `destroy_process_group`
    does not join these threads while DDP or FSDP2 still holds the group (they do until exit), so
    we release the GIL long enough for them to drain. NCCL's watchdog thread also releases finished
    work, so the wait is not specific to gloo; 0.2 s at the end of a run is nothing.
    """
    if dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(_DRAIN_S)


def wrap(model: nn.Module, env: DistEnv, parallel: str, device: torch.device) -> nn.Module:
    """The module that runs forward/backward: the model itself, DDP around it, or the model sharded in place.

    FSDP2 shards each Transformer block, then the root (embeddings, final LayerNorm), so one block's
    parameters are gathered at a time.
    """
    if not env.enabled:
        return model
    if parallel == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In place, across ranks (sum or max); the tensor itself when single-process."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def broadcast(obj, env: DistEnv):
    """Rank 0's `obj` on every rank (a picklable Python object)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 DTensor; any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of a DTensor (a collective); any other tensor as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def gather_dicts(d: dict, env: DistEnv) -> dict:
    """The union of every rank's dict (keys must differ), on every rank."""
    if not env.enabled:
        return d
    parts = [None] * env.world_size
    dist.all_gather_object(parts, {k: v.cpu() for k, v in d.items()})
    return {k: v for part in parts for k, v in part.items()}


def is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "to_local") for p in model.parameters())


# --- full state dicts: the checkpoint layout, whatever the parallelism -----------------------------


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's state dict with whole tensors (under FSDP a collective, complete on rank 0 only)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # cpu_offload: the whole model lands in rank 0's host memory only (the other ranks get {}).
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """torch's optimizer state dict layout (integer parameter ids), with whole tensors."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    # Keyed by parameter name here; renumbered in param_groups order, as optimizer.state_dict() does.
    named = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not named:
        return {}  # not rank 0
    ids, groups = {}, []
    for group in named["param_groups"]:
        groups.append({**group, "params": [ids.setdefault(name, len(ids)) for name in group["params"]]})
    return {"state": {ids[name]: value for name, value in named["state"].items()}, "param_groups": groups}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict, optimizer_state: dict | None
) -> None:
    """Load single-process-layout state dicts into a plain, DDP-wrapped or FSDP2-sharded model."""
    if not is_sharded(model):
        model.load_state_dict(model_state)
        if optimizer is not None and optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    if optimizer is not None and optimizer_state is not None:
        by_param = {id(p): name for name, p in model.named_parameters()}
        order = [by_param[id(p)] for group in optimizer.param_groups for p in group["params"]]
        named = {
            "state": {order[i]: value for i, value in optimizer_state["state"].items()},
            "param_groups": [
                {**group, "params": [order[i] for i in group["params"]]} for group in optimizer_state["param_groups"]
            ],
        }
        set_optimizer_state_dict(model, optimizer, named, options=options)
