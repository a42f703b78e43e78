"""`metadino inspect`: load a table, audit it, optionally measure each column's leakage in a model's
embeddings, and write the Markdown report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from metadino.audit.format import format_audit
from metadino.audit.roles import UNAUDITED_ROLES, audit_table
from metadino.data.reading import DEFAULT_READ, ReadOptions
from metadino.data.sources import ImageLayout
from metadino.data.table import MetadataTable, load_table
from metadino.errors import UserError
from metadino.eval.leakage import Leakage, column_leakage
from metadino.files import atomic_write_text, check_output_file
from metadino.models.backbone import Backbone
from metadino.models.preprocessing import Preprocessing


def run_inspect(
    table: str | Path,
    *,
    image_column: str = "path",
    root: str | None = None,
    labels: Sequence[str] = (),
    model: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    load: Callable[[], tuple[Backbone, Preprocessing]] | None = None,
    num_workers: int = 0,
    precision: str = "fp32",
    layout: ImageLayout | None = None,
    read: ReadOptions = DEFAULT_READ,
    folds: int = 5,
    seed: int = 0,
) -> str:
    """Load the table, audit it, with `model` measure each column's leakage, and return the Markdown text.

    The text is also written to `out` (parents created) when given; an existing file only with `overwrite`.

    Raises:
        UserError: table problems, unknown columns, a one-class label, a model that cannot be loaded.
    """
    if out is not None:
        check_output_file(Path(out), overwrite=overwrite)  # before any work
    meta = load_table(table, image_column=image_column, root=root, check_files=model is not None, layout=layout,
                      read=read)
    audit = audit_table(meta, labels=labels)
    leakage: dict[str, Leakage] | None = None
    if model is not None:
        features = model_features(model, meta, batch_size=batch_size, device=device, progress=progress, load=load,
                                  num_workers=num_workers, precision=precision)
        leakage = {}
        probe = [c for c, col in audit.columns.items() if col.role not in UNAUDITED_ROLES]
        from tqdm import tqdm  # progress over columns only

        for column in tqdm(probe, desc="leakage", unit="column", disable=not progress):
            try:
                leakage[column] = column_leakage(features, meta.frame[column], column=column, folds=folds, seed=seed)
            except UserError as err:  # one unprobeable column should not hide the others
                audit.notes.append(f"leakage of '{column}' not measured: {err}")
    text = format_audit(audit, leakage, model=model)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return text


def model_features(model: str, meta: MetadataTable, *, batch_size: int, device: str, progress: bool,
                   load: Callable[[], tuple[Backbone, Preprocessing]] | None = None, num_workers: int = 0,
                   precision: str = "fp32") -> np.ndarray:
    """[N, D] frozen embeddings of the table's images under an exported `model` (optional part of inspect); `load`
    resolves the model with the command line's input options (default: :func:`metadino.export.load_model`)."""
    from metadino.embed import extract_features  # torch-heavy: imported only when a model is given
    from metadino.export import load_model

    backbone, preprocessing = load() if load is not None else load_model(model)
    features = extract_features(backbone, meta, preprocessing, batch_size=batch_size, device=device, progress=progress,
                                num_workers=num_workers, precision=precision)
    return features.numpy()


__all__ = ["model_features", "run_inspect"]
