"""Conditional leakage: ≈ 0 for a column the given column explains, high for one written into the features,
and equal to two plain scikit-learn computations on the same folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metadino.errors import UserError
from metadino.eval.conditional import conditional_leakage, conditional_leakage_table, spec_key
from metadino.eval.leakage import LOGISTIC_C, LOGISTIC_MAX_ITER, column_leakage


def entangled(n: int = 2400, seed: int = 0, plate_in_features: bool = False) -> tuple[np.ndarray, pd.DataFrame]:
    """8 plates, each with a main cell line (85 % of its wells); the features hold the cell line (and the plate)."""
    rng = np.random.default_rng(seed)
    n_lines, n_plates, d = 4, 8, 12
    plate = rng.integers(0, n_plates, n)
    main = plate % n_lines
    line = np.where(rng.random(n) < 0.85, main, (main + rng.integers(1, n_lines, n)) % n_lines)
    x = rng.normal(size=(n, d)) + 3.0 * rng.normal(size=(n_lines, d))[line]
    if plate_in_features:
        x = x + 3.0 * rng.normal(size=(n_plates, d))[plate]
    frame = pd.DataFrame({"plate": [f"P{p}" for p in plate], "cell_line": [f"L{c}" for c in line],
                          "noise": rng.normal(size=n)})
    return x, frame


def test_a_column_the_given_column_explains_has_no_conditional_leakage_though_plain_leakage_is_high():
    x, frame = entangled()
    plain = column_leakage(x, frame["plate"], column="plate")
    res = conditional_leakage(x, frame, "plate", ["cell_line"])
    assert plain.value > 0.35 and plain.chance == pytest.approx(1 / 8)  # entangled: plate leaks via the cell line
    assert res.given_only > 0.35  # the cell line alone explains that much
    assert abs(res.value) < 0.03
    assert res.value == pytest.approx(res.with_embedding - res.given_only)
    assert (res.metric, res.chance, res.n_rows, res.n_missing, res.n_classes) == ("balanced_accuracy", 1 / 8, 2400, 0, 8)
    assert res.key == "plate|cell_line" and res.note == ""


def test_a_column_written_into_the_features_has_high_conditional_leakage():
    x, frame = entangled(plate_in_features=True)
    res = conditional_leakage(x, frame, "plate", ["cell_line"])
    assert res.with_embedding > 0.9 and res.given_only < 0.5
    assert res.value > 0.3


def test_equals_two_plain_sklearn_computations_on_the_same_folds_and_counts_missing_rows():
    x, frame = entangled(n=300, seed=1, plate_in_features=True)
    x = x + 3.0 * np.random.default_rng(5).normal(size=x.shape)  # harder, so the numbers are not all 1
    frame.loc[::11, "plate"] = None
    frame.loc[::13, "cell_line"] = np.nan
    res = conditional_leakage(x, frame, "plate", ["cell_line"], folds=4, seed=3)
    keep = (frame["plate"].notna() & frame["cell_line"].notna()).to_numpy()
    onehot = pd.get_dummies(frame.loc[keep, "cell_line"]).to_numpy(dtype=float)
    y = frame.loc[keep, "plate"].to_numpy()
    cv = StratifiedKFold(4, shuffle=True, random_state=3)

    def score(design):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, max_iter=LOGISTIC_MAX_ITER))
        return balanced_accuracy_score(y, cross_val_predict(probe, design, y, cv=cv))

    assert res.n_missing == (~keep).sum() and res.n_rows == keep.sum()
    assert res.given_only == pytest.approx(score(onehot), abs=1e-12)
    assert res.with_embedding == pytest.approx(score(np.hstack([x[keep], onehot])), abs=1e-12)
    assert f"{(~keep).sum()} row(s) with a missing plate or cell_line" in res.note


def test_continuous_target_is_scored_by_r2():
    rng = np.random.default_rng(2)
    n = 400
    given = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 8))
    frame = pd.DataFrame({"g": [f"g{v}" for v in given], "in_features": 2.0 * given + x[:, 0],
                          "explained": 2.0 * given + 0.3 * rng.normal(size=n)})
    res = conditional_leakage(x, frame, "in_features", ["g"])
    assert res.metric == "r2" and res.chance == 0.0 and res.n_classes is None
    assert res.with_embedding > 0.95 and res.value > 0.1
    assert abs(conditional_leakage(x, frame, "explained", ["g"]).value) < 0.03


def test_two_given_columns_and_rare_classes():
    x, frame = entangled(n=600, seed=3)
    frame["site"] = np.where(np.arange(600) % 2, "s1", "s2")
    frame.loc[:2, "plate"] = "rare"  # 3 rows < 5 folds
    res = conditional_leakage(x, frame, "plate", ["cell_line", "site"])
    assert res.key == "plate|cell_line+site" and res.dropped_classes == ("rare",)
    assert res.n_rows == 597 and "rare (3)" in res.note


@pytest.mark.parametrize(
    "column, given, message",
    [
        ("plate", ["cell_line", "plate"], "'plate' given 'plate' itself"),
        ("plate", ["cel_line"], "unknown column.*'cel_line'"),
        ("plat", ["cell_line"], "unknown column.*'plat'"),
        ("plate", [], "at least one given column"),
        ("tags", ["cell_line"], "'tags' is multilabel"),
    ],
)
def test_bad_specs_name_the_column(column, given, message):
    x, frame = entangled(n=100)
    frame["tags"] = ["a|b", "b", "a|c", "c"] * 25
    with pytest.raises(UserError, match=message):
        conditional_leakage(x, frame, column, given)


def test_table_is_keyed_by_spec_and_checks_every_spec_before_probing():
    x, frame = entangled(n=300)
    out = conditional_leakage_table(x, frame, {"plate": ["cell_line"], "cell_line": ["plate"]})
    assert list(out) == ["plate|cell_line", "cell_line|plate"] == [spec_key("plate", ["cell_line"]), spec_key("cell_line", ["plate"])]
    with pytest.raises(UserError, match="'nope'"):
        conditional_leakage_table(np.full_like(x, np.nan), frame, {"plate": ["cell_line"], "noise": ["nope"]})
