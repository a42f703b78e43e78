"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for a training task, and its sharded checkpoints.

Each transformer block of the student and of the EMA teacher is one FSDP unit, the rest of each model (embeddings,
final norm, heads) its root unit, and the guide heads one more: every rank holds 1/W of the parameters, gradients and
AdamW moments. The teacher is sharded exactly like the student, so the EMA update is a local operation on matching
shards. Compute runs in the precision's dtype (``MixedPrecisionPolicy.param_dtype``) with gradients reduced in fp32.

Checkpoints are ``torch.distributed.checkpoint`` folders (one file per rank plus metadata) beside a small ``meta.pt``
(step, RNG states, config). A sharded run loads them straight into its own shards on any number of ranks (DCP reshards
as it reads); a single unsharded process gathers them into full tensors first.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["full_state_dict", "is_sharded", "load_full", "load_sharded", "save_sharded", "shard_task"]

_PARAM_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}


def shard_task(task: Any, *, precision: str, reshard_after_forward: bool = True) -> None:
    """Shard the student, the teacher, the guide heads and the Gram teacher of `task` in place (call before building
    the optimizer: sharding replaces the parameters by DTensors).

    Frozen weights that the teacher (and the Gram teacher) share with the student under LoRA or freezing become one
    shard per model: ``fully_shard`` copies each unit's part of a parameter into new storage and replaces the
    parameter in that unit's modules only, so each model gets its own 1/W and the full tensor is freed once every
    model holding it is sharded. They are never updated, so the copies stay equal."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # SSLModel returns slices of its token tensors (views); nothing changes them in place, and the 2-process tests pin
    # the gradients to DDP's, so FSDP's generic caution about in-place ops on views is noise for this one module
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPSSLModel\) returned a view tensor")
    policy = MixedPrecisionPolicy(param_dtype=_PARAM_DTYPE.get(precision), reduce_dtype=torch.float32)
    for model in (task.student, task.teacher):
        for block in model.backbone.blocks:
            fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        fully_shard(model, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    if getattr(task, "guides", None) is not None:
        fully_shard(task.guides, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    gram = getattr(task, "gram_teacher", None)
    if gram is not None:  # frozen, forward only: sharded so that it too costs 1/W per rank
        for block in gram.blocks:
            fully_shard(block, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        fully_shard(gram, mp_policy=policy, reshard_after_forward=reshard_after_forward)


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def save_sharded(path: Path, task: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
                 *, is_main: bool) -> None:
    """Collective: write the sharded task and optimizer state into the folder `path` (through a temporary folder,
    renamed into place by the main process) and `meta` (small, plain values) as ``meta.pt``."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    tmp = path.with_name(f".{path.name}.tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()
    model_state, optim_state = get_state_dict(task, optimizer)
    dcp_save({"task": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp))
    if is_main:
        torch.save(meta, tmp / "meta.pt")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    if dist.is_initialized():
        dist.barrier()


def load_sharded(path: Path, task: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: load a folder written by :func:`save_sharded` straight into the shards of `task` and `optimizer`,
    on any number of ranks (DCP reshards as it reads: no process holds more than its own shards)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    model_state, optim_state = get_state_dict(task, optimizer)
    dcp_load({"task": model_state, "optimizer": optim_state}, checkpoint_id=str(path))  # fills both in place
    set_state_dict(task, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)


def load_full(task: nn.Module, optimizer: torch.optim.Optimizer, task_state: dict[str, Any],
              optim_state: dict[str, Any]) -> None:
    """Load full (unsharded) states, as :func:`metadino.train.checkpoint.load_checkpoint_file` gathers them from a
    sharded checkpoint, into `task` and `optimizer`, sharded or not: resuming on another number of ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(task, optimizer, model_state_dict=task_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=is_sharded(task)))


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the unsharded state of `module` on the CPU of rank 0 (empty on the other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full: dict[str, torch.Tensor] = get_model_state_dict(  # type: ignore[assignment]  # tensors only, in our modules
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return full
