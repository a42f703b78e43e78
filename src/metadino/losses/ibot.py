"""iBOT masked-patch cross-entropy (DINOv2, Oquab et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metadino.precision import full_precision

__all__ = ["IBOTPatchLoss"]


class IBOTPatchLoss(nn.Module):
    """L = −(1/n_images) Σ_j w_j Σ_k p_jk log softmax(s_j/τ_s)_k over the M masked tokens j.

    w_j = 1/(number of masked tokens in token j's image), so every masked image weighs the same;
    images without masks still count in n_images (the reference's 2B denominator).
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, student_masked_logits: Tensor, teacher_probs: Tensor, masks_weight: Tensor,
                n_images: int) -> Tensor:
        """Weighted iBOT loss on the local batch.

        Args:
            student_masked_logits: [M, K] student iBOT-head logits of the masked tokens.
            teacher_probs: [M, K] teacher probabilities of the same tokens.
            masks_weight: [M] per-token weight 1/#masked in its image.
            n_images: number of global-crop images in the local batch (n_global_crops · B).

        Returns:
            Scalar fp32 loss; 0 (connected to the graph) when M == 0.
        """
        if student_masked_logits.shape != teacher_probs.shape or masks_weight.shape != student_masked_logits.shape[:1]:
            raise ValueError(f"shapes must be [M, K], [M, K], [M]; got {tuple(student_masked_logits.shape)}, "
                             f"{tuple(teacher_probs.shape)}, {tuple(masks_weight.shape)}")
        if student_masked_logits.shape[0] == 0:
            return student_masked_logits.float().sum() * 0.0
        if n_images <= 0:
            raise ValueError(f"n_images must be positive when there are masked tokens, got {n_images}")
        with full_precision(student_masked_logits.device):
            log_q = F.log_softmax(student_masked_logits.float() / self.student_temp, dim=-1)
            per_token = torch.sum(teacher_probs.float() * log_q, dim=-1)
            return -(per_token * masks_weight.float()).sum() / n_images
