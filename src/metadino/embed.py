"""Frozen embeddings of every row of a table, in batches, written to Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from metadino.data.table import MetadataTable
from metadino.errors import UserError
from metadino.eval.features import extract
from metadino.files import atomic_write, check_output_file
from metadino.models.backbone import Backbone
from metadino.models.preprocessing import Preprocessing


def extract_features(
    backbone: Backbone,
    table: MetadataTable,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> torch.Tensor:
    """CLS embeddings [N, D] (fp32, CPU) of every row, in table order (computed in `precision`, see ``extract``)."""
    return extract(backbone, table, preprocessing, batch_size=batch_size, device=device, num_workers=num_workers,
                   precision=precision, progress=progress, desc="embed").cls


def check_output_path(out: str | Path, *, overwrite: bool = False) -> Path:
    """A .parquet path that is not a folder and, unless `overwrite`, does not exist yet."""
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise UserError(f"--out '{out}' must end in .parquet.")
    return check_output_file(out, overwrite=overwrite)


def write_embeddings(table: MetadataTable, features: torch.Tensor, out: str | Path) -> Path:
    """Parquet with one row per image: the path as written in the table (or, for channel files, a column ``image``
    with each row's first file), its row number, the embedding."""
    out = check_output_path(out, overwrite=True)  # the command checked --overwrite before computing
    out.parent.mkdir(parents=True, exist_ok=True)
    emb = features.numpy().astype(np.float32)
    if table.image_column in table.frame.columns:
        names = table.frame[table.image_column].astype(str).tolist()
        column = table.image_column
    else:  # a path template or channel columns name the files: each row's first file
        names, column = [table.images.name(i) for i in range(len(table))], "image"
    frame = pd.DataFrame({column: names, "row": table.row_numbers})
    arrow = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    )
    atomic_write(out, lambda tmp: pq.write_table(arrow, tmp))
    return out


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame without the embedding column, embeddings [N, D] float32)."""
    table = pq.read_table(path)
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return table.drop(["embedding"]).to_pandas(), emb
