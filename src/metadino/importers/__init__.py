"""`metadino import`: converters that write a metadino table from a public dataset's layout, as the dataset ships.

One module per layout; each exposes ``convert(source, images, out_dir) -> Imported`` (:mod:`.common`). The table
is written with a ``<out stem>.data.yaml`` snippet holding the ``data:`` block for a config, and the summary names
the columns the :mod:`metadino.audit` rules find informative or spurious.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from metadino.errors import UserError

if TYPE_CHECKING:
    from metadino.importers.common import Converter

# layout -> its module; imported only when used, so that `metadino --help` does not load pandas
LAYOUTS: dict[str, str] = {
    "wilds-fmow": "wilds_fmow",
    "wilds-iwildcam": "wilds_iwildcam",
    "wilds-camelyon17": "wilds_camelyon17",
    "wilds-rxrx1": "wilds_rxrx1",
    "coco-camera-traps": "coco_camera_traps",
    "mimic-cxr-jpg": "mimic_cxr_jpg",
    "hpa": "hpa",
    "cell-painting": "cell_painting",
    "medmnist": "medmnist",
}

EXAMPLES: dict[str, str] = {
    "wilds-fmow": "metadino import wilds-fmow data/fmow_v1.1 --out fmow.csv",
    "wilds-iwildcam": "metadino import wilds-iwildcam data/iwildcam_v2.0 --out iwildcam.parquet",
    "wilds-camelyon17": "metadino import wilds-camelyon17 data/camelyon17_v1.0 --out camelyon17.csv",
    "wilds-rxrx1": "metadino import wilds-rxrx1 data/rxrx1_v1.0 --out rxrx1.csv",
    "coco-camera-traps": "metadino import coco-camera-traps caltech_images.json --images cct_images --out cct.csv",
    "mimic-cxr-jpg": "metadino import mimic-cxr-jpg physionet.org/files/mimic-cxr-jpg/2.0.0 --out mimic.parquet",
    "hpa": "metadino import hpa human-protein-atlas-image-classification --out hpa.csv",
    "cell-painting": "metadino import cell-painting load_data.csv --images /data/cpg0016 --out jump.csv",
    "medmnist": "metadino import medmnist pathmnist.npz --images arrays --out pathmnist.csv",
}


def run_import(layout: str, source: str | Path, out: str | Path, *, images: str | Path | None = None,
               overwrite: bool = False, check_files: bool = True) -> str:
    """Convert `source` (the dataset as it ships) into the table `out` + ``<out stem>.data.yaml``; returns the
    summary. Nothing is written when any check fails (unknown layout, bad source, an existing output without
    `overwrite`, missing image files with `check_files`).

    Raises:
        UserError: naming the file, column and rows at fault.
    """
    from metadino.importers.common import audit_imported, check_outputs, missing_files, summary_text, write_outputs

    if layout not in LAYOUTS:
        raise UserError(f"unknown layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    out_path = Path(out).expanduser()
    check_outputs(out_path, None, overwrite=overwrite)  # before reading a large dataset
    images_dir = None if images is None else Path(images).expanduser().absolute()
    if images_dir is not None and layout != "medmnist" and not images_dir.is_dir():
        raise UserError(f"--images '{images_dir}' is not a folder; pass the folder that holds the images")
    convert: Converter = importlib.import_module(f"metadino.importers.{LAYOUTS[layout]}").convert
    imported = convert(Path(source).expanduser().absolute(), images_dir, out_path.absolute().parent)
    check_outputs(out_path, imported, overwrite=overwrite)
    if check_files:
        problem = missing_files(imported)
        if problem is not None:
            raise UserError(problem)
    snippet = write_outputs(out_path, imported)
    return summary_text(out_path, snippet, imported, audit_imported(out_path, imported))


__all__ = ["EXAMPLES", "LAYOUTS", "run_import"]
