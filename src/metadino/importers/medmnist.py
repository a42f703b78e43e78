"""MedMNIST (``pathmnist.npz``, ``chestmnist_224.npz``...): one ``.npz`` with ``train_images``, ``train_labels``,
``val_images``, ``val_labels``, ``test_images``, ``test_labels``; images uint8 ``[N, H, W]`` or ``[N, H, W, 3]``,
labels ``[N, 1]`` (one class) or ``[N, K]`` (multi-label 0/1, ChestMNIST).

Per-image files would be hundreds of thousands of tiny PNGs; instead each split's images are saved as one stacked
``.npy`` (``{stem}_{split}.npy``, in ``--images`` or beside the table) that metadino memory-maps, and each table row
names its array (``path``) and its position in it (``index``, ``data.index_column``). ``label`` is the class index;
a multi-label row lists its positive classes joined by ``|`` and is empty when none is positive.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from metadino.errors import UserError
from metadino.importers.common import Imported

SPLITS = ("train", "val", "test")


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read the ``.npz``; the stacked arrays go to `images` (created) or the table's folder."""
    arrays = _read_npz(source)
    root = images if images is not None else out_dir
    frames: list[pd.DataFrame] = []
    outputs: dict[Path, np.ndarray] = {}
    notes: list[str] = []
    for split in SPLITS:
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_shapes(source.name, split, x, y)
        name = f"{source.stem}_{split}.npy"
        outputs[root / name] = x
        frames.append(pd.DataFrame({"path": name, "index": np.arange(len(x)), "split": split,
                                    "label": _labels(y)}))
    frame = pd.concat(frames, ignore_index=True)
    if arrays["train_labels"].ndim == 2 and arrays["train_labels"].shape[1] > 1:
        empty = int(frame["label"].eq("").sum())
        if empty:
            notes.append(f"{empty} rows have no positive label: their 'label' cell is empty (read as unknown)")
    return Imported(
        layout="medmnist", frame=frame, source_name=source.name, source_rows=list(range(1, len(frame) + 1)),
        root=root, data={"image_column": "path", "index_column": "index"}, files=[], labels=["label"],
        audit_image_column="path", split_column="split", sources=[source], arrays=outputs, notes=notes,
    )


def _read_npz(source: Path) -> dict[str, np.ndarray]:
    if not source.is_file():
        raise UserError(f"medmnist source {source} does not exist; pass the downloaded .npz file")
    keys = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    try:
        with np.load(source, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserError(f"{source.name} has no array {', '.join(repr(k) for k in missing)} (it holds "
                                f"{', '.join(npz.files)}); pass a MedMNIST .npz")
            return {k: np.asarray(npz[k]) for k in keys}
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"cannot read {source.name} as a .npz file: {err}; download it again") from None


def _check_shapes(name: str, split: str, x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
        raise UserError(f"{name}: {split}_images has shape {x.shape}; MedMNIST images are [N, H, W] or [N, H, W, 3]")
    if y.ndim not in (1, 2) or len(y) != len(x):
        raise UserError(f"{name}: {split}_labels has shape {y.shape} for {len(x)} images in {split}_images; "
                        f"expected [{len(x)}, 1] or [{len(x)}, K]")


def _labels(y: np.ndarray) -> list[str]:
    """One class index per row, or the positive classes of a multi-label row joined by ``|``."""
    if y.ndim == 1 or y.shape[1] == 1:
        return [str(int(v)) for v in y.reshape(-1)]
    return ["|".join(str(int(k)) for k in np.flatnonzero(row)) for row in y]
