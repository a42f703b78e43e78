"""metadino.losses: SSL losses (DINO, iBOT, KoLeo, SIGReg, Gram anchoring) and teacher centering."""

from __future__ import annotations

from metadino.losses.centering import SoftmaxCenter, sinkhorn_knopp
from metadino.losses.dino import DINOLoss
from metadino.losses.gram import GramLoss
from metadino.losses.ibot import IBOTPatchLoss
from metadino.losses.koleo import KoLeoLoss
from metadino.losses.sigreg import DEFAULT_SIGREG_SEED, SIGReg

__all__ = [
    "DEFAULT_SIGREG_SEED",
    "DINOLoss",
    "GramLoss",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "SIGReg",
    "SoftmaxCenter",
    "sinkhorn_knopp",
]
