import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metadino.eval.linear import carve_validation, fit_linear_probe


def _data(seed=0, n=240, d=16):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, d)) + 1.5 * np.eye(3, d)[y]
    return x, y


def test_linear_probe_equals_sklearn_with_the_chosen_C():
    x, y = _data()
    xv, yv = _data(1, 90)
    probe = fit_linear_probe(x, y, xv, yv, cs=(1e-3, 1e-1, 10.0))
    for C, score in probe.val_scores.items():  # each sweep score is a plain fit on train scored on val
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000, random_state=0)).fit(x, y)
        assert score == pytest.approx(balanced_accuracy_score(yv, ref.predict(xv)))
    assert probe.C == max(probe.val_scores, key=lambda c: (probe.val_scores[c], -c))
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=probe.C, max_iter=1000, random_state=0))
    ref.fit(np.concatenate([x, xv]), np.concatenate([y, yv]))
    xt, _ = _data(2, 50)
    np.testing.assert_allclose(probe.predict_proba(xt), ref.predict_proba(xt), atol=1e-8)


def test_validation_is_carved_stratified_from_train_when_none_is_given():
    x, y = _data(n=100)
    fit, val = carve_validation(y, 0.2, seed=0)
    assert len(val) == 20 and not set(fit) & set(val) and len(fit) + len(val) == 100
    assert set(y[val]) == {0, 1, 2}
    probe = fit_linear_probe(x, y, seed=0)
    assert probe.carved_validation and probe.val_scores[probe.C] > 0.6


def test_classes_missing_from_training_get_zero_probability_columns():
    x, y = _data()
    probe = fit_linear_probe(x, y, cs=(1.0,))
    probs = probe.predict_proba(x[:5], n_classes=5)
    assert probs.shape == (5, 5) and np.all(probs[:, 3:] == 0)
    np.testing.assert_allclose(probs.sum(1), 1.0)
