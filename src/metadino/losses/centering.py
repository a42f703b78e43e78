"""Teacher-side centering: Sinkhorn-Knopp (DINOv2/v3) and softmax centering (DINOv1).

Both are exact across data-parallel ranks: every sum and row count is all-reduced, so W ranks holding
n_i rows each give the same result as one process on the concatenated batch (also for unequal n_i and
ranks with no rows). Collectives run only when torch.distributed is initialized with world size > 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metadino.precision import full_precision
from metadino.ranks import world_size

__all__ = ["SoftmaxCenter", "sinkhorn_knopp"]


def _all_reduce(x: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM,
                group: dist.ProcessGroup | None = None) -> Tensor:
    """In-place all-reduce of a (non-differentiable) tensor; a no-op on one process."""
    if world_size(group) > 1:
        dist.all_reduce(x, op=op, group=group)
    return x


def sinkhorn_knopp(teacher_logits: Tensor, teacher_temp: float, n_iterations: int = 3,
                   group: dist.ProcessGroup | None = None) -> Tensor:
    """Sinkhorn-Knopp normalization of teacher logits (DINOv2, Oquab et al. 2023), exact across ranks.

    Args:
        teacher_logits: [n, K] logits; n may be 0 on some ranks (iBOT: no masked token here). fp32, or half
            precision (upcast exactly into the buffer the result is computed in: the same result as for ``.float()``).
        teacher_temp: teacher temperature τ_t.
        n_iterations: number of row/column normalization rounds (3 in DINOv2/v3).
        group: process group for the all-reduces (default group when None).

    Returns:
        [n, K] fp32 probabilities; every row sums to 1.
    """
    with torch.no_grad(), full_precision(teacher_logits.device):
        half = teacher_logits.dtype in (torch.bfloat16, torch.float16)  # upcast in _sinkhorn_knopp, in one copy
        return _sinkhorn_knopp(teacher_logits if half else teacher_logits.float(), teacher_temp, n_iterations, group)


def _sinkhorn_knopp(logits: Tensor, teacher_temp: float, n_iterations: int, group: dist.ProcessGroup | None) -> Tensor:
    n, k = logits.shape
    # Per-prototype max over the global batch: scaling row k of Q by a constant is cancelled exactly by the
    # first row normalization, so this only prevents exp() overflow (reference: no shift).
    col_max = logits.amax(dim=0).float() if n > 0 else logits.new_full((k,), float("-inf"), dtype=torch.float32)
    _all_reduce(col_max, dist.ReduceOp.MAX, group)
    col_max = torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max))
    # In place on one fresh fp32 [n, K] buffer (the exact fp32 copy of half-precision logits): the same ops as
    # exp((logits.float() - col_max) / τ), bit for bit, without two or three more temporaries of the logits' size
    # (M x 65536 for iBOT), whose page faults cost more than the arithmetic on them.
    shifted = logits - col_max if logits.dtype == torch.float32 else logits.float().sub_(col_max)
    q = shifted.div_(teacher_temp).exp_().t()  # [K, n]

    n_total = _all_reduce(torch.tensor(float(n), device=logits.device), group=group)
    if n_total.item() == 0:
        return logits.new_zeros((0, k), dtype=torch.float32)
    # `tiny` guards against 0/0 when a whole row or column underflows (extreme logits only).
    tiny = torch.finfo(q.dtype).tiny
    q_sum = _all_reduce(q.sum(), group=group)
    q /= q_sum.clamp_min(tiny)
    for _ in range(n_iterations):
        row_sum = _all_reduce(q.sum(dim=1, keepdim=True), group=group)  # per prototype, global batch
        q /= row_sum.clamp_min(tiny)
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)  # per sample: local
        q /= n_total
    q *= n_total
    return q.t()


class SoftmaxCenter(nn.Module):
    """DINOv1 softmax centering: probs = softmax((x - center) / τ_t), center an EMA of the batch mean.

    Deviation from the reference: `update` applies the new center immediately (synchronous all-reduce) rather
    than deferring it to the next call, so a checkpoint taken after a step holds the exact state.
    """

    center: Tensor

    def __init__(self, out_dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def probs(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Centered, sharpened teacher probabilities.

        Args:
            teacher_logits: [n, K] logits.
            teacher_temp: teacher temperature τ_t.

        Returns:
            [n, K] fp32 probabilities.
        """
        with full_precision(teacher_logits.device):
            return torch.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, group: dist.ProcessGroup | None = None) -> None:
        """center <- m * center + (1 - m) * mean of `teacher_logits` over the global batch.

        Args:
            teacher_logits: [n, K] logits (n may differ per rank, or be 0).
            group: process group for the all-reduces (default group when None).
        """
        logits = teacher_logits.float()
        batch_sum = _all_reduce(logits.sum(dim=0, keepdim=True), group=group)
        count = _all_reduce(torch.tensor(float(logits.shape[0]), device=logits.device), group=group)
        if count.item() == 0:
            return
        self.center.mul_(self.momentum).add_(batch_sum / count, alpha=1.0 - self.momentum)
