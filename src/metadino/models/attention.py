"""CLS attention maps of the last block, the same for every backbone (built-in ViT, transformers DINOv2, DINOv2 with
registers, DINOv3): the row of the CLS query in :meth:`Backbone.last_block_attention`, split into what it gives the
CLS token itself, the registers and the patches, the patches as a map over the patch grid.

The three parts sum to 1 per image and head (a softmax row). The patch map is *not* renormalised: what a head puts
on the CLS token or on registers is kept apart (:attr:`CLSAttention.patch_share`); :meth:`CLSAttention.patch_distribution`
gives the map renormalised over the patches, the distribution a localisation score reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metadino.models.backbone import Backbone

__all__ = ["CLSAttention", "cls_attention"]


@dataclass
class CLSAttention:
    """The CLS query's attention in the last block, per image and head (fp32, on the images' device).

    Attributes:
        patches: [B, heads, h, w] attention on each patch (row-major patch grid of the input).
        cls: [B, heads] attention of CLS on itself.
        registers: [B, heads, R] attention on the register tokens, or None for a backbone without registers.
    """

    patches: Tensor
    cls: Tensor
    registers: Tensor | None

    @property
    def patch_share(self) -> Tensor:
        """[B, heads] share of the CLS attention that goes to patches (1 - CLS - registers)."""
        return self.patches.flatten(2).sum(dim=2)

    def patch_distribution(self, mean_heads: bool = True) -> Tensor:
        """The patch map renormalised to sum to 1 over the patches: [B, h, w] averaged over the heads (each head
        renormalised first), or [B, heads, h, w] with ``mean_heads=False``."""
        flat = self.patches.flatten(2)
        dist = (flat / flat.sum(dim=2, keepdim=True).clamp_min(1e-12)).reshape(self.patches.shape)
        return dist.mean(dim=1) if mean_heads else dist


@torch.no_grad()
def cls_attention(backbone: Backbone, images: Tensor) -> CLSAttention:
    """The last block's CLS -> token attention of `backbone` on `images` ([B, C, H, W], preprocessed as for
    ``forward``), split into patches (as an h x w map), CLS and registers. The backbone's mode is left as it is
    (call ``eval()`` first for deterministic maps: DINOv3 jitters its RoPE in training mode)."""
    probs = backbone.last_block_attention(images).float()  # [B, heads, T, T]
    b, heads, t, _ = probs.shape
    p = backbone.patch_size
    h, w = images.shape[-2] // p, images.shape[-1] // p
    r = backbone.num_registers
    if t != 1 + r + h * w:
        raise RuntimeError(f"{type(backbone).__name__} returned attention over {t} tokens; expected 1 + {r} registers "
                           f"+ {h}x{w} patches")
    row = probs[:, :, 0]  # the CLS query
    return CLSAttention(patches=row[:, :, 1 + r:].reshape(b, heads, h, w), cls=row[:, :, 0],
                        registers=row[:, :, 1:1 + r] if r else None)
