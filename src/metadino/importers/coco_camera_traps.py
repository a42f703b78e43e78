"""COCO Camera Traps JSON (LILA datasets, iWildCam competitions): ``images`` (``id, file_name, location, datetime,
seq_id, seq_num_frames, frame_num, width, height``...), ``annotations`` (``image_id, category_id``...) and
``categories`` (``id, name``).

One row per image: ``path`` (``file_name``, relative to ``--images`` or the JSON's folder), the image's own keys,
``category`` (the names of its annotations' categories, several joined by ``|``; empty when it has none) and
``category_id``, ``sequence`` (``seq_id``) and ``year``, ``month``, ``hour`` from ``datetime``. Camera clocks fail:
a datetime that does not parse leaves the parts empty, with a note, instead of stopping the import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from metadino.errors import UserError
from metadino.importers.common import Imported, add_time_parts, rows_text

IMAGE_KEYS = ("id", "file_name")


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read the JSON file; image files relative to `images` or the JSON's folder."""
    doc = _read_json(source)
    name = source.name
    categories = {c["id"]: str(c["name"]) for c in _records(doc, "categories", ("id", "name"), name)}
    entries = _records(doc, "images", IMAGE_KEYS, name)
    rows = list(range(1, len(entries) + 1))
    if not entries:
        raise UserError(f"{name} lists no images; pass the dataset's COCO Camera Traps JSON")
    per_image: dict[Any, list[Any]] = {}
    for i, a in enumerate(_records(doc, "annotations", ("image_id", "category_id"), name), start=1):
        if a["category_id"] not in categories:
            raise UserError(f"{name}: annotation {i} (image {a['image_id']!r}) names category_id {a['category_id']!r}, "
                            f"which 'categories' does not list")
        ids = per_image.setdefault(a["image_id"], [])
        if a["category_id"] not in ids:  # one image, several boxes of one species: one class
            ids.append(a["category_id"])
    frame = pd.DataFrame([{k: v for k, v in e.items() if not isinstance(v, (list, dict))} for e in entries])
    empty = [r for r, f in zip(rows, frame["file_name"]) if not isinstance(f, str) or not f.strip()]
    if empty:
        raise UserError(f"{name}: images {rows_text(empty)} have no file_name; fix those entries")
    out = pd.DataFrame({"path": frame["file_name"].astype(str).str.strip(), "image_id": frame["id"]})
    out["category"] = ["|".join(categories[c] for c in per_image.get(i, [])) or None for i in frame["id"]]
    out["category_id"] = ["|".join(str(c) for c in per_image.get(i, [])) or None for i in frame["id"]]
    for column in frame.columns:
        if column not in ("id", "file_name") and column not in out.columns:
            out[column] = frame[column]
    if "seq_id" in frame.columns:
        out["sequence"] = frame["seq_id"]
    notes: list[str] = []
    if "datetime" in frame.columns:
        add_time_parts(out, "datetime", name=f"{name} images", rows=rows, strict=False, notes=notes)
    unlabelled = int(out["category"].isna().sum())
    if unlabelled:
        notes.append(f"{unlabelled} images have no annotation: their category is empty (unknown)")
    return Imported(
        layout="coco-camera-traps", frame=out, source_name=f"{name} images", source_rows=rows,
        root=images if images is not None else source.parent, data={"image_column": "path"},
        files=[[p] for p in out["path"]], labels=["category"], audit_image_column="path", sources=[source],
        notes=notes,
    )


def _read_json(source: Path) -> dict[str, Any]:
    if not source.is_file():
        raise UserError(f"coco-camera-traps source {source} does not exist; pass the dataset's .json file")
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {source.name}: {err}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{source.name} is not valid JSON (line {err.lineno}): {err.msg}; download it again") from None
    if not isinstance(doc, dict):
        raise UserError(f"{source.name} holds a JSON {type(doc).__name__}, not the COCO Camera Traps object with "
                        f"'images', 'annotations' and 'categories'")
    return doc


def _records(doc: dict[str, Any], key: str, required: tuple[str, ...], name: str) -> list[dict[str, Any]]:
    """``doc[key]``, a list of objects that each hold the `required` keys (the first offender is named)."""
    records = doc.get(key)
    if not isinstance(records, list):
        raise UserError(f"{name} has no '{key}' list; it is not a COCO Camera Traps file (keys: "
                        f"{', '.join(repr(k) for k in doc)})")
    for i, r in enumerate(records, start=1):
        if not isinstance(r, dict) or any(k not in r for k in required):
            raise UserError(f"{name}: entry {i} of '{key}' lacks {', '.join(repr(k) for k in required)}: "
                            f"{json.dumps(r)[:120]}")
    return records
