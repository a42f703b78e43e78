"""Conditional leakage: how much better a metadata column is decoded from the embedding *plus* given columns
than from the given columns alone.

Plain leakage confuses what an embedding knows about a column with what it knows about columns entangled
with it: on our plates 85 % of a plate's wells hold one cell line, so plate is decodable from an embedding
that only knows the cell line. Conditional leakage of ``plate | cell_line`` subtracts that part:

    value = score(embedding ⊕ one-hot(given)) − score(one-hot(given) alone)

Both scores come from out-of-fold predictions on the same rows and the same folds, with the probes of
:mod:`metadino.eval.leakage` (FINO, arXiv 2606.05107: measure dependence first, never suppress an
entangled factor alone — this is the measurement behind a guide's ``given:``):

- **categorical** target: standardised multinomial logistic regression, ``StratifiedKFold(folds, shuffle=True,
  random_state=seed)``, balanced accuracy (chance ``1 / n_classes``); classes with fewer than ``folds`` rows
  are left out and named in the note, as in plain leakage.
- **continuous** target: standardised ridge regression (``RidgeCV``), ``KFold``, R² (chance 0).
- multi-label targets are refused (:class:`~metadino.errors.UserError`).

Given columns are one-hot coded per distinct value (category labels as in leakage, so 3, 3.0 and "3" are one
value); a continuous given column enters as one number (standardised with the rest). Rows where the target or
any given column is missing are left out and counted (:attr:`ConditionalLeakage.n_missing`). A value near 0
means the embedding adds nothing about the column beyond the given columns; it can be slightly negative.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold

from metadino.data.table import infer_column_kind
from metadino.data.values import category_label, is_missing
from metadino.errors import UserError
from metadino.eval.leakage import (
    blas_threads,
    check_features,
    continuous_targets,
    cv_predict,
    fold_classes,
    fold_note,
    make_probe,
)

TARGET_KINDS: tuple[str, ...] = ("categorical", "continuous")


@dataclass
class ConditionalLeakage:
    """Decodability of `column` from the embedding beyond what the `given` columns explain.

    Attributes:
        column, given: the target column and the columns it is conditioned on.
        kind, metric: ``categorical`` / ``balanced_accuracy`` or ``continuous`` / ``r2``.
        value: ``with_embedding - given_only``.
        given_only: score of the probe on one-hot(given) alone.
        with_embedding: score of the probe on the embedding ⊕ one-hot(given).
        chance: score of a probe that knows nothing (``1 / n_classes``; 0 for R²).
        n_rows: rows scored (target and every given column known, rare classes left out).
        n_missing: rows left out because the target or a given column is missing.
        n_classes: classes probed; None for continuous.
        folds: cross-validation folds.
        dropped_classes: classes with fewer than ``folds`` rows, left out with their rows.
        note: one sentence on anything left out ('' if nothing).
    """

    column: str
    given: tuple[str, ...]
    kind: str
    metric: str
    value: float
    given_only: float
    with_embedding: float
    chance: float
    n_rows: int
    n_missing: int
    n_classes: int | None
    folds: int = 5
    dropped_classes: tuple[str, ...] = ()
    note: str = ""

    @property
    def key(self) -> str:
        return spec_key(self.column, self.given)


def spec_key(column: str, given: Sequence[str]) -> str:
    """The name of a conditional leakage in metrics and reports: ``plate|cell_line``, ``well|cell_line+antibody``."""
    return f"{column}|{'+'.join(given)}"


def given_design(frame: pd.DataFrame) -> np.ndarray:
    """[N, G] design of the given columns (no missing cells): one-hot per distinct value, one column per
    continuous given column."""
    parts: list[np.ndarray] = []
    for name in frame.columns:
        values = frame[name]
        if infer_column_kind(values) == "continuous":
            parts.append(np.asarray(values.astype(float), dtype=np.float64)[:, None])
            continue
        labels = np.asarray([category_label(v) for v in values], dtype=object)
        names, codes = np.unique(labels, return_inverse=True)
        parts.append(np.eye(len(names), dtype=np.float64)[codes])
    return np.concatenate(parts, axis=1)


def check_spec(column: str, given: Sequence[str], available: Sequence[str]) -> tuple[str, ...]:
    """`given` without duplicates, after checking that the spec names existing columns and is not circular."""
    given = tuple(dict.fromkeys(given))
    if not given:
        raise UserError(f"'{column}' needs at least one given column, e.g. {column}:cell_line "
                        f"(plain leakage is leakage_table / --leakage-columns)")
    if column in given:
        raise UserError(f"'{column}' cannot be given itself (conditional leakage of '{column}' given '{column}' "
                        f"itself is always 0); remove it from its given columns")
    unknown = [c for c in (column, *given) if c not in available]
    if unknown:
        raise UserError(f"unknown column {unknown[0]!r} for conditional leakage of '{column}'; "
                        f"available columns: {', '.join(available)}")
    return given


def check_target(values: pd.Series, column: str, where: str = "") -> str:
    """The kind of a conditional-leakage target (categorical or continuous); UserError for any other."""
    kind = infer_column_kind(values)
    if kind == "constant":
        raise UserError(f"'{column}' has fewer than two distinct values{where}; conditional leakage of a constant "
                        "is undefined")
    if kind not in TARGET_KINDS:
        raise UserError(f"conditional leakage supports categorical and continuous columns; '{column}' is {kind} "
                        f"— leave it out or list it under plain leakage")
    return kind


def conditional_leakage(
    features: np.ndarray,
    frame: pd.DataFrame,
    column: str,
    given: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
) -> ConditionalLeakage:
    """Cross-validated score of `column` from embedding ⊕ given minus from given alone (module docstring).

    Args:
        features: [N, D] embeddings, row i belongs to ``frame.iloc[i]``.
        frame: [N] rows holding `column` and the `given` columns.
        column: the target column (categorical or continuous, as ``infer_column_kind`` says).
        given: the columns conditioned on (at least one; not `column`).
        folds: cross-validation folds (>= 2).
        seed: shuffles the folds; the result is a deterministic function of the inputs and the seed.

    Raises:
        UserError: an unknown column, the target among its given columns, no given column, a multi-label or
            constant target, too few rows or classes — naming the column.
    """
    available = [str(c) for c in frame.columns]
    given = check_spec(column, given, available)
    x = check_features(features, len(frame), column)
    if folds < 2:
        raise UserError(f"conditional leakage needs at least 2 folds, got {folds}")
    cells = frame[[column, *given]]
    known = np.asarray([not any(is_missing(v) for v in row) for row in cells.itertuples(index=False)], dtype=bool)
    n_missing = int((~known).sum())
    target = cells[column][known].reset_index(drop=True)
    kind = check_target(target, column, f" in the rows where it and {', '.join(repr(g) for g in given)} are known")
    label = spec_key(column, given)
    design = given_design(cells.loc[known, list(given)].reset_index(drop=True))
    x = x[known]
    target_cells = list(target)
    if kind == "categorical":
        enc = fold_classes(target_cells, column, folds)
        rows, y = enc.keep, enc.y
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        score, chance, metric = balanced_accuracy_score, 1.0 / len(enc.classes), "balanced_accuracy"
        n_classes, dropped = len(enc.classes), enc.dropped
    else:
        rows, y = continuous_targets(target_cells, column, folds)
        cv = KFold(folds, shuffle=True, random_state=seed)
        score, chance, metric, n_classes, dropped = r2_score, 0.0, "r2", None, {}
    both = np.concatenate([x[rows], design[rows]], axis=1)
    with blas_threads(both):
        given_only = float(score(y, cv_predict(make_probe(kind), design[rows], y, cv)))
        with_embedding = float(score(y, cv_predict(make_probe(kind), both, y, cv)))
    notes = [fold_note(column, dropped, folds)]
    if n_missing:
        notes.append(f"'{label}': {n_missing} row(s) with a missing {' or '.join([column, *given])} were left out")
    return ConditionalLeakage(
        column=column, given=given, kind=kind, metric=metric, value=with_embedding - given_only,
        given_only=given_only, with_embedding=with_embedding, chance=chance, n_rows=int(rows.sum()),
        n_missing=n_missing, n_classes=n_classes, folds=folds, dropped_classes=tuple(dropped),
        note="; ".join(n for n in notes if n),
    )


def conditional_leakage_table(
    features: np.ndarray,
    frame: pd.DataFrame,
    specs: Mapping[str, Sequence[str]],
    *,
    folds: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, ConditionalLeakage]:
    """:func:`conditional_leakage` of each ``target -> given columns`` of `specs`, keyed ``target|given+given``.

    Every spec is checked before the first probe runs, so a typo in the last one fails at once.
    """
    available = [str(c) for c in frame.columns]
    checked = {column: check_spec(column, given, available) for column, given in specs.items()}
    from tqdm import tqdm  # only for the progress bar

    out: dict[str, ConditionalLeakage] = {}
    for column, given in tqdm(list(checked.items()), desc="conditional leakage", unit="column", disable=not progress):
        res = conditional_leakage(features, frame, column, given, folds=folds, seed=seed)
        out[res.key] = res
    return out


__all__ = ["ConditionalLeakage", "check_spec", "check_target", "conditional_leakage", "conditional_leakage_table", "given_design", "spec_key"]
