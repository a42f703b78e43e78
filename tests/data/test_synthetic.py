from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metadino.data.images import load_image
from metadino.data.synthetic import COLUMNS, LABELS, channel_names, generate_dataset
from metadino.data.table import load_table
from metadino.errors import UserError

N = 300  # also the speed check: generating this many must stay quick (no timing assertion)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn") / "data", n_images=N, seed=0)


@pytest.fixture(scope="module")
def frame(dataset) -> pd.DataFrame:
    return pd.read_csv(dataset, keep_default_na=False, na_values=[""])


def test_deterministic(dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", n_images=N, seed=0)
    assert again.read_bytes() == dataset.read_bytes()
    df = pd.read_csv(dataset)
    for rel in df["path"]:
        assert (again.parent / rel).read_bytes() == (dataset.parent / rel).read_bytes(), rel
    assert (again.parent / "generator.json").read_bytes() == (dataset.parent / "generator.json").read_bytes()
    other = generate_dataset(tmp_path / "other", n_images=40, seed=1)
    assert other.read_bytes() != generate_dataset(tmp_path / "same", n_images=40, seed=0).read_bytes()


def test_columns_and_splits(frame):
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == N and frame["path"].is_unique
    assert set(frame["split"]) == {"train", "val", "test"}
    assert set(frame["label"]) <= set(LABELS) and frame["label"].nunique() == len(LABELS)
    assert all(p.startswith("images/") and p.endswith(".tif") for p in frame["path"])
    assert frame["exposure"].gt(0).all() and frame["focus"].notna().all()
    # Val is split by well: no well is in both train and val.
    key = frame["plate"] + "/" + frame["well"]
    assert not set(key[frame.split == "train"]) & set(key[frame.split == "val"])


def test_heldout_plates_disjoint(frame):
    test_plates = set(frame.loc[frame.split == "test", "plate"])
    train_plates = set(frame.loc[frame.split.isin(["train", "val"]), "plate"])
    assert len(test_plates) == 3 and len(train_plates) == 9
    assert not test_plates & train_plates


def test_antibody_determines_label(frame):
    with_ab = frame[frame["antibody"].notna()]
    assert with_ab.groupby("antibody")["label"].nunique().eq(1).all()
    assert with_ab["antibody"].nunique() > 20


def test_plates_are_dominated_by_one_cell_line(frame):
    share = frame.groupby("plate")["cell_line"].agg(lambda s: s.value_counts(normalize=True).iloc[0])
    assert (share >= 0.7).all(), share
    assert frame["cell_line"].nunique() == 4


def test_missing_antibody_fraction(frame, tmp_path):
    assert abs(frame["antibody"].isna().mean() - 0.05) <= 0.02
    df = pd.read_csv(generate_dataset(tmp_path / "m", n_images=100, missing_antibody_fraction=0.3, image_size=16))
    assert abs(df["antibody"].isna().mean() - 0.3) <= 0.05


def test_loads_with_table_and_images(dataset, frame):
    table = load_table(dataset, image_column="path", required_columns=list(COLUMNS))
    assert len(table) == N
    for path in table.paths:
        img = load_image(path)
        assert img.shape == (4, 64, 64)
        assert 0.0 <= img.min().item() and img.max().item() <= 1.0
    marker = json.loads((dataset.parent / "generator.json").read_text())
    assert marker["channel_names"] == list(channel_names(4))
    ab_map = {ab["name"]: ab["label"] for ab in marker["antibodies"]}
    rows = frame[frame.antibody.notna()]
    assert all(ab_map[a] == lab for a, lab in zip(rows.antibody, rows.label))


def test_three_channel_png(tmp_path):
    table = load_table(generate_dataset(tmp_path / "rgb", n_images=24, channels=3, image_size=32), image_column="path")
    assert all(p.suffix == ".png" for p in table.paths)
    assert load_image(table.paths[0]).shape == (3, 32, 32)


def _nuclear_ratio(img: np.ndarray) -> float:
    """Mean protein intensity inside / outside the nucleus (nucleus channel above half its dynamic range)."""
    nucleus, protein = img[0], img[-1]
    lo, hi = np.percentile(nucleus, 5), np.percentile(nucleus, 99)
    mask = nucleus > lo + 0.5 * (hi - lo)
    return float(protein[mask].mean() / (protein[~mask].mean() + 1e-6))


def test_label_signal_in_protein_channel(dataset, frame):
    ratios = {
        label: [_nuclear_ratio(load_image(dataset.parent / p).numpy()) for p in frame.loc[frame.label == label, "path"]]
        for label in ("nucleoplasm", "plasma_membrane")
    }
    nuc, mem = np.array(ratios["nucleoplasm"]), np.array(ratios["plasma_membrane"])
    assert len(nuc) >= 5 and len(mem) >= 5
    assert np.median(nuc) > 2 * np.median(mem)
    auc = (nuc[:, None] > mem[None, :]).mean()
    assert auc > 0.9, auc


def test_refuses_to_touch_foreign_files(tmp_path, dataset):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        generate_dataset(tmp_path / "mine", n_images=4, image_size=16)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    out = tmp_path / "twice"
    generate_dataset(out, n_images=4, image_size=16)
    with pytest.raises(UserError, match="already holds a synthetic dataset"):
        generate_dataset(out, n_images=4, image_size=16)
    table = generate_dataset(out, n_images=6, image_size=16, overwrite=True)
    assert len(pd.read_csv(table)) == 6


@pytest.mark.parametrize(
    "kwargs", [dict(channels=2), dict(n_heldout_plates=12), dict(image_size=8), dict(missing_antibody_fraction=1.0)]
)
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(UserError, match="invalid synthetic dataset settings"):
        generate_dataset(tmp_path / "x", n_images=4, **kwargs)


def test_nucleus_boxes_change_nothing_else(tmp_path):
    import pandas as pd

    plain = pd.read_csv(generate_dataset(tmp_path / "a", n_images=24, image_size=32, seed=3))
    boxed = pd.read_csv(generate_dataset(tmp_path / "b", n_images=24, image_size=32, seed=3, boxes=True))
    assert list(boxed.columns) == [*plain.columns, "x0", "y0", "x1", "y1"]
    pd.testing.assert_frame_equal(boxed[plain.columns], plain)
    for path in plain["path"]:  # the images are byte-identical
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    assert ((boxed.x0 < boxed.x1) & (boxed.y0 < boxed.y1) & (boxed.x1 <= 32) & (boxed.y1 <= 32)).all()
    # the box holds the bright nucleus channel: more signal inside than outside
    import tifffile

    img = tifffile.imread(tmp_path / "b" / boxed.path[0]).astype(float)
    nucleus = img[0] if img.shape[0] == 4 else img[..., 0]
    r = boxed.iloc[0]
    inside = nucleus[r.y0:r.y1, r.x0:r.x1].mean()
    assert inside > nucleus.mean()
