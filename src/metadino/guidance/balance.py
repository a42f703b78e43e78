"""Gradient-norm balancing of the guide losses at the student CLS (spec §5).

Every guide's gradient at the anchor z (the student CLS all guides read) is rescaled to the geometric mean G
of the guides' gradient norms: s_i = G / g_i, total = Σ s_i ℓ_i with the s_i as constants. The relative guide
weights therefore only enter through G (spec §0.3).

Distributed convention (default, deliberate deviation from the reference): the norms are those of the
gradient of the objective DDP actually optimises, (1/W) Σ_r ℓ_r, with respect to the anchors of all ranks:
g_i = sqrt(Σ_r ‖∂ℓ_i^r/∂z_r‖²) / W. The squared norms are all-reduced, so every rank gets identical scales.
With equal per-rank batches and per-rank mean losses, the per-sample gradient of a rank's mean is W × that
of the global-batch mean, hence the 1/W: g_i equals the norm a single process computes on the concatenated
batch. The scales s_i are invariant to that common factor; only the logged norms and target depend on it.
`per_rank=True` reproduces the reference: local norms, scales computed per rank.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["balance_guides"]

VALID_NORM = 1e-6


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def balance_guides(
    losses: Mapping[str, Tensor],
    anchor: Tensor,
    *,
    per_rank: bool = False,
    weights: Mapping[str, float] | None = None,
) -> tuple[Tensor, dict[str, float], dict[str, float], float]:
    """Sum of the guide losses rescaled so that each one's gradient at `anchor` has the same norm.

    Args:
        losses: weighted guide losses ℓ_i = w_i L_i (scalars), by guide name. A loss that does not depend on
            `anchor` counts as a gradient norm of 0.
        anchor: the tensor all guides read (student CLS [n_crops, B, D]); it must be part of the graph.
        per_rank: use the local norms (reference behaviour) instead of the global-batch norms.
        weights: optional w_i; a guide with weight 0 keeps scale 1 (its gradient is 0 anyway).

    Returns:
        (total = Σ s_i ℓ_i, scales {name: s_i}, grad_norms {name: g_i}, target G). With fewer than 2 guides
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
    world = _world_size()
    if not per_rank and world > 1:
        dist.all_reduce(sq_t)
        sq_t = sq_t / (world * world)
    norms = sq_t.sqrt()
    # Decide on the device (no host sync before the graph is used): s_i = G/(g_i + 1e-8) for valid guides.
    valid = norms > VALID_NORM
    n_valid = valid.sum()
    log_g = torch.where(valid, torch.log(norms + 1e-12), torch.zeros_like(norms))
    target = torch.where(n_valid > 0, torch.exp(log_g.sum() / n_valid.clamp(min=1)), torch.zeros_like(norms[0]))
    w = torch.tensor([1.0 if weights is None else float(weights.get(n, 1.0)) for n in names], device=norms.device)
    scaled = valid & (w != 0) & (n_valid >= 2)
    scales = torch.where(scaled, target / (norms + 1e-8), torch.ones_like(norms)).detach()
    total = sum((scales[i] * losses[n] for i, n in enumerate(names)), start=torch.zeros_like(scales[0]))
    host = torch.cat([scales, norms, target[None]]).tolist()  # one sync, for logging
    k = len(names)
    return (
        total,
        dict(zip(names, host[:k])),
        dict(zip(names, host[k:2 * k])),
        float(host[-1]),
    )
