"""Leakage probes: chance for noise, ≈1 for what is written into the pixels, parity with plain scikit-learn."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score, r2_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metadino.data.table import load_table
from metadino.embed import extract_features
from metadino.errors import UserError
from metadino.eval.leakage import LOGISTIC_C, LOGISTIC_MAX_ITER, RIDGE_ALPHAS, column_leakage, leakage_table
from metadino.export import load_model
from metadino.models.directory import write_export
from metadino.models.preprocessing import Preprocessing
from metadino.models.registry import build_backbone


def write_pixel_table(folder: Path, n: int = 120, size: int = 32, seed: int = 0) -> Path:
    """RGB PNGs whose bright channel is `stain` and whose overall level is `level`; `noise`/`jitter` are random."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    stain = rng.integers(0, 3, n)
    level = rng.random(n)
    rows = []
    for i in range(n):
        base = np.full((size, size, 3), 50.0)
        base[..., stain[i]] = 190.0
        pixels = base * (0.4 + 0.6 * level[i]) + rng.normal(0, 8, (size, size, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"imgs/{i}.png")
        rows.append({"path": f"imgs/{i}.png", "stain": f"s{stain[i]}", "level": round(float(level[i]), 4),
                     "noise": f"n{rng.integers(0, 3)}", "jitter": round(float(rng.normal()), 4)})
    table = folder / "meta.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def tiny_export(folder: Path, image_size: int = 32) -> Path:
    """A random 2-block builtin ViT written as an export directory."""
    torch.manual_seed(0)
    backbone = build_backbone("builtin:vit-tiny", patch_size=8, image_size=image_size, embed_dim=32, depth=2, num_heads=2)
    return write_export(backbone, folder, replace(Preprocessing.default_for(backbone), image_size=image_size))


@pytest.fixture(scope="module")
def pixel_features(tmp_path_factory) -> tuple[np.ndarray, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("pixels")
    table = load_table(write_pixel_table(folder), image_column="path")
    backbone, pre = load_model(str(tiny_export(folder / "model")))
    feats = extract_features(backbone, table, pre, batch_size=64, progress=False)
    return feats.numpy(), table.frame


def test_pixels_leak_noise_does_not(pixel_features):
    feats, frame = pixel_features
    res = leakage_table(feats, frame, ["stain", "noise", "level", "jitter"])
    assert res["stain"].metric == "balanced_accuracy" and res["stain"].chance == pytest.approx(1 / 3)
    assert res["stain"].value > 0.95
    assert abs(res["noise"].value - 1 / 3) < 0.15
    assert res["level"].metric == "r2" and res["level"].value > 0.9
    assert res["jitter"].value < 0.1 and res["jitter"].chance == 0.0
    assert res["stain"].n_rows == len(frame) and res["stain"].n_classes == 3


def _signal(n: int = 150, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, n)
    x = rng.normal(size=(n, d)) + 0.8 * rng.normal(size=(4, d))[cls]
    y = x[:, 0] + 0.5 * rng.normal(size=n)
    return x, cls, y


def test_equals_plain_sklearn_with_missing_values():
    x, cls, y = _signal()
    cat = pd.Series([f"c{c}" for c in cls], dtype=object)
    cat[::7] = None  # missing rows are left out
    cont = pd.Series(y)
    cont[::5] = np.nan
    got = column_leakage(x, cat, column="cat", folds=4, seed=3)
    keep = cat.notna().to_numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=LOGISTIC_C, max_iter=LOGISTIC_MAX_ITER))
    pred = cross_val_predict(probe, x[keep], cat[keep].to_numpy(), cv=StratifiedKFold(4, shuffle=True, random_state=3))
    assert got.n_rows == keep.sum() and got.kind == "categorical"
    assert got.value == pytest.approx(balanced_accuracy_score(cat[keep].to_numpy(), pred), abs=1e-12)

    got = column_leakage(x, cont, column="cont", folds=4, seed=3)
    keep = cont.notna().to_numpy()
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    pred = cross_val_predict(probe, x[keep], y[keep], cv=KFold(4, shuffle=True, random_state=3))
    assert got.n_rows == keep.sum() and got.kind == "continuous"
    assert got.value == pytest.approx(r2_score(y[keep], pred), abs=1e-9)


def test_deterministic_and_seed_dependent():
    x, cls, _ = _signal(seed=1)
    x = x + 2.0 * np.random.default_rng(9).normal(size=x.shape)  # harder, so fold assignment matters
    values = pd.Series(cls)
    a = column_leakage(x, values, column="c", seed=0)
    assert column_leakage(x, values, column="c", seed=0) == a
    assert column_leakage(x, values, column="c", seed=1).value != a.value


def test_rare_classes_are_dropped_and_named():
    x, cls, _ = _signal()
    values = pd.Series([f"c{c}" for c in cls], dtype=object)
    values[:2] = "rare"  # 2 rows < 5 folds
    res = column_leakage(x, values, column="cat")
    assert res.dropped_classes == ("rare",)
    assert res.n_rows == len(values) - 2 and res.n_classes == 4
    assert "rare" in res.note and "'cat'" in res.note


def test_multilabel_mean_balanced_accuracy():
    x, cls, _ = _signal()
    cells = pd.Series([{0: "a|b", 1: "b", 2: "a|c", 3: "c"}[c] for c in cls])
    res = column_leakage(x, cells, column="tags", kind="multilabel")
    assert res.metric == "mean_balanced_accuracy" and res.chance == 0.5 and res.n_classes == 3
    assert res.value > 0.9


def test_errors_name_the_column():
    x, cls, y = _signal(n=40)
    frame = pd.DataFrame({"c": cls, "const": ["x"] * 40, "few": [1.0] * 6 + [np.nan] * 34})
    with pytest.raises(UserError, match="'const'"):
        column_leakage(x, frame["const"], column="const")
    with pytest.raises(UserError, match="'few'.*only 6 rows"):
        column_leakage(x, pd.Series([0.1, 0.5, 0.3, 0.2, 0.9, 1.0] + [np.nan] * 34), column="few")
    lonely = pd.Series(["a"] * 37 + ["b"] * 3)
    with pytest.raises(UserError, match="'lonely'.*at least 5 rows"):
        column_leakage(x, lonely, column="lonely")
    with pytest.raises(UserError, match="available columns: c, const, few"):
        leakage_table(x, frame, ["c", "nope"])
