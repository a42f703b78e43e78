"""DINO cross-entropy between teacher crop probabilities and student crop predictions (DINOv2, Oquab et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metadino.precision import full_precision

__all__ = ["DINOLoss"]


class DINOLoss(nn.Module):
    """Cross-entropy of every student crop against every teacher (global) crop.

    `dino_local` averages over the n_l·n_g (local, global) pairs and the batch; `dino_global` over the
    n_g·n_g global pairs minus the diagonal (same crop seen by student and teacher) when `ignore_diagonal`.
    `dino` is the pair-count-weighted mean of the two, i.e. 16/18·local + 2/18·global for 8 local and
    2 global crops with ignore_diagonal (the reference weighting).
    """

    def __init__(self, student_temp: float = 0.1, ignore_diagonal: bool = True) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.ignore_diagonal = ignore_diagonal

    def _pair_sums(self, student: Tensor, teacher_probs: Tensor) -> Tensor:
        """[n_s, n_t] matrix of Σ_{b,k} p_t log q_s, in fp32 under any autocast."""
        with full_precision(student.device):
            log_q = F.log_softmax(student.float() / self.student_temp, dim=-1)
            return torch.einsum("sbk,tbk->st", log_q, teacher_probs.float())

    def forward(self, student_global: Tensor, student_local: Tensor | None,
                teacher_probs: Tensor) -> dict[str, Tensor]:
        """Local, global and weighted-total DINO losses.

        Args:
            student_global: [n_g, B, K] student logits of the global crops.
            student_local: [n_l, B, K] student logits of the local crops, or None (n_l may be 0).
            teacher_probs: [n_g, B, K] teacher probabilities (Sinkhorn-Knopp or softmax-centered).

        Returns:
            {"dino_local", "dino_global", "dino"} scalar fp32 tensors.
        """
        if student_global.dim() != 3 or teacher_probs.shape != student_global.shape:
            raise ValueError(f"student_global {tuple(student_global.shape)} and teacher_probs "
                             f"{tuple(teacher_probs.shape)} must both be [n_g, B, K]")
        n_g, batch, _ = student_global.shape
        zero = student_global.float().sum() * 0.0  # keeps the graph when a term is absent

        n_l = 0 if student_local is None else student_local.shape[0]
        if student_local is not None and n_l > 0:
            if student_local.shape[1:] != student_global.shape[1:]:
                raise ValueError(f"student_local {tuple(student_local.shape)} must be [n_l, B, K] with the "
                                 f"B, K of student_global {tuple(student_global.shape)}")
            loss_local = -self._pair_sums(student_local, teacher_probs).sum() / (n_l * n_g * batch)
        else:
            loss_local = zero

        pairs_global = n_g * n_g - (n_g if self.ignore_diagonal else 0)
        if pairs_global > 0:
            sums = self._pair_sums(student_global, teacher_probs)
            total = sums.sum() - (torch.diagonal(sums).sum() if self.ignore_diagonal else 0.0)
            loss_global = -total / (pairs_global * batch)
        else:
            loss_global = zero

        pairs_local = n_l * n_g
        if pairs_local + pairs_global == 0:
            raise ValueError("DINOLoss needs at least one (student, teacher) crop pair; with one global crop "
                             "and ignore_diagonal=True, pass local crops")
        total_loss = (pairs_local * loss_local + pairs_global * loss_global) / (pairs_local + pairs_global)
        return {"dino_local": loss_local, "dino_global": loss_global, "dino": total_loss}
