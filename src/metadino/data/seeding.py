"""Counter-based seeding: every random stream is a pure function of integer keys.

Augmentation draws come from ``make_generator(seed, epoch, index, crop_id)``, so a crop does not depend
on the worker that made it, the rank, the batch size or the order in which samples are visited.
"""

from __future__ import annotations

import numpy as np
import torch

_U64 = 1 << 64
_MIN_KEY = -(1 << 63)


def _encode(keys: tuple[int, ...]) -> list[int]:
    """Fixed-width uint32 words: [len, lo_0, hi_0, lo_1, hi_1, ...].

    numpy's SeedSequence pads entropy with zeros and splits big ints into a variable number of words, so
    (0,) and (0, 0), or (2**32,) and (0, 1), hash to the same state. Prefixing the length and giving every
    key exactly two words makes distinct key tuples distinct entropy.
    """
    words = [len(keys)]
    for k in keys:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"seed keys must be integers, got {type(k).__name__} ({k!r})")
        k = int(k)
        if not _MIN_KEY <= k < _U64:
            raise ValueError(f"seed key {k} does not fit in 64 bits")
        k %= _U64  # negatives as two's complement
        words += [k & 0xFFFFFFFF, k >> 32]
    return words


def derive_seed(*keys: int) -> int:
    """Stable 63-bit seed from integer keys (e.g. ``(seed, epoch, index, crop_id)``).

    Uses numpy's SeedSequence hash, so different key tuples give unrelated streams, and the value is the
    same in every process, worker and rank, and across runs and platforms.

    Args:
        keys: integers in [-2**63, 2**64); the tuple length is part of the key.
    Returns:
        An int in [0, 2**63).
    """
    state = np.random.SeedSequence(_encode(keys)).generate_state(2, dtype=np.uint32)
    return ((int(state[1]) << 32) | int(state[0])) >> 1


def make_generator(*keys: int) -> torch.Generator:
    """CPU ``torch.Generator`` seeded with ``derive_seed(*keys)``."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(*keys))
    return gen


def draw_uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One float from U[low, high) (float64 draw, so no float32 rounding of the bounds)."""
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return low + (high - low) * u


def draw_int(generator: torch.Generator, low: int, high: int) -> int:
    """One int uniform in [low, high] (both ends included, like ``random.randint``)."""
    return int(torch.randint(low, high + 1, (), generator=generator).item())
