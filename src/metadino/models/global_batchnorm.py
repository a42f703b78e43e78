"""Batch normalisation over the global batch, always from batch statistics (DINO head option).

DINOv1's `use_bn_in_head`, made exact across data-parallel ranks: sums and counts are all-reduced with
autograd (``torch.distributed.nn.functional.all_reduce``), so W ranks give the same forward and backward as one
process on the concatenated batch, on CPU/gloo too (``nn.SyncBatchNorm`` is CUDA-only). There are no running
statistics: the EMA teacher normalises its own batch as DINOv1's teacher did (it ran in train mode), and the
heads are never used outside training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metadino.precision import full_precision
from metadino.ranks import is_distributed

__all__ = ["GlobalBatchNorm"]


class GlobalBatchNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, mean/var over every row of every rank (biased var)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, dim] (N may be 0 on some ranks). Statistics in fp32 under any autocast."""
        with full_precision(x.device):
            xf = x.float()
            stats = torch.cat([xf.sum(0), (xf * xf).sum(0), xf.new_full((1,), float(xf.shape[0]))])
            if is_distributed():
                from torch.distributed.nn.functional import all_reduce  # autograd-aware

                stats = all_reduce(stats)  # type: ignore[no-untyped-call]  # unannotated in torch
            d = xf.shape[1]
            count = stats[-1].detach().clamp_min(1.0)
            mean = stats[:d] / count
            var = (stats[d : 2 * d] / count - mean * mean).clamp_min(0.0)
            y = (xf - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y.to(x.dtype)
