"""Cell Painting / JUMP ``load_data.csv`` (the CellProfiler LoadData input of the Cell Painting Gallery): per site,
``FileName_Orig{channel}`` and ``PathName_Orig{channel}`` for each channel (``DNA, ER, RNA, AGP, Mito``; JUMP also
has brightfield planes), plus ``Metadata_Plate, Metadata_Well, Metadata_Site`` (and often ``Metadata_Source``,
``Metadata_Batch``...).

The table is the file as written (one file per channel, nothing copied): the snippet reads the channels with
``data.image_template: "{PathName_Orig{channel}}/{FileName_Orig{channel}}"`` and ``data.channels`` — the five
Cell Painting stains present, in the usual order. Relative ``PathName`` folders start from ``--images`` or the CSV's
folder. Derived: ``well_row`` and ``well_column`` from ``Metadata_Well`` (``B07`` -> ``B``, ``7``), the plate-edge
position that acquisition effects follow.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from metadino.errors import UserError
from metadino.importers.common import Imported, check_columns, check_no_missing, read_csv

STAINS = ["DNA", "ER", "RNA", "AGP", "Mito"]
TEMPLATE = "{PathName_Orig{channel}}/{FileName_Orig{channel}}"
REQUIRED = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
_WELL = re.compile(r"^([A-Za-z]+)0*(\d+)$")


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read ``load_data.csv`` (or a folder holding it)."""
    if source.is_dir():
        source = source / "load_data.csv"
    if not source.is_file():
        raise UserError(f"cell-painting source {source} does not exist; pass the load_data.csv file")
    frame = read_csv(source, REQUIRED, dtype=str)
    check_columns(frame, [f"{kind}_Orig{STAINS[0]}" for kind in ("FileName", "PathName")], source.name)
    channels = [c for c in STAINS if f"FileName_Orig{c}" in frame.columns and f"PathName_Orig{c}" in frame.columns]
    half = [c for c in STAINS if c not in channels and f"FileName_Orig{c}" in frame.columns]
    if half:
        raise UserError(f"{source.name} has FileName_Orig{half[0]} but no PathName_Orig{half[0]}; each channel "
                        f"needs both columns")
    rows = list(range(1, len(frame) + 1))
    path_columns = [f"{kind}_Orig{c}" for c in channels for kind in ("PathName", "FileName")]
    check_no_missing(frame, path_columns, source.name, rows)
    out = frame.copy()
    for column in path_columns:
        out[column] = out[column].str.strip()
    parts = [_WELL.match(str(w).strip()) for w in frame["Metadata_Well"]]
    out["well_row"] = [m.group(1).upper() if m else None for m in parts]
    out["well_column"] = pd.array([int(m.group(2)) if m else None for m in parts], dtype="Int64")
    others = sorted({c[len("FileName_Orig"):] for c in frame.columns if c.startswith("FileName_Orig")} - set(channels))
    notes = [f"also in the file, not in data.channels: {', '.join(others)}"] if others else []
    files = [[f"{r[f'PathName_Orig{c}']}/{r[f'FileName_Orig{c}']}" for c in channels]
             for r in out[path_columns].to_dict("records")]
    return Imported(
        layout="cell-painting", frame=out, source_name=source.name, source_rows=rows,
        root=images if images is not None else source.parent,
        data={"image_template": TEMPLATE, "channels": channels}, files=files, labels=[],
        audit_image_column=f"FileName_Orig{channels[0]}", sources=[source], notes=notes,
    )
