"""RxRx1-WILDS (``rxrx1_v1.0``): ``metadata.csv`` (``site_id, well_id, cell_type, dataset, experiment, plate, well,
site, well_type, sirna, sirna_id``) + the 3-channel composites ``images/{experiment}/Plate{plate}/{well}_s{site}.png``.

The split is the file's ``dataset`` column (``train``/``val``/``test``), written as ``split`` (the name the snippet's
``rows`` and the audit recognise) in its place; the label is ``sirna_id``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metadino.importers.common import Imported, check_no_missing, int_text, read_csv, source_folder

METADATA = "metadata.csv"
PATH_COLUMNS = ["experiment", "plate", "well", "site"]


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read the dataset folder (or its ``metadata.csv``); images under ``images/`` there, or in `images`."""
    folder = source_folder(source, METADATA, "wilds-rxrx1")
    meta_path = folder / METADATA
    frame = read_csv(meta_path, [*PATH_COLUMNS, "dataset", "sirna_id", "cell_type"])
    rows = list(range(1, len(frame) + 1))
    check_no_missing(frame, PATH_COLUMNS, METADATA, rows)
    root, prefix = (images, "") if images is not None else (folder, "images/")
    paths = [
        f"{prefix}{e}/Plate{int_text(p)}/{w}_s{int_text(s)}.png"
        for e, p, w, s in zip(frame["experiment"].astype(str), frame["plate"], frame["well"].astype(str),
                              frame["site"])
    ]
    out = pd.DataFrame({"path": paths})
    for column in frame.columns:
        out["split" if column == "dataset" else column] = frame[column]
    return Imported(
        layout="wilds-rxrx1", frame=out, source_name=METADATA, source_rows=rows, root=root,
        data={"image_column": "path"}, files=[[p] for p in paths], labels=["sirna_id"], audit_image_column="path",
        split_column="split", sources=[meta_path],
    )
