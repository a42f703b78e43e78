"""MLP guide heads: a classifier (cross-entropy, or BCE for multi-hot targets) and a regressor (MSE).

Both scale the gradient into their input by λ (gradient reversal for spurious guides when λ < 0: Ganin &
Lempitsky 2015, "Unsupervised Domain Adaptation by Backpropagation"), as in FINO (Gardès et al., 2026,
arXiv 2606.05107). The contract (input layout, ``valid`` masking) is :mod:`metadino.guidance.head`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metadino.errors import UserError
from metadino.guidance.grl import scale_gradient
from metadino.guidance.head import GuideHead, GuideOutput, check_features, masked_mean, masked_rate, valid_mask

__all__ = ["OUTPUT_ACTIVATIONS", "MLPClassifier", "MLPRegressor"]

OUTPUT_ACTIVATIONS = ("none", "sigmoid", "tanh")


def _mlp(in_dim: int, out_dim: int, hidden_dims: Sequence[int], dropout: float) -> nn.Sequential:
    """(Linear -> GELU -> Dropout|Identity) per hidden width, then Linear(h_last, out_dim)."""
    layers: list[nn.Module] = []
    prev = in_dim
    for h in hidden_dims:
        layers += [nn.Linear(prev, h), nn.GELU(), nn.Dropout(dropout) if dropout > 0 else nn.Identity()]
        prev = h
    layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


def _check_mlp_args(name: str, in_dim: int, n_out: int, hidden_dims: Sequence[int], dropout: float) -> None:
    if in_dim < 1 or n_out < 1 or any(h < 1 for h in hidden_dims):
        raise UserError(
            f"{name}: in_dim, the output size and every hidden width must be >= 1 "
            f"(got in_dim={in_dim}, outputs={n_out}, hidden_dims={list(hidden_dims)}); fix the guide's head sizes."
        )
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"{name}: dropout must be in [0, 1), got {dropout}; fix the guide's `dropout`.")


class _MLPHead(GuideHead):
    def __init__(self, in_dim: int, out_dim: int, hidden_dims: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mlp = _mlp(in_dim, out_dim, hidden_dims, dropout)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0, generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, lam: float = 1.0) -> Tensor:
        """Args: x [..., in_dim]. Returns [..., out_dim]; the backward into x is scaled by `lam`."""
        out: Tensor = self.mlp(scale_gradient(x, lam))
        return out


class MLPClassifier(_MLPHead):
    """GRL -> MLP -> logits; CE on class ids, or BCE-with-logits on multi-hot targets (`multilabel`)."""

    kind = "classification"

    def __init__(
        self, in_dim: int, n_classes: int, hidden_dims: Sequence[int], dropout: float, multilabel: bool = False
    ) -> None:
        _check_mlp_args("classification head", in_dim, n_classes, hidden_dims, dropout)
        super().__init__(in_dim, n_classes, hidden_dims, dropout)
        self.n_classes, self.multilabel = n_classes, multilabel

    def loss(self, features: Tensor, targets: Tensor, valid: Tensor | None, lam: float) -> GuideOutput:
        """Mean over crops of CE (BCE for multilabel) on valid samples; accuracy of crop 0 (exact match at 0.5).

        Args:
            features: [n_crops, B, in_dim].
            targets: [B] int64 class ids, or [B, n_classes] multi-hot (any dtype) when `multilabel`.
            valid: [B] bool or None.
        """
        check_features(features, self.in_dim, "classification head")
        n_crops, batch = features.shape[:2]
        valid = valid_mask(valid, batch, features.device)
        logits = self(features, lam).float()  # [n_crops, B, C]
        if self.multilabel:
            if targets.shape != (batch, self.n_classes):
                raise ValueError(f"multilabel targets must be [B, {self.n_classes}], got {tuple(targets.shape)}")
            y = torch.where(valid[:, None], targets.to(logits.device, torch.float32), 0.0)
            per = F.binary_cross_entropy_with_logits(
                logits, y.expand(n_crops, -1, -1), reduction="none"
            ).mean(-1)
            hit = ((torch.sigmoid(logits[0]) > 0.5) == (y > 0.5)).all(-1)
        else:
            if targets.shape != (batch,):
                raise ValueError(f"class targets must be [B], got {tuple(targets.shape)}")
            y = torch.where(valid, targets.to(logits.device, torch.long), 0)
            per = F.cross_entropy(
                logits.reshape(n_crops * batch, -1), y.repeat(n_crops), reduction="none"
            ).view(n_crops, batch)
            hit = logits[0].argmax(-1) == y
        metrics = {"accuracy": masked_rate(hit, valid), "valid_fraction": valid.float().mean()}
        return GuideOutput(masked_mean(per, valid), metrics)


class MLPRegressor(_MLPHead):
    """GRL -> MLP -> optional sigmoid/tanh; MSE to targets mapped to [0, 1] by (y − min)/(max − min + 1e-8)."""

    kind = "regression"
    target_min: Tensor
    target_max: Tensor

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden_dims: Sequence[int],
        dropout: float,
        output_activation: str = "none",
        target_min: float | None = None,
        target_max: float | None = None,
    ) -> None:
        _check_mlp_args("regression head", in_dim, n_outputs, hidden_dims, dropout)
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise UserError(
                f"regression head: output_activation is {output_activation!r}; use one of "
                f"{', '.join(OUTPUT_ACTIVATIONS)}."
            )
        if (target_min is None) != (target_max is None):
            raise UserError("regression head: give both target_min and target_max, or neither.")
        if target_min is not None and not target_max > target_min:  # type: ignore[operator]
            raise UserError(
                f"regression head: target_max ({target_max}) must be greater than target_min ({target_min})."
            )
        super().__init__(in_dim, n_outputs, hidden_dims, dropout)
        self.n_outputs, self.output_activation = n_outputs, output_activation
        self.normalize_targets = target_min is not None
        self.register_buffer("target_min", torch.tensor(float(target_min or 0.0)))
        self.register_buffer("target_max", torch.tensor(float(target_max or 1.0)))

    def forward(self, x: Tensor, lam: float = 1.0) -> Tensor:
        out = super().forward(x, lam)
        if self.output_activation == "sigmoid":
            return torch.sigmoid(out)
        if self.output_activation == "tanh":
            return torch.tanh(out)
        return out

    def normalize(self, y: Tensor) -> Tensor:
        """Map raw targets to the training scale (identity without min/max)."""
        if not self.normalize_targets:
            return y
        lo, hi = self.target_min.float(), self.target_max.float()
        return (y - lo) / (hi - lo + 1e-8)

    def loss(self, features: Tensor, targets: Tensor, valid: Tensor | None, lam: float) -> GuideOutput:
        """Mean over crops of the MSE on valid samples; `mse` metric of crop 0.

        Args:
            features: [n_crops, B, in_dim].
            targets: [B] (when n_outputs == 1) or [B, n_outputs] raw targets; NaN allowed where invalid.
            valid: [B] bool or None.
        """
        check_features(features, self.in_dim, "regression head")
        n_crops, batch = features.shape[:2]
        valid = valid_mask(valid, batch, features.device)
        y = targets.to(features.device, torch.float32)
        if y.dim() == 1:
            y = y.unsqueeze(1)
        if y.shape != (batch, self.n_outputs):
            raise ValueError(f"regression targets must be [B, {self.n_outputs}], got {tuple(targets.shape)}")
        # Sanitise before the arithmetic: a NaN placeholder of a missing value must never reach the gradient.
        y = torch.where(valid[:, None], self.normalize(y), 0.0)
        pred = self(features, lam).float()  # [n_crops, B, n_outputs]
        per = (pred - y).pow(2).mean(-1)  # [n_crops, B]
        metrics = {"mse": masked_mean(per[:1], valid).detach(), "valid_fraction": valid.float().mean()}
        return GuideOutput(masked_mean(per, valid), metrics)
