"""FMoW-WILDS (``fmow_v1.1``): ``rgb_metadata.csv`` + ``country_code_mapping.csv`` + ``images/rgb_img_{idx}.png``.

As the WILDS loader reads it: ``idx`` is the row's position in ``rgb_metadata.csv`` (counting from 0, sequestered
rows included), ``region`` comes from ``country_code`` through the mapping's ``alpha-3`` -> ``region`` ("Other" when a
code is not listed), sequestered rows (``split == seq``) are left out, and the official split is by time
(``time_after_2016``): images from 2016 on are the OOD test set, 2013-2015 the OOD validation set, earlier ones the
training and in-distribution sets. ``split`` holds those WILDS split names (``train``, ``id_val``, ``id_test``,
``val`` = OOD validation, ``test`` = OOD test; a fMoW training image from 2013 on is in none: ``unused``); the fMoW
release's own split stays in ``fmow_split``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from metadino.importers.common import Imported, add_time_parts, check_no_missing, read_csv, source_folder

METADATA = "rgb_metadata.csv"
COUNTRY_MAPPING = "country_code_mapping.csv"
TEST_FROM_YEAR = 2016  # WILDS' official split_scheme time_after_2016
VAL_FROM_YEAR = TEST_FROM_YEAR - 3  # "use 3 years of the training set as validation"


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read the dataset folder (or its ``rgb_metadata.csv``); images under ``images/`` there, or in `images`."""
    folder = source_folder(source, METADATA, "wilds-fmow")
    meta_path, mapping_path = folder / METADATA, folder / COUNTRY_MAPPING
    frame = read_csv(meta_path, ["split", "category", "country_code", "timestamp"])
    mapping = read_csv(mapping_path, ["alpha-3", "region"])
    idx = np.arange(len(frame))
    keep = (frame["split"].astype("string") != "seq").to_numpy()
    frame, idx = frame.loc[keep].reset_index(drop=True), idx[keep]
    rows = [int(i) + 1 for i in idx]
    notes = [f"{int((~keep).sum())} sequestered rows (split 'seq') left out, as WILDS does"] if (~keep).any() else []
    check_no_missing(frame, ["timestamp"], METADATA, rows)

    root, prefix = (images, "") if images is not None else (folder, "images/")
    region = dict(zip(mapping["alpha-3"].astype(str), mapping["region"].astype(str)))
    time = frame[["timestamp"]].copy()
    add_time_parts(time, "timestamp", name=METADATA, rows=rows, strict=True, notes=notes)
    out = pd.DataFrame({"path": [f"{prefix}rgb_img_{i}.png" for i in idx]})
    out["split"] = _wilds_split(frame["split"].astype(str).tolist(), time["year"].tolist())
    out["category"] = frame["category"]
    out["region"] = [region.get(str(c), "Other") for c in frame["country_code"]]
    for part in ("year", "month", "hour"):
        out[part] = time[part]
    out["fmow_split"] = frame["split"]
    for column in frame.columns:  # the release's other columns, as written
        if column not in out.columns and column != "split":
            out[column] = frame[column]
    return Imported(
        layout="wilds-fmow", frame=out, source_name=METADATA, source_rows=rows, root=root,
        data={"image_column": "path"}, files=[[p] for p in out["path"]], labels=["category"],
        audit_image_column="path", split_column="split", sources=[meta_path, mapping_path], notes=notes,
    )


def _wilds_split(fmow_splits: list[str], years: list[int]) -> list[str]:
    """The official WILDS split of each row from its fMoW split and year (module docstring)."""
    names: list[str] = []
    for fmow, y in zip(fmow_splits, years):
        period = "test" if y >= TEST_FROM_YEAR else "val" if y >= VAL_FROM_YEAR else "id"
        if period == "id":
            names.append({"train": "train", "val": "id_val", "test": "id_test"}.get(fmow, fmow))
        elif fmow == "test" and period == "test" or fmow == "val" and period == "val":
            names.append(period)
        else:
            names.append("unused")
    return names
