"""Classification metrics of a probe, with the names `metrics.json` uses.

Single-label: accuracy, balanced_accuracy, macro_f1, auroc (one-vs-rest, macro over the classes present
in the test rows), and with groups per_group_accuracy + worst_group_accuracy (min over groups with at
least one row, as the reference's WorstGroupAccuracy). Multi-label: multilabel_f1 (macro F1 at 0.5),
micro_f1, auroc (macro over labels with both outcomes present) and subset accuracy as accuracy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score


def _auroc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    # macro one-vs-rest over the classes that occur in the test rows (absent ones have no positives)
    scores = [roc_auc_score(y_true == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    group_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of argmax predictions.

    Args:
        y_true: int [N] class ids; probs: [N, C] class scores (probabilities for AUROC);
        groups: int [N] group ids (optional); group_names: name of each group id.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns when a class has no test row; the metric stays defined
        out: dict[str, Any] = {
            "accuracy": float(accuracy_score(y_true, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
            "macro_f1": float(f1_score(y_true, pred, average="macro", labels=np.unique(y_true), zero_division=0)),
            "auroc": _auroc(y_true, probs),
        }
    if groups is not None:
        groups = np.asarray(groups)
        per_group = {}
        for g in np.unique(groups):
            name = group_names[g] if group_names is not None else str(g)
            hit = groups == g
            per_group[str(name)] = float((pred[hit] == y_true[hit]).mean())
        out["per_group_accuracy"] = per_group
        out["worst_group_accuracy"] = min(per_group.values()) if per_group else None
    return out


def multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, *, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of thresholded multi-label predictions.

    Args:
        y_true: {0,1} [N, C]; probs: [N, C] per-label probabilities.
    """
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = (probs >= threshold).astype(int)
    aurocs = [roc_auc_score(y_true[:, c], probs[:, c]) for c in range(y_true.shape[1]) if len(np.unique(y_true[:, c])) == 2]
    return {
        "accuracy": float((pred == y_true).all(axis=1).mean()),
        "multilabel_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(y_true, pred, average="micro", zero_division=0)),
        "auroc": float(np.mean(aurocs)) if aurocs else None,
    }
