"""Linear probe: logistic regression on standardised frozen features, regularisation chosen on validation.

The inverse regularisation strength C is swept over a log grid; each value is fitted on the train rows
and scored on the validation rows (balanced accuracy, or macro F1 for multi-label); the best C (ties:
the stronger regularisation) is refitted on train + validation and used on the test rows. When no
validation rows are given, a stratified share of the train rows is carved out for the sweep.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class LinearProbe:
    model: Pipeline
    C: float
    val_scores: dict[float, float] = field(default_factory=dict)
    carved_validation: bool = False

    def predict_proba(self, features: np.ndarray, n_classes: int | None = None) -> np.ndarray:
        """[N, n_classes] probabilities; classes never seen in training get probability 0."""
        probs: np.ndarray = self.model.predict_proba(features)
        if n_classes is None or probs.shape[1] == n_classes or getattr(self.model, "classes_", None) is None:
            return probs
        full = np.zeros((probs.shape[0], n_classes))
        full[:, self.model.classes_.astype(int)] = probs
        return full


def _make(C: float, multilabel: bool, max_iter: int, seed: int) -> Pipeline:
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(clf) if multilabel else clf)


def _score(model: Pipeline, x: np.ndarray, y: np.ndarray, multilabel: bool) -> float:
    if multilabel:
        return float(f1_score(y, model.predict(x), average="macro", zero_division=0))
    return float(balanced_accuracy_score(y, model.predict(x)))


def carve_validation(y: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val) of a stratified split of the train rows (plain split for rare classes or multi-label)."""
    index = np.arange(len(y))
    stratify = None
    if y.ndim == 1:
        _, counts = np.unique(y, return_counts=True)
        n_val = max(int(round(share * len(y))), 1)
        if counts.min() >= 2 and n_val >= len(counts):
            stratify = y
    fit, val = train_test_split(index, test_size=share, random_state=seed, stratify=stratify)
    return np.sort(fit), np.sort(val)


def fit_linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    multilabel: bool = False,
    cs: Sequence[float] = DEFAULT_CS,
    val_share: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
) -> LinearProbe:
    """Sweep C on validation, refit the best on all labelled rows.

    Args:
        x_train: [N, D]; y_train: int [N] class ids, or {0,1} [N, C] with multilabel.
        x_val, y_val: validation rows; None carves ``val_share`` of the train rows.
    """
    carved = x_val is None
    if x_val is None:
        fit_idx, val_idx = carve_validation(y_train, val_share, seed)
        x_fit, y_fit, x_val, y_val = x_train[fit_idx], y_train[fit_idx], x_train[val_idx], y_train[val_idx]
    else:
        if y_val is None:
            raise ValueError("fit_linear_probe: x_val was given without y_val")
        x_fit, y_fit = x_train, y_train
    scores: dict[float, float] = {}
    with warnings.catch_warnings():
        # a few lbfgs iterations short of convergence do not change the ranking of C; keep the output clean
        warnings.simplefilter("ignore", ConvergenceWarning)
        for C in cs:
            scores[float(C)] = _score(_make(C, multilabel, max_iter, seed).fit(x_fit, y_fit), x_val, y_val, multilabel)
        best = max(scores, key=lambda c: (scores[c], -c))
        x_all = x_train if carved else np.concatenate([x_train, x_val])
        y_all = y_train if carved else np.concatenate([y_train, y_val])
        model = _make(best, multilabel, max_iter, seed).fit(x_all, y_all)
    return LinearProbe(model=model, C=best, val_scores=scores, carved_validation=carved)
