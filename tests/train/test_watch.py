"""UniformTargetWatch: warns once when the DINO term sits at ln K, never for a term that learns."""

from __future__ import annotations

import math

from metadino.train.watch import UniformTargetWatch


def test_warns_once_after_the_window_at_ln_k():
    watch = UniformTargetWatch(2048, window=30, skip=5)
    ln_k = math.log(2048)
    said = [watch.update(step, ln_k - 0.002) for step in range(200)]
    warnings = [s for s in said if s]
    assert len(warnings) == 1 and said.index(warnings[0]) == 5 + 30 - 1
    assert "ln K = 7.625" in warnings[0] and "ssl.head.batchnorm" in warnings[0]


def test_silent_when_the_term_leaves_ln_k_or_returns_only_briefly():
    ln_k = math.log(256)
    learning = UniformTargetWatch(256, window=30, skip=5)
    assert not any(learning.update(s, ln_k - 0.01 * s) for s in range(300))
    flicker = UniformTargetWatch(256, window=30, skip=5)  # the run resets at every step away from ln K
    assert not any(flicker.update(s, ln_k if s % 20 else ln_k - 1.0) for s in range(300))
