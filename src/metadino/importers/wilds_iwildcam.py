"""iWildCam-WILDS (``iwildcam_v2.0``): ``metadata.csv`` (one row per image: ``split``, ``location_remapped``,
``sequence_remapped``, ``datetime``, ``y``, ``filename``...) + ``categories.csv`` (``y`` -> species ``name``) + the
images in ``train/`` (WILDS keeps every split's images there).

The table keeps the file's columns and adds what the WILDS loader derives: ``location`` (the remapped camera
location, WILDS' group) when the file has no ``location`` column, ``sequence`` (the remapped sequence), ``year``,
``month``, ``hour`` from ``datetime``, and ``species`` from ``categories.csv`` when it is there.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metadino.importers.common import Imported, add_time_parts, check_no_missing, read_csv, source_folder

METADATA = "metadata.csv"
CATEGORIES = "categories.csv"


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read the dataset folder (or its ``metadata.csv``); images under ``train/`` there, or in `images`."""
    folder = source_folder(source, METADATA, "wilds-iwildcam")
    meta_path = folder / METADATA
    frame = read_csv(meta_path, ["split", "filename", "y", "location_remapped", "datetime"])
    frame = frame.drop(columns=[c for c in frame.columns if c.startswith("Unnamed:")])  # a saved pandas index
    rows = list(range(1, len(frame) + 1))
    check_no_missing(frame, ["filename"], METADATA, rows)
    root, prefix = (images, "") if images is not None else (folder, "train/")
    notes: list[str] = []
    out = pd.DataFrame({"path": [f"{prefix}{f}" for f in frame["filename"].astype(str)]})
    for column in frame.columns:
        out[column] = frame[column]
    if "location" not in out.columns:
        out["location"] = frame["location_remapped"]
    if "sequence_remapped" in frame.columns:
        out["sequence"] = frame["sequence_remapped"]
    add_time_parts(out, "datetime", name=METADATA, rows=rows, strict=True, notes=notes)
    sources = [meta_path]
    labels = ["y"]
    if (folder / CATEGORIES).is_file():
        categories = read_csv(folder / CATEGORIES, ["y", "name"])
        names = dict(zip(categories["y"].astype(int), categories["name"].astype(str)))
        out["species"] = [names.get(int(y)) if pd.notna(y) else None for y in frame["y"]]
        sources.append(folder / CATEGORIES)
        labels.append("species")
    return Imported(
        layout="wilds-iwildcam", frame=out, source_name=METADATA, source_rows=rows, root=root,
        data={"image_column": "path"}, files=[[p] for p in out["path"]], labels=labels, audit_image_column="path",
        split_column="split", sources=sources, notes=notes,
    )
