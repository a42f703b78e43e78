"""SIGReg: sketched isotropic-Gaussian regularizer via the empirical characteristic function (LeJEPA,
Balestriero & LeCun 2025; used by FINO, arXiv 2606.05107).

For z [N, D], project on S random unit directions A [D, S], P = z A, and compare the empirical
characteristic function ECF(t) = mean_n exp(i P t) of every slice with the standard normal's φ(t) = exp(−t²/2)
on 17 knots t ∈ [−5, 5]:  loss = mean_s ∫ ((Re ECF − φ)² + (Im ECF)²) φ(t) dt  (trapezoid rule).

Distributed convention (world size W > 1, a deliberate deviation from FINO's released code):
the per-rank sums Σ_n cos/sin(P t) are all-reduced with a *differentiable* SUM and divided by the all-reduced
row count, so every rank's loss value is the loss of the global batch (exact also for unequal per-rank N).
The backward of a SUM all-reduce is a SUM all-reduce of the (identical) upstream gradients, so the gradient a
rank gets for its own rows is W × d(global loss)/d z_local. DDP/FSDP then *average* parameter gradients over
the W ranks, which cancels the W: the parameter gradient equals the single-process global-batch gradient.
Every rank must therefore run this forward and backward (as under DDP).

`reference_scaling=True` reproduces the reference instead: a non-differentiable all-reduce of the per-rank
means divided by W (identity gradient), so each rank's input gradient equals d(global loss)/d z_local and the
parameter gradient after DDP averaging is 1/W of the global-batch gradient. One process: both modes agree.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metadino.ranks import world_size

__all__ = ["DEFAULT_SIGREG_SEED", "SIGReg"]

DEFAULT_SIGREG_SEED = 67280421310721  # the reference's seed when no seed_step is given


class _AllReduceSum(torch.autograd.Function):
    """SUM all-reduce whose backward is a SUM all-reduce of the upstream gradient.

    Same math as torch.distributed.nn.functional.all_reduce (deprecated with a FutureWarning in torch 2.13).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class SIGReg(nn.Module):
    """Sliced ECF regularizer towards N(0, I); buffers `t`, `weights`, `target_phi` are fp32 [n_knots]."""

    t: Tensor
    weights: Tensor
    target_phi: Tensor

    def __init__(self, num_slices: int = 1024, t_max: float = 5.0, n_knots: int = 17,
                 reference_scaling: bool = False) -> None:
        super().__init__()
        self.num_slices = num_slices
        self.reference_scaling = reference_scaling
        t = torch.linspace(-t_max, t_max, n_knots, dtype=torch.float32)
        phi = torch.exp(-0.5 * t.square())
        self.register_buffer("t", t)
        self.register_buffer("weights", phi.clone())
        self.register_buffer("target_phi", phi.clone())

    def projections(self, dim: int, seed_step: int | None, device: torch.device, dtype: torch.dtype) -> Tensor:
        """[dim, num_slices] random directions with unit-norm columns, from a fresh generator on `device`.

        CPU and CUDA generators give different A for the same seed; all ranks share A within a step.
        """
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed_step) if seed_step is not None else DEFAULT_SIGREG_SEED)
        a = torch.randn(dim, self.num_slices, generator=gen, device=device, dtype=dtype)
        unit: Tensor = a / a.norm(p=2, dim=0)
        return unit

    def forward(self, z: Tensor, seed_step: int | None = None, group: dist.ProcessGroup | None = None) -> Tensor:
        """SIGReg loss of the (global) batch.

        Args:
            z: [N, D] features (rows on this rank; N may differ across ranks).
            seed_step: projection seed, usually the iteration; None uses DEFAULT_SIGREG_SEED.
            group: process group (default group when None); ignored unless torch.distributed is initialized.

        Returns:
            Scalar fp32 loss (0, attached to the graph, when the global batch is empty).
        """
        if z.dim() != 2:
            raise ValueError(f"SIGReg expects z of shape [N, D], got {tuple(z.shape)}")
        n, d = z.shape
        a = self.projections(d, seed_step, z.device, z.dtype)
        # P in z's dtype (bf16 under autocast, like the reference); the fp32 t buffer promotes P·t to fp32.
        x_t = (z @ a).unsqueeze(-1) * self.t  # [N, S, T]
        sums = torch.stack([torch.cos(x_t).sum(dim=0), torch.sin(x_t).sum(dim=0)])  # [2, S, T]

        world = world_size(group)
        if world > 1 and self.reference_scaling:
            local_mean = sums / max(n, 1)
            reduced = local_mean.detach().clone()
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=group)
            # The reference's in-place all_reduce passes the gradient through unchanged (identity); only its
            # following `/ world` is differentiated. Value: mean of the per-rank means.
            ecf = (local_mean + (reduced - local_mean).detach()) / world
        else:
            if world > 1:
                count = torch.tensor(float(n), device=z.device)
                dist.all_reduce(count, op=dist.ReduceOp.SUM, group=group)
                n_total = count.item()
                # torch leaves Function.apply unannotated; _AllReduceSum.forward returns a Tensor
                sums = _AllReduceSum.apply(sums, group)  # type: ignore[no-untyped-call]
            else:
                n_total = float(n)
            if n_total == 0:
                return z.float().sum() * 0.0
            ecf = sums / n_total

        err = ((ecf[0] - self.target_phi).square() + ecf[1].square()) * self.weights  # [S, T]
        return torch.trapezoid(err, self.t, dim=-1).mean()

    def extra_repr(self) -> str:
        t_max = float(self.t[-1]) if self.t.numel() else math.nan
        return (f"num_slices={self.num_slices}, t_max={t_max}, n_knots={self.t.numel()}, "
                f"reference_scaling={self.reference_scaling}")
