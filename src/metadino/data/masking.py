"""iBOT block masks on the patch grid (BEiT/DINOv2 MaskingGenerator semantics)."""

from __future__ import annotations

import math

import torch

from metadino.data.seeding import draw_int, draw_uniform


class MaskingGenerator:
    """Random rectangular blocks of patches, then uniformly random patches up to an exact count.

    Each block has a target area U(min_num_patches, cap) with cap = min(remaining, max_num_patches) and a
    log-uniform aspect ratio in [min_aspect, 1/min_aspect]; a block is kept only if it adds between 1 and
    ``cap`` new patches (10 attempts per block). Blocks stop when the count is reached or no block fits;
    the rest are then chosen uniformly among the unmasked patches (the reference does that top-up in its
    collate; here it is part of the generator so that the count is always exact).

    Args:
        grid: (h, w) patch grid of the crop.
        min_num_patches: smallest block target area.
        max_num_patches: largest block area; None means half the grid (the DINOv2 setting, 0.5*N).
        min_aspect: smallest block aspect ratio; the largest is its inverse.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
    ) -> None:
        self.height, self.width = int(grid[0]), int(grid[1])
        if self.height < 1 or self.width < 1:
            raise ValueError(f"mask grid must be at least 1x1, got {grid}")
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = int(0.5 * self.num_patches) if max_num_patches is None else max_num_patches
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))

    def _add_block(self, mask: torch.Tensor, cap: int, generator: torch.Generator) -> int:
        """Try up to 10 blocks; mask the first that adds 1..cap new patches. Returns how many it added."""
        for _ in range(10):
            area = draw_uniform(generator, self.min_num_patches, cap)
            aspect = math.exp(draw_uniform(generator, *self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            # strict '<' as in the reference: a block never spans a whole side of the grid
            if w < self.width and h < self.height:
                top = draw_int(generator, 0, self.height - h)
                left = draw_int(generator, 0, self.width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= cap:
                    block.fill_(True)
                    return new
        return 0

    def __call__(self, num_masking_patches: int, generator: torch.Generator) -> torch.Tensor:
        """Mask exactly ``num_masking_patches`` patches.

        Args:
            num_masking_patches: in [0, h*w].
            generator: the only source of randomness.
        Returns:
            bool [h, w] with exactly ``num_masking_patches`` True.
        """
        if not 0 <= num_masking_patches <= self.num_patches:
            raise ValueError(f"cannot mask {num_masking_patches} of {self.num_patches} patches")
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < num_masking_patches:
            added = self._add_block(mask, min(num_masking_patches - count, self.max_num_patches), generator)
            if added == 0:
                break
            count += added
        if count < num_masking_patches:
            flat = mask.view(-1)
            free = (~flat).nonzero().squeeze(1)
            pick = torch.randperm(free.numel(), generator=generator)[: num_masking_patches - count]
            flat[free[pick]] = True
        return mask
