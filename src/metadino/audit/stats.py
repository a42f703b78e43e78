"""Association statistics between two metadata columns, over the rows where both cells are known.

- categorical–categorical: bias-corrected Cramér's V (Bergsma 2013, J. Korean Stat. Soc. 42:323), mutual
  information with the Miller–Madow bias ``(r-1)(c-1)/2n`` subtracted (Miller 1955), normalised as
  NMI = MI / sqrt(H(a) H(b)) and as the uncertainty coefficients U(b|a) = MI / H(b) ("how much a determines
  b") and U(a|b);
- categorical–continuous: correlation ratio η from the degrees-of-freedom-adjusted η² (so that many small
  groups do not look associated);
- continuous–continuous: |Spearman ρ|.

Multi-label cells are compared as whole strings (their category label).

**"a determines b"** (:func:`determines`) holds when U(b|a) ≥ 0.5 or V ≥ 0.5 (categorical pairs), η ≥ 0.7
(η² ≥ ~0.5) when one side is continuous, |ρ| ≥ 0.7 for two continuous columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from metadino.data.values import category_label, known_mask

STRONG_U = 0.5
STRONG_V = 0.5
STRONG_ETA = 0.7
STRONG_RHO = 0.7
MIN_JOINT_ROWS = 3  # fewer jointly known rows: no association is measured


@dataclass
class Association:
    """Association of columns `a` and `b` over the rows where both are known.

    ``value`` is the symmetric strength in [0, 1] (Cramér's V, η, or |Spearman ρ| — see ``measure``);
    ``u_b_given_a`` / ``u_a_given_b`` / ``nmi`` exist for categorical pairs only.
    For ``correlation_ratio`` the categorical side is `a`.
    """

    a: str
    b: str
    measure: str  # cramers_v | correlation_ratio | spearman
    value: float
    n_rows: int
    u_b_given_a: float | None = None
    u_a_given_b: float | None = None
    nmi: float | None = None

    def oriented(self, a: str) -> Association:
        """This association with column `a` on the `a` side (η keeps the categorical side first, so it may be
        swapped)."""
        if self.a == a:
            return self
        return Association(self.b, self.a, self.measure, self.value, self.n_rows, self.u_a_given_b,
                           self.u_b_given_a, self.nmi)


def entropy(counts: np.ndarray) -> float:
    """Plug-in Shannon entropy (nats) of a count vector."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def categorical_association(a: Sequence[str], b: Sequence[str], name_a: str = "a", name_b: str = "b") -> Association:
    """Bias-corrected Cramér's V, NMI and U(b|a), U(a|b) of two aligned label sequences (module docstring)."""
    table = pd.crosstab(pd.Series(list(a), dtype=object), pd.Series(list(b), dtype=object)).to_numpy(np.float64)
    n = float(table.sum())
    r, c = table.shape
    if n < 2 or r < 2 or c < 2:
        return Association(name_a, name_b, "cramers_v", 0.0, int(n), 0.0, 0.0, 0.0)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    phi2 = max(0.0, chi2 / n - (r - 1) * (c - 1) / (n - 1))
    r_corr = r - (r - 1) ** 2 / (n - 1)
    c_corr = c - (c - 1) ** 2 / (n - 1)
    denom = min(r_corr - 1, c_corr - 1)
    v = math.sqrt(min(1.0, phi2 / denom)) if denom > 0 else 0.0
    h_a, h_b = entropy(table.sum(1)), entropy(table.sum(0))
    mi = max(0.0, h_a + h_b - entropy(table.ravel()) - (r - 1) * (c - 1) / (2 * n))
    u_ba = min(1.0, mi / h_b) if h_b > 0 else 0.0
    u_ab = min(1.0, mi / h_a) if h_a > 0 else 0.0
    nmi = min(1.0, mi / math.sqrt(h_a * h_b)) if h_a > 0 and h_b > 0 else 0.0
    return Association(name_a, name_b, "cramers_v", v, int(n), u_ba, u_ab, nmi)


def correlation_ratio(groups: Sequence[str], y: np.ndarray, name_a: str = "a", name_b: str = "b") -> Association:
    """η of continuous `y` given categorical `groups`, from the adjusted η² = 1 - (SSW/(n-k)) / (SST/(n-1))."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    codes, _ = pd.factorize(pd.Series(list(groups), dtype=object))
    k = int(codes.max()) + 1 if n else 0
    sst = float(((y - y.mean()) ** 2).sum()) if n else 0.0
    if n - k < 1 or k < 2 or sst <= 0:
        return Association(name_a, name_b, "correlation_ratio", 0.0, n)
    sums = np.bincount(codes, weights=y, minlength=k)
    sizes = np.bincount(codes, minlength=k)
    ssb = float((sums**2 / np.maximum(sizes, 1)).sum() - y.sum() ** 2 / n)
    adj = 1.0 - ((sst - ssb) / (n - k)) / (sst / (n - 1))
    return Association(name_a, name_b, "correlation_ratio", math.sqrt(min(1.0, max(0.0, adj))), n)


def rank_correlation(x: np.ndarray, y: np.ndarray, name_a: str = "a", name_b: str = "b") -> Association:
    """|Spearman ρ| of two continuous columns."""
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Association(name_a, name_b, "spearman", 0.0, n)
    rho = float(spearmanr(x, y).statistic)
    return Association(name_a, name_b, "spearman", abs(rho) if math.isfinite(rho) else 0.0, n)


def determines(assoc: Association, a: str) -> bool:
    """Whether column `a` (one side of `assoc`) nearly determines the other (module docstring thresholds)."""
    if assoc.measure == "cramers_v":
        u = assoc.u_b_given_a if a == assoc.a else assoc.u_a_given_b
        return (u or 0.0) >= STRONG_U or assoc.value >= STRONG_V
    return assoc.value >= (STRONG_ETA if assoc.measure == "correlation_ratio" else STRONG_RHO)


def describe(assoc: Association, a: str) -> str:
    """'Cramér's V 0.79, U(cell_line|plate) 0.58' from a's point of view."""
    b = assoc.b if a == assoc.a else assoc.a
    if assoc.measure == "cramers_v":
        u = assoc.u_b_given_a if a == assoc.a else assoc.u_a_given_b
        return f"Cramér's V {assoc.value:.2f}, U({b}|{a}) {u or 0.0:.2f}"
    if assoc.measure == "correlation_ratio":
        return f"correlation ratio η {assoc.value:.2f}"
    return f"|Spearman ρ| {assoc.value:.2f}"


@dataclass
class PreparedColumn:
    """One column's cells, converted once for many pairings: known mask, class names, numbers (NaN where not
    a number)."""

    name: str
    kind: str
    known: np.ndarray
    labels: np.ndarray
    numbers: np.ndarray

    @classmethod
    def of(cls, name: str, series: pd.Series, kind: str) -> PreparedColumn:
        known = known_mask(series)
        labels = np.asarray([category_label(v) if k else "" for v, k in zip(series, known)], dtype=object)
        numbers = np.full(len(series), np.nan)
        if kind == "continuous":
            numbers[known] = [float(v) for v, k in zip(series, known) if k]
        return cls(name, kind, known, labels, numbers)


def associate(pa: PreparedColumn, pb: PreparedColumn) -> Association | None:
    """The association of two columns that fits their kinds; None with fewer than 3 jointly known rows.

    A ``correlation_ratio`` always has the categorical column as `a`, so the result may be swapped.
    """
    a, b = pa.name, pb.name
    both = pa.known & pb.known
    if both.sum() < MIN_JOINT_ROWS:
        return None
    cont_a, cont_b = pa.kind == "continuous", pb.kind == "continuous"
    if cont_a and cont_b:
        return rank_correlation(pa.numbers[both], pb.numbers[both], a, b)
    if cont_a:  # η keeps the categorical side first
        return correlation_ratio(pb.labels[both], pa.numbers[both], b, a)
    if cont_b:
        return correlation_ratio(pa.labels[both], pb.numbers[both], a, b)
    return categorical_association(pa.labels[both], pb.labels[both], a, b)


__all__ = [
    "Association", "PreparedColumn", "associate", "categorical_association", "correlation_ratio", "describe",
    "determines", "entropy", "rank_correlation",
]
