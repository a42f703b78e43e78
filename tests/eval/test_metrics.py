import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from metadino.eval.metrics import classification_metrics, multilabel_metrics


def test_classification_metrics_match_sklearn_and_worst_group_is_the_min_over_groups():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    probs = rng.random((200, 4))
    probs[np.arange(200), y] += rng.random(200)  # better than chance, not perfect
    probs /= probs.sum(1, keepdims=True)
    groups = rng.integers(0, 3, 200)
    m = classification_metrics(y, probs, groups=groups, group_names=["p1", "p2", "p3"])
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    per = {f"p{g + 1}": (pred[groups == g] == y[groups == g]).mean() for g in range(3)}
    assert m["per_group_accuracy"] == pytest.approx(per)
    assert m["worst_group_accuracy"] == pytest.approx(min(per.values()))


def test_classes_absent_from_the_test_rows_do_not_break_auroc_or_f1():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    m = classification_metrics(y, probs)
    assert m["accuracy"] == 0.5
    assert m["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), labels=[0, 1], average="macro"))
    assert m["auroc"] is not None and 0 <= m["auroc"] <= 1
    assert classification_metrics(np.array([1, 1]), probs[:2])["auroc"] is None


def test_multilabel_metrics_threshold_half():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probs = np.array([[0.9, 0.2], [0.6, 0.4], [0.3, 0.8], [0.1, 0.7]])
    m = multilabel_metrics(y, probs)
    pred = (probs >= 0.5).astype(int)
    assert m["multilabel_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["accuracy"] == pytest.approx(0.5)
