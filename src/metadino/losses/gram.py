"""Gram anchoring (DINOv3, Siméoni et al. 2025, arXiv 2508.10104, §4 "Gram anchoring").

Long SSL runs (and continued SSL from released weights) keep a good CLS token while the patch features lose
their locality. Gram anchoring holds the *patch-to-patch similarity structure* of the student to that of a
frozen "Gram teacher", without constraining the features themselves: for each image, with X the
L2-normalised patch tokens [N, D],

    L = mean over images of  (1/N²) ‖X_s X_sᵀ − X_g X_gᵀ‖²_F

i.e. the mean squared difference of the two N×N cosine-similarity matrices (DINOv3's image-level loss,
``img_level: true``). Only the student receives a gradient. Conventions follow DINOv3's public code
(``dinov3/loss/gram_loss.py``): features normalised (``normalized: true``), fp32, and optionally negative
similarities set to 0 before the difference (``remove_neg`` / ``remove_only_teacher_neg``; off by default).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metadino.precision import full_precision

__all__ = ["CLIP_NEGATIVES", "GramLoss"]

ClipNegatives = Literal["none", "both", "teacher"]
CLIP_NEGATIVES: tuple[str, ...] = ("none", "both", "teacher")


class GramLoss(nn.Module):
    """Per-image Gram-matrix MSE between student and (frozen) Gram-teacher patch features.

    ``clip_negatives``: ``none`` keeps every similarity (DINOv3's default); ``both`` sets negative entries of
    both Gram matrices to 0 (DINOv3 ``remove_neg``); ``teacher`` sets the teacher's negative entries to 0 and
    the student's only where both are negative (the intent of ``remove_only_teacher_neg``), so a student
    similarity is penalised below 0 only where the teacher's is positive. DINOv3's code clips the teacher first,
    which leaves its student mask always empty (teacher-only clipping); we follow the documented intent.
    """

    def __init__(self, clip_negatives: ClipNegatives = "none") -> None:
        super().__init__()
        if clip_negatives not in CLIP_NEGATIVES:
            raise ValueError(f"clip_negatives must be one of {CLIP_NEGATIVES}, got {clip_negatives!r}")
        self.clip_negatives = clip_negatives

    @staticmethod
    def gram(patches: Tensor) -> Tensor:
        """[B, N, D] -> [B, N, N] cosine similarities of the patch tokens of each image (fp32)."""
        x = F.normalize(patches.float(), dim=-1)
        return x @ x.transpose(-1, -2)

    def forward(self, student_patches: Tensor, teacher_patches: Tensor) -> Tensor:
        """Gram anchoring loss of the local batch.

        Args:
            student_patches: [B, N, D_s] student patch tokens (any float dtype).
            teacher_patches: [B, N, D_t] Gram-teacher patch tokens of the same images; treated as constants.
                The widths may differ (only the N×N matrices are compared).

        Returns:
            Scalar fp32 loss: mean over the B·N·N entries; 0 (attached to the graph) when B or N is 0.
        """
        if student_patches.dim() != 3 or teacher_patches.dim() != 3 or student_patches.shape[:2] != teacher_patches.shape[:2]:
            raise ValueError(f"student {tuple(student_patches.shape)} and teacher {tuple(teacher_patches.shape)} "
                             "patches must be [B, N, D] with the same B and N")
        if student_patches.shape[0] * student_patches.shape[1] == 0:
            return student_patches.float().sum() * 0.0
        # fp32 even under autocast: the matmul would otherwise run in bf16 and the differences are small.
        with full_precision(student_patches.device):
            g_s = self.gram(student_patches)
            with torch.no_grad():
                g_t = self.gram(teacher_patches.detach())
            if self.clip_negatives == "both":
                g_s = g_s.clamp_min(0.0)
                g_t = g_t.clamp_min(0.0)
            elif self.clip_negatives == "teacher":
                g_s = torch.where((g_s < 0) & (g_t < 0), torch.zeros_like(g_s), g_s)
                g_t = g_t.clamp_min(0.0)
            return (g_s - g_t).square().mean()

    def extra_repr(self) -> str:
        return f"clip_negatives={self.clip_negatives!r}"
