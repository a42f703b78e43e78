from __future__ import annotations

import numpy as np
import pytest
import torch

from metadino.data.seeding import derive_seed, draw_int, draw_uniform, make_generator


def test_derive_seed_is_stable_across_versions() -> None:
    # Pinned: resumed runs and re-embedding rely on the same keys giving the same augmentation streams.
    assert derive_seed(0) == 3717377837946358015
    assert derive_seed(0, 0, 0, 0) == 8370392774719438729
    assert derive_seed(42, 3, 17, 5) == 7652333799048066016


def test_derive_seed_range_and_type() -> None:
    for keys in [(0,), (1, 2, 3), (2**64 - 1,), (-1, 5), (np.int64(7), 3)]:
        s = derive_seed(*keys)
        assert isinstance(s, int) and 0 <= s < 2**63


@pytest.mark.parametrize(
    "a, b",
    [
        ((0,), (0, 0)),  # plain SeedSequence pads with zeros: these would collide
        ((2**32,), (0, 1)),  # ... and splits big ints into words: these too
        ((1, 2), (2, 1)),
        ((0, 0, 5, 0), (0, 0, 5, 1)),
        ((0, 1, 5, 0), (0, 0, 5, 0)),
        ((-1,), (2**64 - 2,)),
    ],
)
def test_distinct_keys_give_distinct_seeds(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    assert derive_seed(*a) != derive_seed(*b)


def test_no_collisions_over_a_grid_of_keys() -> None:
    seeds = {derive_seed(s, e, i, c) for s in range(3) for e in range(4) for i in range(20) for c in range(10)}
    assert len(seeds) == 3 * 4 * 20 * 10


def test_bad_keys_raise() -> None:
    with pytest.raises(TypeError):
        derive_seed(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        derive_seed(True)
    with pytest.raises(ValueError):
        derive_seed(2**64)
    with pytest.raises(ValueError):
        derive_seed(-(2**63) - 1)


def test_make_generator_reproducible_and_independent() -> None:
    a = torch.rand(8, generator=make_generator(1, 2, 3, 4))
    b = torch.rand(8, generator=make_generator(1, 2, 3, 4))
    c = torch.rand(8, generator=make_generator(1, 2, 3, 5))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert make_generator(1).device == torch.device("cpu")
    # seeding does not touch the global RNG
    torch.manual_seed(0)
    x = torch.rand(3)
    torch.manual_seed(0)
    make_generator(9)
    assert torch.equal(torch.rand(3), x)


def test_draw_helpers_cover_their_ranges() -> None:
    g = make_generator(0)
    ints = {draw_int(g, 2, 4) for _ in range(200)}
    assert ints == {2, 3, 4}
    assert draw_int(g, 5, 5) == 5
    floats = [draw_uniform(g, -1.0, 3.0) for _ in range(200)]
    assert all(-1.0 <= f < 3.0 for f in floats)
    assert min(floats) < 0.0 and max(floats) > 2.0
