"""Human Protein Atlas image classification (Kaggle 2018): ``train.csv`` (``Id,Target``, Target the space-separated
class ids of the protein's locations) + four 8-bit PNGs per image, ``train/{Id}_{red|green|blue|yellow}.png``.

One file per channel: the snippet names them with ``data.image_template: "{Id}_{channel}.png"`` and ``data.channels``
(microtubules red, protein green, nucleus blue, endoplasmic reticulum yellow), root the image folder. ``Target`` is
rewritten with ``|`` (metadino's multi-label separator) and ``localisation`` holds the class names.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from metadino.errors import UserError
from metadino.importers.common import Imported, check_no_missing, read_csv, rows_text

TABLE = "train.csv"
CHANNELS = ["red", "green", "blue", "yellow"]
TEMPLATE = "{Id}_{channel}.png"
CLASSES = [  # the competition's label ids 0..27
    "Nucleoplasm", "Nuclear membrane", "Nucleoli", "Nucleoli fibrillar center", "Nuclear speckles", "Nuclear bodies",
    "Endoplasmic reticulum", "Golgi apparatus", "Peroxisomes", "Endosomes", "Lysosomes", "Intermediate filaments",
    "Actin filaments", "Focal adhesion sites", "Microtubules", "Microtubule ends", "Cytokinetic bridge",
    "Mitotic spindle", "Microtubule organizing center", "Centrosome", "Lipid droplets", "Plasma membrane",
    "Cell junctions", "Mitochondria", "Aggresome", "Cytosol", "Cytoplasmic bodies", "Rods & rings",
]


def convert(source: Path, images: Path | None, out_dir: Path) -> Imported:
    """Read the competition folder (or its ``train.csv``); images in ``train/`` beside it, or in `images`."""
    if source.is_dir():
        source = source / TABLE
    if not source.is_file():
        raise UserError(f"hpa source {source} does not exist; pass the competition folder holding {TABLE} and train/")
    frame = read_csv(source, ["Id", "Target"], dtype={"Id": str, "Target": str})
    rows = list(range(1, len(frame) + 1))
    check_no_missing(frame, ["Id"], source.name, rows)
    ids = [i.strip() for i in frame["Id"].astype(str)]
    targets = [_target(t, source.name, r) for t, r in zip(frame["Target"], rows)]
    out = pd.DataFrame({"Id": ids, "Target": ["|".join(t) or None for t in targets],
                        "localisation": ["|".join(CLASSES[int(k)] for k in t) or None for t in targets]})
    for column in frame.columns:  # anything a user added to the file
        if column not in out.columns:
            out[column] = frame[column]
    root = images if images is not None else source.parent / "train"
    return Imported(
        layout="hpa", frame=out, source_name=source.name, source_rows=rows, root=root,
        data={"image_template": TEMPLATE, "channels": list(CHANNELS)},
        files=[[TEMPLATE.format(Id=i, channel=c) for c in CHANNELS] for i in ids], labels=["Target", "localisation"],
        audit_image_column="Id", sources=[source],
    )


def _target(cell: object, name: str, row: int) -> list[str]:
    """The class ids of one ``Target`` cell ("16 0" -> ["16", "0"]), each checked to be a known class."""
    if not isinstance(cell, str) or not cell.strip():
        return []
    ids = cell.split()
    bad = [t for t in ids if not t.isdigit() or int(t) >= len(CLASSES)]
    if bad:
        raise UserError(f"{name}: column 'Target' holds '{cell}' in {rows_text([row])}; it must be space-separated "
                        f"class ids 0-{len(CLASSES) - 1}")
    return ids
