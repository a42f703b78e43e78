"""DINO / iBOT projection head (DINOv2, Oquab et al. 2023; FINO's variant, arXiv 2606.05107).

The iBOT head is another :class:`DINOHead` instance; whether it is shared with the DINO head is the
caller's decision.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from metadino.models.global_batchnorm import GlobalBatchNorm

__all__ = ["DINOHead", "l2_normalize_eps", "unit_rows_lowp"]


class _UnitRowsLowp(torch.autograd.Function):
    """fp32 ``w / max(‖w_k‖, eps)`` per row, written once in a lower precision `dtype`; fp32 gradient for `w`."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
        norm = weight.norm(2, 1, keepdim=True)  # what F.normalize computes, in the same order
        denom = norm.clamp_min(eps)
        out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
        torch.div(weight, denom, out=out)  # divided in fp32, rounded once to `dtype`: autocast's cast of F.normalize
        ctx.save_for_backward(weight, denom, norm >= eps)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        weight, denom, unclamped = ctx.saved_tensors
        # d(w / ‖w‖) = (g - w (w·g) / ‖w‖²) / ‖w‖ per row; where the norm was clamped to eps only g / eps remains.
        g = grad.to(weight.dtype)
        coef = torch.einsum("kd,kd->k", weight, g).unsqueeze(1).div_(denom * denom).neg_().mul_(unclamped)
        return g.addcmul_(weight, coef).div_(denom), None, None


def unit_rows_lowp(weight: Tensor, eps: float, dtype: torch.dtype) -> Tensor:
    """``F.normalize(weight, dim=1, eps=eps).to(dtype)`` in one pass over `weight` and without its fp32 copy.

    Forward bit for bit what autocast feeds a matmul from the fp32 expression; the gradient is the same derivative,
    formed in three passes over the [K, D] weight instead of autograd's chain of full-size temporaries (DivBackward
    of the broadcast norm, the norm's own backward, the cast back to fp32), so it may differ from it by fp32
    rounding.
    """
    out: Tensor = _UnitRowsLowp.apply(weight, eps, dtype)  # type: ignore[no-untyped-call]
    return out


def l2_normalize_eps(dtype: torch.dtype) -> float:
    """Epsilon of the bottleneck L2 normalization: 1e-12 underflows in half precision, so use 1e-6 there."""
    return 1e-6 if dtype in (torch.float16, torch.bfloat16) else 1e-12


class DINOHead(nn.Module):
    """MLP -> L2 normalize -> linear prototypes (no weight norm, as in DINOv3, unless ``norm_last_layer``).

    MLP: ``Linear(in, hidden) -> GELU -> [Linear(hidden, hidden) -> GELU] * (nlayers - 2) -> Linear(hidden,
    bottleneck)``; with ``nlayers == 1`` it is a single ``Linear(in, bottleneck)``.
    ``last_layer = Linear(bottleneck, out_dim, bias=False)``. With ``norm_last_layer`` each prototype row is
    L2-normalised at use (DINOv1/DINOv2's weight norm with its gain fixed to 1), so logits are cosine
    similarities from the first step. With ``batchnorm`` every hidden Linear is followed by a
    :class:`GlobalBatchNorm` (DINOv1's ``use_bn_in_head``): it removes the component that all images share, which
    otherwise dominates the unit-normalised bottleneck of a fresh network and leaves the teacher's targets uniform.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = False,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim
        self.norm_last_layer = norm_last_layer
        self.batchnorm = batchnorm

        def hidden(i: int) -> list[nn.Module]:
            return [nn.Linear(i, hidden_dim)] + ([GlobalBatchNorm(hidden_dim)] if batchnorm else []) + [nn.GELU()]

        layers: list[nn.Module]
        if nlayers == 1:
            layers = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = hidden(in_dim)
            for _ in range(nlayers - 2):
                layers += hidden(hidden_dim)
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.apply(self._init_weights)
        if norm_last_layer:
            # Only the prototypes' directions matter, and AdamW turns them by ~lr·sqrt(bottleneck)/|row| per step:
            # from trunc_normal(0.02) rows (|row| ≈ 0.23 at 128 dims) that is several % per step, fast enough for
            # the prototypes to fold into a subspace the bottleneck avoids (uniform targets). Unit rows: ~0.5 %.
            with torch.no_grad():
                self.last_layer.weight.copy_(F.normalize(self.last_layer.weight, dim=1))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, return_bottleneck: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Project features to prototype logits.

        Args:
            x: [N, in_dim] features (e.g. CLS tokens, or masked patch tokens for iBOT).
            return_bottleneck: also return the MLP output before L2 normalization (used by SIGReg).

        Returns:
            logits [N, out_dim], or ``(logits, bottleneck [N, bottleneck_dim])``.
        """
        bottleneck = self.mlp(x)
        z = F.normalize(bottleneck, p=2, dim=-1, eps=l2_normalize_eps(bottleneck.dtype))
        weight = self.last_layer.weight
        if self.norm_last_layer:
            eps = l2_normalize_eps(weight.dtype)
            lowp = _autocast_dtype(weight)
            if lowp is not None:  # autocast would cast the normalised fp32 rows to `lowp` anyway: write them so
                weight = unit_rows_lowp(weight, eps, lowp)
            else:
                weight = F.normalize(weight, p=2, dim=1, eps=eps)
        logits = F.linear(z, weight)
        if return_bottleneck:
            return logits, bottleneck
        return logits


def _autocast_dtype(weight: Tensor) -> torch.dtype | None:
    """The lower precision autocast casts `weight` (fp32) to for a matmul on its device, or None (autocast off)."""
    device = weight.device.type
    if weight.dtype != torch.float32 or not torch.is_autocast_enabled(device):
        return None
    dtype = torch.get_autocast_dtype(device)
    return dtype if dtype in (torch.bfloat16, torch.float16) else None
