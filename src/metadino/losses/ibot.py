"""iBOT masked-patch cross-entropy (DINOv2, Oquab et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from metadino.precision import full_precision

__all__ = ["CHUNK_ELEMENTS", "IBOTPatchLoss", "soft_cross_entropy_rows"]


#: Rows per block of :func:`soft_cross_entropy_rows`: about this many elements (4 MB of fp32) per scratch buffer.
CHUNK_ELEMENTS = 1 << 20


class _SoftCrossEntropyRows(torch.autograd.Function):
    """Σ_k p_jk · log_softmax(s_j / τ)_k per row j in fp32, gradient for s only, a block of rows at a time.

    Each row is computed with the kernels autograd runs for ``(p * F.log_softmax(s.float() / τ, -1)).sum(-1)``, in the
    same order (forward and backward bit for bit; a row's result does not depend on its neighbours). Done over all of
    an [M, K] = [~1000, 65536] input at once, every one of those kernels writes a fresh 250 MB temporary whose page
    faults cost more than its arithmetic, and log_softmax's output is kept for the backward. By blocks of rows the
    kernels write into three small scratch buffers that stay in cache, and the backward recomputes log_softmax of its
    block instead of keeping it. The gradient has the dtype of s (bf16 logits: the fp32 gradient rounded once, as a
    ``.float()`` of them would give).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, probs: Tensor, temp: float) -> Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        blocks = _row_blocks(logits)
        scratch, log_q = _scratch(logits, blocks, 2)
        for rows in blocks:
            n = rows.stop - rows.start
            _log_q(logits[rows], temp, scratch[:n], log_q[:n])
            torch.sum(torch.mul(probs[rows], log_q[:n], out=scratch[:n]), dim=-1, out=out[rows])
        ctx.save_for_backward(logits, probs)
        ctx.temp = temp
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        logits, probs = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        blocks = _row_blocks(logits)
        scratch, log_q, grad_scaled = _scratch(logits, blocks, 3)
        for rows in blocks:
            n = rows.stop - rows.start
            _log_q(logits[rows], ctx.temp, scratch[:n], log_q[:n])
            grad_log_q = torch.mul(grad[rows].unsqueeze(-1), probs[rows], out=scratch[:n])  # MulBackward0 of p * log_q
            torch._log_softmax_backward_data(grad_log_q, log_q[:n], -1, torch.float32, out=grad_scaled[:n])
            torch.div(grad_scaled[:n], ctx.temp, out=grad_logits[rows])  # DivBackward0 of s / τ (+ cast to s's dtype)
        return grad_logits, None, None


def _log_q(logits: Tensor, temp: float, scaled: Tensor, out: Tensor) -> None:
    """``out = log_softmax(logits.float() / temp)`` through the fp32 buffer `scaled`."""
    if logits.dtype == torch.float32:
        torch.div(logits, temp, out=scaled)
    else:
        scaled.copy_(logits).div_(temp)
    torch.log_softmax(scaled, dim=-1, out=out)


def _row_blocks(x: Tensor) -> list[slice]:
    """Blocks of at least two rows (one row alone would be summed by a split, two-pass reduction: other bits)."""
    n = x.shape[0]
    if n == 0:
        return []
    rows = max(2, CHUNK_ELEMENTS // max(1, x.shape[-1]))
    starts = list(range(0, n, rows))
    if len(starts) > 1 and n - starts[-1] < 2:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n], strict=True)]


def _scratch(x: Tensor, blocks: list[slice], count: int) -> list[Tensor]:
    rows = max((b.stop - b.start for b in blocks), default=0)
    return [torch.empty((rows, x.shape[-1]), dtype=torch.float32, device=x.device) for _ in range(count)]


def soft_cross_entropy_rows(logits: Tensor, probs: Tensor, temp: float) -> Tensor:
    """[M] row sums Σ_k p_jk log softmax(s_j / τ)_k of [M, K] `logits` s (fp32, or half precision, upcast) and fp32
    `probs` p, all in fp32 (call it outside autocast).

    Equal, bit for bit, to ``(probs * F.log_softmax(logits.float() / temp, dim=-1)).sum(dim=-1)``, gradient included;
    when `probs` needs a gradient too, that expression is what runs.
    """
    if probs.requires_grad:
        return (probs * F.log_softmax(logits.float() / temp, dim=-1)).sum(dim=-1)
    out: Tensor = _SoftCrossEntropyRows.apply(logits, probs.float(), temp)  # type: ignore[no-untyped-call]
    return out


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
            per_token = soft_cross_entropy_rows(student_masked_logits, teacher_probs, self.student_temp)
            return -(per_token * masks_weight.float()).sum() / n_images
