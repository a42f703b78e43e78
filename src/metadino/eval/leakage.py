"""Leakage: how well a linear probe decodes a metadata column from frozen embeddings.

For each column, out-of-fold predictions over all rows with a known value are scored once:

- **categorical**: standardised multinomial logistic regression (``C = 1``, at most 200 L-BFGS iterations),
  ``StratifiedKFold(folds, shuffle=True, random_state=seed)``, balanced accuracy (chance ``1 / n_classes``).
- **continuous**: standardised ridge regression whose ``alpha`` is chosen inside each training fold by
  efficient leave-one-out (``RidgeCV``, ``alphas = 10^-2 .. 10^6``), ``KFold(folds, shuffle=True,
  random_state=seed)``, R² of all out-of-fold predictions (chance 0; can be slightly negative).
- **multilabel** (cells like ``"a|b"``): one binary logistic probe per label, the mean of their balanced
  accuracies (chance 0.5).

Classes (or multilabel labels) with fewer than ``folds`` rows cannot be both trained on and tested in
every fold: their rows are dropped and named in :attr:`Leakage.dropped_classes` and :attr:`Leakage.note`.
Informative columns should leak *more* after metadata-guided adaptation, spurious ones less.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from metadino.data.table import infer_column_kind
from metadino.data.values import category_label, known_mask, multilabel_separator, split_labels
from metadino.errors import UserError

LOGISTIC_C = 1.0
LOGISTIC_MAX_ITER = 200  # standardised features converge well before this; bounds the worst case
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 6, 17))
SINGLE_THREAD_MAX_SIZE = 1_000_000  # features [N, D] with at most this many values use one BLAS thread
KINDS: tuple[str, ...] = ("categorical", "continuous", "multilabel")


@dataclass
class Leakage:
    """Linear-probe decodability of one metadata column.

    Attributes:
        column, kind: the column and how it was probed.
        metric: ``balanced_accuracy`` (categorical), ``r2`` (continuous), ``mean_balanced_accuracy`` (multilabel).
        value: the score of all out-of-fold predictions.
        chance: the score of a probe that knows nothing (``1 / n_classes``, 0 for R², 0.5 for multilabel).
        n_rows: rows with a known value that were used.
        n_classes: classes (labels for multilabel) that were probed; None for continuous.
        folds: cross-validation folds.
        dropped_classes: classes with fewer than ``folds`` rows, left out with their rows.
        note: one sentence on anything left out ('' if nothing).
    """

    column: str
    kind: str
    metric: str
    value: float
    chance: float
    n_rows: int
    n_classes: int | None
    folds: int = 5
    dropped_classes: tuple[str, ...] = ()
    note: str = ""


def make_probe(kind: str) -> Pipeline:
    """The probe used for `kind` (categorical/multilabel: logistic regression; continuous: ridge)."""
    if kind == "continuous":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS, gcv_mode="svd"))
    return make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, max_iter=LOGISTIC_MAX_ITER))


def fold_note(column: str, dropped: dict[str, int], folds: int) -> str:
    """One sentence naming the values (with their row counts) left out because they have fewer than `folds` rows."""
    if not dropped:
        return ""
    shown = ", ".join(f"{k} ({v})" for k, v in list(dropped.items())[:8])
    more = f" and {len(dropped) - 8} more" if len(dropped) > 8 else ""
    rows = sum(dropped.values())
    return (f"'{column}': {len(dropped)} value(s) with fewer than {folds} rows were left out "
            f"({rows} rows): {shown}{more}")


def cv_predict(probe: Pipeline, x: np.ndarray, y: np.ndarray, cv: Any) -> np.ndarray:
    """Out-of-fold predictions of `probe`, without convergence warnings (max_iter bounds the run time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter bounds run time; near-optimum is enough
        pred: np.ndarray = cross_val_predict(probe, x, y, cv=cv)
    return pred


def blas_threads(x: np.ndarray) -> Any:
    """Context: one BLAS thread for small problems, where thread hand-offs cost more than they save
    (and stall badly on a busy machine); the library default for large ones."""
    return threadpool_limits(limits=1 if x.size <= SINGLE_THREAD_MAX_SIZE else None, user_api="blas")


def check_features(features: np.ndarray, n_rows: int, column: str) -> np.ndarray:
    """`features` as float64 [N, D]; ValueError (a programming error) on a wrong shape or non-finite values."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if n_rows != x.shape[0]:
        raise ValueError(f"features have {x.shape[0]} rows but column '{column}' has {n_rows}")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or infinite values")
    return x


@dataclass
class FoldClasses:
    """A categorical column encoded for `folds`-fold stratified probing.

    Attributes:
        keep: [N] rows whose class has at least ``folds`` rows.
        y: int64 class ids of the kept rows, indexing `classes`.
        classes: the kept classes, sorted.
        dropped: the left-out classes and their row counts.
    """

    keep: np.ndarray
    y: np.ndarray
    classes: list[str]
    dropped: dict[str, int]


def fold_classes(cells: Sequence[Any], column: str, folds: int) -> FoldClasses:
    """Canonical class labels of known `cells`, with classes of fewer than `folds` rows left out.

    Raises:
        UserError: fewer than two classes with at least `folds` rows, naming the column.
    """
    labels = np.asarray([category_label(v) for v in cells], dtype=object)
    names, counts = np.unique(labels, return_counts=True)
    dropped = {str(n): int(c) for n, c in zip(names, counts) if c < folds}
    kept = [str(n) for n, c in zip(names, counts) if c >= folds]
    if len(kept) < 2:
        raise UserError(
            f"column '{column}' has {len(kept)} value(s) with at least {folds} rows (values: {len(names)}, "
            f"rows with a known value: {len(labels)}); a leakage probe needs two or more such classes — "
            f"leave the column out or use fewer folds"
        )
    keep = np.isin(labels, kept)
    y = np.searchsorted(np.asarray(kept, dtype=object), labels[keep]).astype(np.int64)
    return FoldClasses(keep=keep, y=y, classes=kept, dropped=dropped)


def continuous_targets(cells: Sequence[Any], column: str, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(finite-row mask [N], float targets of those rows) of a continuous column.

    Raises:
        UserError: a non-number, fewer than ``2 * folds`` finite rows, or a constant column, naming the column.
    """
    try:
        y = np.asarray([float(v) for v in cells], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"column '{column}' was probed as continuous but holds a non-number ({err}); "
                        f"pass kind='categorical' or fix the cells") from None
    finite = np.isfinite(y)
    y = y[finite]
    if len(y) < 2 * folds:
        raise UserError(f"column '{column}' has only {len(y)} rows with a known value; a {folds}-fold leakage "
                        f"probe needs at least {2 * folds}")
    if np.ptp(y) == 0:
        raise UserError(f"column '{column}' is constant over its known rows; leakage of a constant is undefined, "
                        f"leave it out")
    return finite, y


def _categorical(x: np.ndarray, cells: list[Any], column: str, folds: int, seed: int) -> Leakage:
    enc = fold_classes(cells, column, folds)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    pred = cv_predict(make_probe("categorical"), x[enc.keep], enc.y, cv)
    return Leakage(column=column, kind="categorical", metric="balanced_accuracy",
                   value=float(balanced_accuracy_score(enc.y, pred)), chance=1.0 / len(enc.classes),
                   n_rows=int(enc.keep.sum()), n_classes=len(enc.classes), folds=folds,
                   dropped_classes=tuple(enc.dropped), note=fold_note(column, enc.dropped, folds))


def _continuous(x: np.ndarray, cells: list[Any], column: str, folds: int, seed: int) -> Leakage:
    finite, y = continuous_targets(cells, column, folds)
    cv = KFold(folds, shuffle=True, random_state=seed)
    pred = cv_predict(make_probe("continuous"), x[finite], y, cv)
    return Leakage(column=column, kind="continuous", metric="r2", value=float(r2_score(y, pred)), chance=0.0,
                   n_rows=len(y), n_classes=None, folds=folds)


def _multilabel(x: np.ndarray, cells: list[Any], column: str, folds: int, seed: int) -> Leakage:
    sep = multilabel_separator(cells)
    sets = [set(split_labels(v, sep)) for v in cells]
    names = sorted(set().union(*sets)) if sets else []
    n = len(sets)
    scores: list[float] = []
    dropped: dict[str, int] = {}
    for name in names:
        y = np.asarray([name in s for s in sets], dtype=np.int64)
        pos = int(y.sum())
        if min(pos, n - pos) < folds:
            dropped[name] = min(pos, n - pos)
            continue
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        pred = cv_predict(make_probe("multilabel"), x, y, cv)
        scores.append(float(balanced_accuracy_score(y, pred)))
    if not scores:
        raise UserError(f"column '{column}' has no label that is both present and absent in at least {folds} "
                        f"rows; a leakage probe needs one — leave the column out or use fewer folds")
    note = fold_note(column, dropped, folds).replace("value(s)", "label(s)").replace("rows were", "rows (present or absent) were")
    return Leakage(column=column, kind="multilabel", metric="mean_balanced_accuracy", value=float(np.mean(scores)),
                   chance=0.5, n_rows=n, n_classes=len(scores), folds=folds, dropped_classes=tuple(dropped), note=note)


def column_leakage(
    features: np.ndarray,
    values: pd.Series,
    *,
    column: str,
    kind: str | None = None,
    folds: int = 5,
    seed: int = 0,
) -> Leakage:
    """Cross-validated linear-probe score of one column (module docstring).

    Args:
        features: [N, D] embeddings, row i belongs to ``values.iloc[i]``.
        values: [N] the column; missing cells (None/NaN/blank) are left out.
        column: the column's name, for messages.
        kind: ``categorical`` / ``continuous`` / ``multilabel``; None: ``infer_column_kind``.
        folds: cross-validation folds (>= 2).
        seed: shuffles the folds; the result is a deterministic function of the inputs and the seed.

    Raises:
        UserError: a constant column, too few rows, or too few classes with ``folds`` rows, naming the column.
    """
    x = check_features(features, len(values), column)
    if folds < 2:
        raise UserError(f"leakage needs at least 2 folds, got {folds}")
    kind = infer_column_kind(values) if kind is None else kind
    if kind == "constant":
        raise UserError(f"column '{column}' has fewer than two distinct known values; leakage of a constant "
                        f"column is undefined, leave it out")
    if kind not in KINDS:
        raise UserError(f"unknown column kind '{kind}' for '{column}'; use one of {', '.join(KINDS)}")
    cells = list(values)
    known = known_mask(values)
    known_cells = [v for v, k in zip(cells, known) if k]
    probe = {"categorical": _categorical, "continuous": _continuous, "multilabel": _multilabel}[kind]
    with blas_threads(x):
        return probe(x[known], known_cells, column, folds, seed)


def leakage_table(
    features: np.ndarray,
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Leakage]:
    """:func:`column_leakage` of each of `columns` of `frame` (rows aligned with `features` [N, D]).

    Raises:
        UserError: an unknown column (listing the available ones), or any column's own problem.
    """
    available = [str(c) for c in frame.columns]
    unknown = [c for c in columns if c not in available]
    if unknown:
        raise UserError(f"unknown column(s) {', '.join(repr(c) for c in unknown)} for leakage; available columns: "
                        f"{', '.join(available)}")
    from tqdm import tqdm  # only for the progress bar

    out: dict[str, Leakage] = {}
    for column in tqdm(list(columns), desc="leakage", unit="column", disable=not progress):
        out[column] = column_leakage(features, frame[column], column=column, folds=folds, seed=seed)
    return out


__all__ = ["KINDS", "FoldClasses", "Leakage", "blas_threads", "check_features", "column_leakage", "continuous_targets",
           "cv_predict", "fold_classes", "fold_note", "leakage_table", "make_probe"]
