"""Camelyon17-WILDS (``camelyon17_v1.0``): ``metadata.csv`` (a saved pandas index, then ``patient, node, x_coord,
y_coord, tumor, slide, center, split``) + the 96 x 96 patches
``patches/patient_{patient}_node_{node}/patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png``.

``patient`` is read as text, as WILDS reads it (``004``, zero-padded to three digits if a tool dropped the zeros).
``split`` holds the official WILDS split names: hospital (``center``) 1 is the OOD validation set (``val``),
hospital 2 the test set (``test``); of the others, file split 0 is ``train`` and 1 ``id_val``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metadino.importers.common import Imported, check_no_missing, int_text, read_csv, source_folder

METADATA = "metadata.csv"
VAL_CENTER, TEST_CENTER = 1, 2  # as in the WILDS loader (0-indexed hospitals)
COLUMNS = ["patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read the dataset folder (or its ``metadata.csv``); patches under ``patches/`` there, or in `images`."""
    folder = source_folder(source, METADATA, "wilds-camelyon17")
    meta_path = folder / METADATA
    frame = read_csv(meta_path, COLUMNS, dtype={"patient": str})
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed:")])  # the saved index
    rows = list(range(1, len(frame) + 1))
    check_no_missing(frame, ["patient", "node", "x_coord", "y_coord", "center", "split"], METADATA, rows)
    root, prefix = (images, "") if images is not None else (folder, "patches/")
    patients = [p.strip().zfill(3) for p in frame["patient"].astype(str)]
    paths = [
        f"{prefix}patient_{p}_node_{n}/patch_patient_{p}_node_{n}_x_{x}_y_{y}.png"
        for p, n, x, y in zip(patients, map(int_text, frame["node"]), map(int_text, frame["x_coord"]),
                              map(int_text, frame["y_coord"]))
    ]
    out = pd.DataFrame({"path": paths, "split": _wilds_split(frame)})
    for column in frame.columns:
        if column != "split":
            out[column] = patients if column == "patient" else frame[column]
    return Imported(
        layout="wilds-camelyon17", frame=out, source_name=METADATA, source_rows=rows, root=root,
        data={"image_column": "path"}, files=[[p] for p in paths], labels=["tumor"], audit_image_column="path",
        split_column="split", sources=[meta_path],
    )


def _wilds_split(frame: pd.DataFrame) -> list[str]:
    names = []
    for center, split in zip(frame["center"].astype(int), frame["split"].astype(int)):
        if center == VAL_CENTER:
            names.append("val")
        elif center == TEST_CENTER:
            names.append("test")
        else:
            names.append("train" if split == 0 else "id_val")
    return names
