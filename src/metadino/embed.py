"""Frozen embeddings of every row of a table, in batches, written to Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from metadino.data.crops import eval_view
from metadino.data.dataset import load_checked_image
from metadino.data.photometric import Photometric, build_photometric
from metadino.data.table import MetadataTable
from metadino.errors import UserError
from metadino.models.backbone import Backbone


class EvalDataset(Dataset):
    """Row i -> the deterministic evaluation view of its image (resize, centre crop, normalise)."""

    def __init__(self, table: MetadataTable, preprocessing: dict[str, Any]):
        self.table = table
        self.size = int(preprocessing["image_size"])
        self.in_chans = int(preprocessing["in_chans"])
        self.photometric: Photometric = build_photometric(
            preprocessing["photometric"], in_chans=self.in_chans, mean=preprocessing.get("mean"), std=preprocessing.get("std")
        )

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_checked_image(self.table, index, self.in_chans)
        return eval_view(image, self.size, self.photometric)


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    table: MetadataTable,
    preprocessing: dict[str, Any],
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
) -> torch.Tensor:
    """CLS embeddings [N, D] (fp32, CPU) of every row, in table order."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    loader = DataLoader(EvalDataset(table, preprocessing), batch_size=batch_size, num_workers=num_workers, shuffle=False)
    out = []
    for images in tqdm(loader, desc="embed", unit="batch", disable=not progress):
        out.append(backbone(images.to(device)).cls.float().cpu())
    return torch.cat(out) if out else torch.empty(0, backbone.embed_dim)


def check_output_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".parquet":
        raise UserError(f"--out '{out}' must end in .parquet.")
    return out


def write_embeddings(table: MetadataTable, features: torch.Tensor, out: str | Path) -> Path:
    """Parquet with one row per image: the path as written in the table, its row number, the embedding."""
    out = check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    emb = features.numpy().astype(np.float32)
    frame = pd.DataFrame({table.image_column: table.frame[table.image_column].astype(str).tolist(), "row": table.row_numbers})
    arrow = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        "embedding", pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    )
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(arrow, tmp)
    tmp.replace(out)
    return out


def read_embeddings(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """(frame without the embedding column, embeddings [N, D] float32)."""
    table = pq.read_table(path)
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return table.drop(["embedding"]).to_pandas(), emb
