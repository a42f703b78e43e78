from __future__ import annotations

import pytest
import torch

from metadino.data.masking import MaskingGenerator
from metadino.data.seeding import make_generator


def _components(mask: torch.Tensor) -> int:
    """Number of 4-connected components of a bool [h, w] mask."""
    m = mask.clone()
    h, w = m.shape
    count = 0
    for i in range(h):
        for j in range(w):
            if not m[i, j]:
                continue
            count += 1
            stack = [(i, j)]
            m[i, j] = False
            while stack:
                a, b = stack.pop()
                for x, y in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                    if 0 <= x < h and 0 <= y < w and m[x, y]:
                        m[x, y] = False
                        stack.append((x, y))
    return count


@pytest.mark.parametrize("grid", [(14, 14), (4, 4), (3, 5), (2, 2), (1, 1)])
def test_exact_count_for_every_n(grid: tuple[int, int]) -> None:
    gen = MaskingGenerator(grid)
    n_total = grid[0] * grid[1]
    step = max(1, n_total // 12)
    for n in list(range(0, n_total + 1, step)) + [n_total]:
        mask = gen(n, make_generator(n, *grid))
        assert mask.shape == grid and mask.dtype == torch.bool
        assert int(mask.sum()) == n


def test_default_block_cap_is_half_the_grid() -> None:
    assert MaskingGenerator((14, 14)).max_num_patches == 98
    assert MaskingGenerator((14, 14), max_num_patches=10).max_num_patches == 10


def test_masks_are_blocks_not_salt_and_pepper() -> None:
    # 40% of a 14x14 grid: blocks give a few connected regions; uniform tokens give ~25.
    gen = MaskingGenerator((14, 14))
    blocks = [_components(gen(78, make_generator(s))) for s in range(30)]
    uniform = []
    for s in range(30):
        u = torch.zeros(196, dtype=torch.bool)
        u[torch.randperm(196, generator=make_generator(s, 1))[:78]] = True
        uniform.append(_components(u.view(14, 14)))
    assert sum(blocks) / 30 < 5 < sum(uniform) / 30


def test_each_block_respects_the_cap() -> None:
    gen = MaskingGenerator((14, 14), max_num_patches=6)
    g = make_generator(3)
    mask = torch.zeros(14, 14, dtype=torch.bool)
    for _ in range(50):
        added = gen._add_block(mask, 6, g)
        assert 0 <= added <= 6


def test_deterministic_given_generator() -> None:
    gen = MaskingGenerator((8, 8))
    assert torch.equal(gen(20, make_generator(1)), gen(20, make_generator(1)))
    assert not torch.equal(gen(20, make_generator(1)), gen(20, make_generator(2)))


def test_bad_arguments() -> None:
    gen = MaskingGenerator((4, 4))
    with pytest.raises(ValueError):
        gen(17, make_generator(0))
    with pytest.raises(ValueError):
        gen(-1, make_generator(0))
    with pytest.raises(ValueError):
        MaskingGenerator((0, 4))
    with pytest.raises(ValueError):
        MaskingGenerator((4, 4), min_aspect=2.0)
