"""Gradient-norm balancing of the guide losses at the student CLS (FINO, arXiv 2606.05107).

Every guide's gradient at the anchor z (the student CLS all guides read) is rescaled to the geometric mean G
of the guides' gradient norms: s_i = G / g_i, total = Σ s_i ℓ_i with the s_i as constants. The relative guide
weights therefore only enter through G (as in FINO's released code).

Distributed convention (default, deliberate deviation from the reference): the norms are those of the
gradient of the objective DDP actually optimises, (1/W) Σ_r ℓ_r, with respect to the anchors of all ranks:
g_i = sqrt(Σ_r ‖∂ℓ_i^r/∂z_r‖²) / W. The squared norms are all-reduced, so every rank gets identical scales.
With equal per-rank batches and per-rank mean losses, the per-sample gradient of a rank's mean is W × that
of the global-batch mean, hence the 1/W: g_i equals the norm a single process computes on the concatenated
batch. The scales s_i are invariant to that common factor; only the logged norms and target depend on it.
`per_rank=True` reproduces the reference: local norms, scales computed per rank.

EMA balancing (FINO paper, arXiv 2606.05107, §"Gradient equalisation": μ = 0.99; the released code balances each
step's norms): with a :class:`GradNormEMA`, ĝ_i = μ ĝ_i + (1 − μ) g_i replaces g_i in G and s_i = G/ĝ_i. Which
guides are balanced is still decided by this step's norms (a guide with no gradient now keeps s_i = 1). A guide's
average starts at its first norm above 1e-6 (not at 0, which would inflate its scale for ~1/(1 − μ) steps; at
step 0 λ = 0 and every norm is 0); steps where its norm is not valid leave it unchanged. The new averages are only
stored by :meth:`GradNormEMA.commit`, which the task runs once the step is known to be finite. They are computed
from the all-reduced norms, so every rank holds the same averages.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from metadino.ranks import world_size

__all__ = ["GradNormEMA", "balance_guides", "ema_grad_norms"]

VALID_NORM = 1e-6


def ema_grad_norms(previous: Tensor, norms: Tensor, momentum: float) -> Tensor:
    """One EMA step of the guides' gradient norms (pure).

    Args:
        previous: [k] averages so far; 0 marks a guide that has had no valid norm yet.
        norms: [k] this step's norms g_i.
        momentum: μ in (0, 1).

    Returns:
        [k]: μ·previous + (1 − μ)·g where previous > 0, g where a guide's first valid norm arrives, and previous
        unchanged where g ≤ 1e-6 (not valid).
    """
    valid = norms > VALID_NORM
    blended = torch.where(previous > 0, momentum * previous + (1.0 - momentum) * norms, norms)
    return torch.where(valid, blended, previous)


class GradNormEMA(nn.Module):
    """The EMA state of EMA balancing: buffer ``norms`` [k] (0 = not started), saved in checkpoints.

    :meth:`advance` computes the averages including this step's norms without storing them; :meth:`commit`
    stores the last advanced value (so a step that is thrown away never changes the state).
    """

    norms: Tensor
    pending: Tensor | None  # kept in __dict__ (not a buffer): never saved, never moved by .to()

    def __init__(self, n_guides: int, momentum: float) -> None:
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("norms", torch.zeros(n_guides))
        self.__dict__["pending"] = None

    def advance(self, norms: Tensor) -> Tensor:
        """[k] averages after this step's `norms` (fp32); stored only by :meth:`commit`."""
        new = ema_grad_norms(self.norms, norms.detach().to(self.norms), self.momentum)
        self.__dict__["pending"] = new
        return new

    def discard(self) -> None:
        self.__dict__["pending"] = None

    @torch.no_grad()
    def commit(self) -> None:
        """Store the last advanced averages (a no-op when nothing was advanced since the last commit)."""
        if self.pending is not None:
            self.norms.copy_(self.pending)
        self.discard()

    def extra_repr(self) -> str:
        return f"n_guides={self.norms.numel()}, momentum={self.momentum}"


def balance_guides(
    losses: Mapping[str, Tensor],
    anchor: Tensor,
    *,
    per_rank: bool = False,
    weights: Mapping[str, float] | None = None,
    norm_ema: GradNormEMA | None = None,
) -> tuple[Tensor, dict[str, float], dict[str, float], float]:
    """Sum of the guide losses rescaled so that each one's gradient at `anchor` has the same norm.

    Args:
        losses: weighted guide losses ℓ_i = w_i L_i (scalars), by guide name. A loss that does not depend on
            `anchor` counts as a gradient norm of 0.
        anchor: the tensor all guides read (student CLS [n_crops, B, D]); it must be part of the graph.
        per_rank: use the local norms (reference behaviour) instead of the global-batch norms.
        weights: optional w_i; a guide with weight 0 keeps scale 1 (its gradient is 0 anyway).
        norm_ema: EMA state (one entry per loss, in order): balance the averaged norms ĝ_i instead of g_i. It is
            advanced here and must be committed by the caller after the step.

    Returns:
        (total = Σ s_i ℓ_i, scales {name: s_i}, grad_norms {name: g_i} (this step's, also with `norm_ema`),
        target G (of the averages with `norm_ema`)). With fewer than 2 guides
        of norm > 1e-6 the total is the plain sum and every scale is 1 (target 0 when no guide is valid).
        Under DDP (default mode) every rank must call this, with the same guide names in the same order.
    """
    names = list(losses)
    if not names:
        raise ValueError("balance_guides needs at least one loss")
    sq = []
    for name in names:
        loss = losses[name]
        grad = None
        if loss.requires_grad:
            grad = torch.autograd.grad(loss, anchor, retain_graph=True, allow_unused=True)[0]
        sq.append(grad.float().pow(2).sum() if grad is not None else anchor.new_zeros((), dtype=torch.float32))
    sq_t = torch.stack(sq)
    world = world_size()
    if not per_rank and world > 1:
        dist.all_reduce(sq_t)
        sq_t = sq_t / (world * world)
    norms = sq_t.sqrt()
    if norm_ema is not None and norm_ema.norms.numel() != len(names):
        raise ValueError(f"norm_ema holds {norm_ema.norms.numel()} guides, got {len(names)} losses")
    # Per step: the norms themselves; EMA balancing: their averages (valid guides are initialised, hence > 0).
    balanced = norms if norm_ema is None else norm_ema.advance(norms)
    # Decide on the device (no host sync before the graph is used): s_i = G/(g_i + 1e-8) for valid guides.
    valid = norms > VALID_NORM
    n_valid = valid.sum()
    log_g = torch.where(valid, torch.log(balanced + 1e-12), torch.zeros_like(norms))
    target = torch.where(n_valid > 0, torch.exp(log_g.sum() / n_valid.clamp(min=1)), torch.zeros_like(norms[0]))
    w = torch.tensor([1.0 if weights is None else float(weights.get(n, 1.0)) for n in names], device=norms.device)
    scaled = valid & (w != 0) & (n_valid >= 2)
    scales = torch.where(scaled, target / (balanced + 1e-8), torch.ones_like(norms)).detach()
    total = sum((scales[i] * losses[n] for i, n in enumerate(names)), start=torch.zeros_like(scales[0]))
    host = torch.cat([scales, norms, target[None]]).tolist()  # one sync, for logging
    k = len(names)
    return (
        total,
        dict(zip(names, host[:k])),
        dict(zip(names, host[k:2 * k])),
        float(host[-1]),
    )
