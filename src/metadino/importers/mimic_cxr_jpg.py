"""MIMIC-CXR-JPG (PhysioNet ``mimic-cxr-jpg/2.0.0`` or ``2.1.0``): ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (one row
per image: ``dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime``...), ``mimic-cxr-2.0.0-chexpert.csv
(.gz)`` (per study, 14 CheXpert findings: 1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned),
``mimic-cxr-2.0.0-split.csv(.gz)`` (``dicom_id, study_id, subject_id, split``) and the images
``files/p{first two digits}/p{subject_id}/s{study_id}/{dicom_id}.jpg``.

One row per image with the metadata, the 14 finding columns as written, ``findings`` (the positive findings joined by
``|``; uncertain ones are not counted), ``split`` (``train``/``validate``/``test``), ``view`` (``ViewPosition``) and
``year``, ``month``, ``hour`` from ``StudyDate`` + ``StudyTime`` (MIMIC shifts every date by a per-patient offset:
years are not calendar years, only comparable within a patient).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metadino.errors import UserError
from metadino.importers.common import (
    Imported,
    add_time_parts,
    check_columns,
    check_no_missing,
    find_file,
    int_text,
    read_csv,
    rows_text,
    source_folder,
)

PREFIX = "mimic-cxr-2.0.0-"
FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion",
    "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
]
IDS = ["subject_id", "study_id"]


def _names(kind: str) -> list[str]:
    return [f"{PREFIX}{kind}.csv.gz", f"{PREFIX}{kind}.csv"]


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read the release folder (the one holding the CSVs and ``files/``); images under `images` if given."""
    folder = source_folder(source, f"{PREFIX}metadata.csv.gz", "mimic-cxr-jpg")
    meta_path = find_file(folder, _names("metadata"), "image metadata")
    labels_path = find_file(folder, _names("chexpert"), "CheXpert labels")
    split_path = find_file(folder, _names("split"), "split file")
    text = {"dicom_id": str, "subject_id": str, "study_id": str, "StudyDate": str, "StudyTime": str}
    meta = read_csv(meta_path, ["dicom_id", *IDS], dtype=text)
    chexpert = read_csv(labels_path, [*IDS], dtype={"subject_id": str, "study_id": str})
    check_columns(chexpert, FINDINGS, labels_path.name)
    split = read_csv(split_path, ["dicom_id", "split"], dtype={"dicom_id": str})
    rows = list(range(1, len(meta) + 1))
    check_no_missing(meta, ["dicom_id", *IDS], meta_path.name, rows)
    meta = meta.drop(columns=[c for c in meta.columns if c.startswith("Unnamed:")])
    for column in ["dicom_id", *IDS]:
        meta[column] = meta[column].map(int_text)
    _check_unique(chexpert, IDS, labels_path.name)
    _check_unique(split, ["dicom_id"], split_path.name)

    root, prefix = (images, "") if images is not None else (folder, "files/")
    out = pd.DataFrame({"path": [
        f"{prefix}p{s[:2]}/p{s}/s{t}/{d}.jpg" for d, s, t in zip(meta["dicom_id"], meta["subject_id"], meta["study_id"])
    ]})
    for column in meta.columns:
        out[column] = meta[column]
    chexpert = chexpert.assign(**{c: chexpert[c].map(int_text) for c in IDS})
    joined = out[IDS].merge(chexpert[[*IDS, *FINDINGS]], on=IDS, how="left")
    for finding in FINDINGS:
        out[finding] = joined[finding].to_numpy()
    out["findings"] = [
        "|".join(f for f in FINDINGS if r[f] == 1.0) or None for r in joined[FINDINGS].to_dict("records")
    ]
    out["split"] = out[["dicom_id"]].merge(split[["dicom_id", "split"]], on="dicom_id", how="left")["split"].to_numpy()
    if "ViewPosition" in meta.columns:
        out["view"] = meta["ViewPosition"]
    notes: list[str] = []
    if "StudyDate" in meta.columns:
        when = _study_datetimes(meta)
        add_time_parts(out, "StudyDate", name=meta_path.name, rows=rows, strict=True, notes=notes, parsed=when)
        notes.append("MIMIC dates are shifted per patient: 'year' is not a calendar year")
    unlabelled = int(joined[FINDINGS].isna().all(axis=1).sum())
    if unlabelled:
        notes.append(f"{unlabelled} images belong to studies without CheXpert labels: their findings are empty")
    return Imported(
        layout="mimic-cxr-jpg", frame=out, source_name=meta_path.name, source_rows=rows, root=root,
        data={"image_column": "path"}, files=[[p] for p in out["path"]], labels=["findings", *FINDINGS],
        audit_image_column="path", split_column="split", sources=[meta_path, labels_path, split_path], notes=notes,
    )


def _check_unique(frame: pd.DataFrame, keys: list[str], name: str) -> None:
    """A join key given twice would duplicate image rows."""
    twice = frame.duplicated(keys, keep="first").to_numpy()
    if twice.any():
        rows = [int(i) + 1 for i in twice.nonzero()[0]]
        raise UserError(f"{name} repeats {' + '.join(keys)} in {rows_text(rows)}; keep one row per key")


def _study_datetimes(meta: pd.DataFrame) -> pd.Series:
    """``StudyDate`` (YYYYMMDD) + ``StudyTime`` (HHMMSS.fff, leading zeros often dropped) as datetimes."""
    date = meta["StudyDate"].astype("string").str.strip()
    if "StudyTime" in meta.columns:
        time = meta["StudyTime"].astype("string").str.strip().str.split(".").str[0].str.zfill(6)
    else:
        time = pd.Series("000000", index=meta.index, dtype="string")
    return pd.to_datetime(date + time.fillna("000000"), format="%Y%m%d%H%M%S", errors="coerce", utc=True)
