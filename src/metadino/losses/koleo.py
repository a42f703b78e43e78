"""KoLeo nearest-neighbour spreading regularizer (DINOv2, Oquab et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KoLeoLoss"]


class KoLeoLoss(nn.Module):
    """L = −mean_i log(‖x_i − x_nn(i) + ε‖ + ε) on L2-normalized rows, ε = 1e-8 (local batch only).

    Computed in fp32 so the 1e-8 epsilons do not underflow under bf16/fp16 autocast. With fewer than two
    rows there is no neighbour, and the loss is defined as 0 (still attached to the graph).
    """

    eps: float = 1e-8

    def __init__(self) -> None:
        super().__init__()
        self.pdist = nn.PairwiseDistance(p=2, eps=self.eps)

    def forward(self, x: Tensor) -> Tensor:
        """KoLeo loss.

        Args:
            x: [B, D] features (any float dtype).

        Returns:
            Scalar fp32 loss; 0 when B < 2.
        """
        x = x.float()
        if x.shape[0] < 2:
            return x.sum() * 0.0
        x = F.normalize(x, p=2, dim=-1, eps=self.eps)
        with torch.no_grad():
            # Nearest neighbour = max cosine similarity, excluding self (diagonal set to -1).
            dots = x @ x.t()
            dots.fill_diagonal_(-1.0)
            nn_idx = dots.argmax(dim=1)
        distances = self.pdist(x, x[nn_idx])
        return -torch.log(distances + self.eps).mean()
