"""Gradient scaling layer (gradient reversal, DANN, Ganin & Lempitsky 2015): identity forward, λ·grad backward.

With λ < 0 this is the gradient reversal layer of DANN. Guide heads apply it to their *input*, so the
backbone receives λ·∂L/∂x while the head's own parameters get the unscaled ∂L/∂θ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["GradientScaling", "scale_gradient"]


class GradientScaling(torch.autograd.Function):
    """y = x (a view); dL/dx = λ · dL/dy; no gradient for λ (a Python float)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.lam, None


def scale_gradient(x: Tensor, lam: float) -> Tensor:
    """Identity on `x` whose backward multiplies the incoming gradient by `lam`.

    Args:
        x: any tensor.
        lam: gradient factor (λ_eff: +λ for informative guides, −λ for gradient reversal).
    """
    # torch leaves Function.apply unannotated; forward above returns a Tensor
    out: Tensor = GradientScaling.apply(x, float(lam))  # type: ignore[no-untyped-call]
    return out
