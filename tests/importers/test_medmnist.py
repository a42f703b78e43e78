"""MedMNIST .npz: one stacked .npy per split, a table of (path, index, split, label)."""

from __future__ import annotations

import numpy as np
import pytest

from metadino.errors import UserError

from .conftest import check_snippet


def write_npz(path, *, rgb=False, multilabel=False):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if multilabel:
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 14), dtype=np.uint8)
        else:
            arrays[f"{split}_labels"] = np.arange(n, dtype=np.uint8).reshape(n, 1) + 1
    np.savez_compressed(path, **arrays)
    return arrays


def test_stacked_arrays_and_table(tmp_path, do_import):
    arrays = write_npz(tmp_path / "pathmnist.npz", rgb=True)
    result = do_import("medmnist", tmp_path / "pathmnist.npz")
    t = result.table
    assert list(t.columns) == ["path", "index", "split", "label"]
    assert t["path"].tolist() == ["pathmnist_train.npy"] * 3 + ["pathmnist_val.npy"] * 2 + ["pathmnist_test.npy"] * 2
    assert t["index"].tolist() == ["0", "1", "2", "0", "1", "0", "1"]
    assert t["split"].tolist() == ["train"] * 3 + ["val"] * 2 + ["test"] * 2
    assert t["label"].tolist() == ["1", "2", "3", "1", "2", "1", "2"]
    out = tmp_path / "out"
    for split in ("train", "val", "test"):
        saved = np.load(out / f"pathmnist_{split}.npy", mmap_mode="r")  # memory-mappable, bit-identical
        assert saved.shape == arrays[f"{split}_images"].shape
        np.testing.assert_array_equal(saved, arrays[f"{split}_images"])
    data = check_snippet(result.snippet_path, ["table", "root", "image_column", "index_column", "rows"])
    assert result.snippet["index_column"] == "index" and data.root == str(out)


def test_multilabel_labels_joined_with_bar(tmp_path, do_import):
    arrays = write_npz(tmp_path / "chestmnist.npz", multilabel=True)
    t = do_import("medmnist", tmp_path / "chestmnist.npz").table
    expected = ["|".join(str(k) for k in np.flatnonzero(row)) for row in arrays["train_labels"]]
    assert t["label"].tolist()[:3] == expected and all("|" in v for v in expected)


def test_images_folder_and_no_overwrite_of_arrays(tmp_path, do_import):
    write_npz(tmp_path / "bloodmnist.npz")
    arrays_dir = tmp_path / "arrays"
    result = do_import("medmnist", tmp_path / "bloodmnist.npz", images=arrays_dir)
    assert (arrays_dir / "bloodmnist_val.npy").is_file() and result.snippet["root"] == str(arrays_dir)
    (tmp_path / "out" / "meta.csv").unlink()
    (tmp_path / "out" / "meta.data.yaml").unlink()
    with pytest.raises(UserError, match="bloodmnist_train.npy' already exists"):
        do_import("medmnist", tmp_path / "bloodmnist.npz", images=arrays_dir)


def test_wrong_arrays_are_named(tmp_path, do_import):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UserError, match=r"x.npz has no array 'train_labels'"):
        do_import("medmnist", tmp_path / "x.npz")
    arrays = {f"{s}_{k}": np.zeros((2, 4, 4) if k == "images" else (3, 1), np.uint8)
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "y.npz", **arrays)
    with pytest.raises(UserError, match=r"y.npz: train_labels has shape \(3, 1\) for 2 images"):
        do_import("medmnist", tmp_path / "y.npz")
    (tmp_path / "z.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="cannot read z.npz"):
        do_import("medmnist", tmp_path / "z.npz")
