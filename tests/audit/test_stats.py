"""Association measures: bias-corrected Cramér's V and uncertainty coefficients, η, |Spearman ρ|."""

from __future__ import annotations

import numpy as np
import pytest

from metadino.audit.stats import categorical_association, correlation_ratio, rank_correlation


def test_association_measures():
    rng = np.random.default_rng(0)
    fine = [f"f{v}" for v in rng.integers(0, 8, 400)]
    coarse = [f"c{int(v[1:]) // 2}" for v in fine]  # a function of fine
    same = categorical_association(fine, fine)
    assert same.value == pytest.approx(1.0, abs=0.02) and same.u_b_given_a == pytest.approx(1.0, abs=0.03)
    nested = categorical_association(fine, coarse)
    assert nested.u_b_given_a > 0.95  # fine determines coarse ...
    assert nested.u_a_given_b == pytest.approx(np.log(4) / np.log(8), abs=0.03)  # ... coarse explains 2/3 of fine
    independent = categorical_association(fine, [f"x{v}" for v in rng.integers(0, 8, 400)])
    assert independent.value < 0.1 and independent.u_b_given_a < 0.05  # bias correction: ≈ 0, not the plug-in MI

    groups = rng.integers(0, 3, 300)
    y = groups * 2.0 + 0.1 * rng.normal(size=300)
    assert correlation_ratio([str(g) for g in groups], y).value > 0.95
    assert correlation_ratio([str(g) for g in groups], rng.normal(size=300)).value < 0.15
    many = [str(i // 2) for i in range(300)]  # 150 groups of 2: a raw η² would be ≈ 0.5
    assert correlation_ratio(many, rng.normal(size=300)).value < 0.3
    x = rng.normal(size=200)
    assert rank_correlation(x, -np.exp(x)).value == pytest.approx(1.0)
