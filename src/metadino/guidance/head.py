"""The guide-head contract: what every head reads, returns and masks.

Every head reads features of several crops, crop-major ``[n_crops, B, in_dim]`` (the student CLS of the
global crops, or their DINO-head logits for ``grl_space: prototype``), applies the gradient scaling λ to its
*input* and returns a :class:`GuideOutput`. ``valid`` [B] marks the samples whose metadata value is present:
the others are excluded from the loss (they still flow through the head, with an exactly zero gradient, so
the graph, and the set of parameters that receive gradients, never depends on the data), and from any state
update. With no valid sample the loss is exactly 0, attached to the graph.

Per-rank convention: losses are means over the *local* valid samples; DDP averages the parameter gradients.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["GuideHead", "GuideOutput", "check_features", "masked_mean", "masked_rate", "valid_mask"]


@dataclass
class GuideOutput:
    """Loss of one guide (scalar, attached to the graph) and detached scalar metrics for logging."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class GuideHead(nn.Module, abc.ABC):
    """Common interface of guide heads."""

    kind: str = ""

    @abc.abstractmethod
    def loss(self, features: Tensor, targets: Tensor, valid: Tensor | None, lam: float) -> GuideOutput:
        """Loss of the guide on the student features.

        Args:
            features: [n_crops, B, in_dim] student features.
            targets: [B] (class ids / scalar targets) or [B, k] (multi-hot / vector targets).
            valid: [B] bool, False where the metadata value is missing (None: all valid).
            lam: gradient factor λ_eff applied to the features (negative for gradient reversal).
        """
        ...

    @torch.no_grad()
    def update(self, teacher_features: Tensor, targets: Tensor, valid: Tensor | None) -> None:
        """State update from the teacher after the loss (only the prototype bank has state)."""

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise parameters and buffers (the reference's `init_weights`)."""


def check_features(x: Tensor, in_dim: int, name: str) -> None:
    """ValueError unless `x` is [n_crops, B, in_dim]; `name` is the head, for the message."""
    if x.dim() != 3 or x.shape[-1] != in_dim:
        raise ValueError(f"{name}: features must be [n_crops, B, {in_dim}], got {tuple(x.shape)}")


def valid_mask(valid: Tensor | None, batch: int, device: torch.device) -> Tensor:
    """`valid` as a [B] bool tensor on `device` (all True when None)."""
    if valid is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    if valid.shape != (batch,):
        raise ValueError(f"valid must be [B={batch}], got {tuple(valid.shape)}")
    return valid.to(device=device, dtype=torch.bool)


def masked_mean(per_sample: Tensor, valid: Tensor) -> Tensor:
    """Mean of `per_sample` [..., B] over valid samples (and all leading dims); exactly 0 when none is valid.

    `where` (not a product) so that a non-finite value of an invalid sample can never leak into the loss.
    """
    n_valid = valid.sum().clamp(min=1) * (per_sample.numel() // max(1, per_sample.shape[-1]))
    return torch.where(valid, per_sample, torch.zeros_like(per_sample)).sum() / n_valid


def masked_rate(hit: Tensor, valid: Tensor) -> Tensor:
    """Fraction of valid samples where `hit` [B] is true (0 when none is valid), detached."""
    return ((hit & valid).sum() / valid.sum().clamp(min=1)).detach().float()
