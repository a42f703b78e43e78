"""metadino.guidance: metadata guide heads, gradient scaling, λ schedule and gradient-norm balancing."""

from __future__ import annotations

from metadino.guidance.balance import balance_guides
from metadino.guidance.grl import GradientScaling, scale_gradient
from metadino.guidance.head import GuideHead, GuideOutput
from metadino.guidance.mlp import MLPClassifier, MLPRegressor
from metadino.guidance.prototypes import PrototypeBank
from metadino.guidance.schedule import LAMBDA_SCHEDULES, guidance_lambda

__all__ = [
    "LAMBDA_SCHEDULES",
    "GradientScaling",
    "GuideHead",
    "GuideOutput",
    "MLPClassifier",
    "MLPRegressor",
    "PrototypeBank",
    "balance_guides",
    "guidance_lambda",
    "scale_gradient",
]
