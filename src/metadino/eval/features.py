"""Frozen features for the probes: extracted once in batches, cached per model and table selection.

One forward pass per image gives everything the probes need: the CLS token, the mean patch token
(both after the final norm) and, for attention pooling, the patch tokens of the last blocks each
through the final norm and concatenated on the feature axis (FINO's attention-pooling probe). Patch tokens are kept
in float16 because they are P x 4D per image.

The cache key is a hash of the backbone weights themselves, the selected rows (the table's fingerprint), each
selected image file's identity (size and mtime in nanoseconds: one ``stat`` per file, no reading), the preprocessing
and what was extracted — so a retrained model, an edited table or replaced images never reuse stale features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from metadino.data.dataset import EvalDataset
from metadino.data.sources import ImageSource
from metadino.data.table import MetadataTable
from metadino.device import usable_cores
from metadino.errors import UserError
from metadino.files import atomic_write, cache_root
from metadino.models.backbone import Backbone
from metadino.models.preprocessing import Preprocessing

CACHE_VERSION = 1
# --precision of feature extraction: None = no autocast
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def loader_workers(requested: int | None, device: torch.device) -> int:
    """Image-decoding processes for extraction: `requested`, or by default none on a CPU (decoding would compete
    with the model for the same cores) and up to 8 beside a GPU (one core left for the main process)."""
    if requested is not None:
        return requested
    if device.type == "cpu":
        return 0
    return max(1, min(8, usable_cores() - 1))


@dataclass
class Features:
    """Features of the rows of one table selection, in table order (CPU tensors).

    cls: [N, D] fp32; mean_patch: [N, D] fp32; patch_tokens: [N, P, n_blocks * D] fp16 or None.
    """

    cls: torch.Tensor
    mean_patch: torch.Tensor
    patch_tokens: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.cls.shape[0]

    def embedding(self, kind: str) -> torch.Tensor:
        """'cls' -> [N, D]; 'cls+mean' -> [N, 2D] (CLS concatenated with the mean patch token)."""
        if kind == "cls":
            return self.cls
        if kind == "cls+mean":
            return torch.cat([self.cls, self.mean_patch], dim=1)
        raise ValueError(f"unknown feature kind {kind!r}")


def default_cache_dir() -> Path:
    return cache_root() / "features"


def weights_digest(backbone: Backbone) -> str:
    """sha256 over the backbone's parameter and buffer values (identifies the model, whatever its source)."""
    h = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def images_digest(images: ImageSource) -> str:
    """sha256 over each row's image identity: its files (with size and mtime), item and tile (a file that cannot be
    stat'ed counts as missing); bytes held in the table are covered by the table's fingerprint."""
    h = hashlib.sha256()
    for i in range(len(images)):
        stat = images.stat_key(i)
        h.update(f"{images.key(i)}\0{'missing' if stat is None else stat[1]}\1".encode())
    return h.hexdigest()


def cache_key(model_digest: str, table: MetadataTable, preprocessing: Preprocessing, patch_blocks: int,
              precision: str = "fp32") -> str:
    payload = json.dumps(
        {
            **({"precision": precision} if precision != "fp32" else {}),  # fp32 keys stay those of earlier caches
            "v": CACHE_VERSION,
            "model": model_digest,
            "rows": table.fingerprint(),
            "images": images_digest(table.images),
            "n": len(table),
            "pre": preprocessing.to_dict(),
            "read": repr(table.images.options),
            "patch_blocks": patch_blocks,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@torch.no_grad()
def extract(
    backbone: Backbone,
    table: MetadataTable,
    preprocessing: Preprocessing,
    *,
    patch_blocks: int = 0,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "features",
) -> Features:
    """CLS, mean patch and (patch_blocks > 0) the last blocks' patch tokens of every row.

    `precision` bf16 / fp16 runs the forward under autocast (tensor-core matmuls on a GPU; features then differ from
    fp32 by rounding). On CUDA batches come through pinned memory and are copied without blocking.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    if patch_blocks > backbone.depth:
        raise UserError(f"attention pooling reads the last {patch_blocks} blocks but the model has only {backbone.depth}.")
    if precision not in AUTOCAST_DTYPES:
        raise UserError(f"--precision must be one of {', '.join(AUTOCAST_DTYPES)}, got '{precision}'.")
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    dataset = EvalDataset(table, image_size=preprocessing.image_size, in_chans=preprocessing.in_chans,
                          photometric=preprocessing.transform())
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=False,
                        pin_memory=device.type == "cuda")
    dtype = AUTOCAST_DTYPES[precision]
    cls, mean, patches = [], [], []
    for images in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if patch_blocks:
                layers = backbone.intermediate_layers(images, n=patch_blocks)
                last = layers[-1]
                patches.append(torch.cat([t.patches for t in layers], dim=-1).to(torch.float16).cpu())
            else:
                last = backbone(images)
        cls.append(last.cls.float().cpu())
        mean.append(last.patches.float().mean(dim=1).cpu())
    if not cls:
        empty = torch.empty(0, backbone.embed_dim)
        return Features(empty, empty.clone(), None)
    return Features(torch.cat(cls), torch.cat(mean), torch.cat(patches) if patches else None)


def cached_extract(
    backbone: Backbone,
    table: MetadataTable,
    preprocessing: Preprocessing,
    *,
    cache_dir: Path | None,
    model_digest: str | None = None,
    patch_blocks: int = 0,
    precision: str = "fp32",
    **kwargs: Any,
) -> Features:
    """`extract`, reusing an earlier result for the same weights, rows, preprocessing, patch blocks and precision.

    ``cache_dir=None`` disables caching.
    """
    if cache_dir is None:
        return extract(backbone, table, preprocessing, patch_blocks=patch_blocks, precision=precision, **kwargs)
    digest = model_digest or weights_digest(backbone)
    path = cache_dir / f"{cache_key(digest, table, preprocessing, patch_blocks, precision)}.pt"
    if path.is_file():
        try:
            data = torch.load(path, weights_only=True)
            return Features(data["cls"], data["mean_patch"], data["patch_tokens"])
        except Exception:  # a corrupt or partial entry is recomputed, never trusted
            pass
    features = extract(backbone, table, preprocessing, patch_blocks=patch_blocks, precision=precision, **kwargs)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        saved = {"cls": features.cls, "mean_patch": features.mean_patch, "patch_tokens": features.patch_tokens}
        atomic_write(path, lambda tmp: torch.save(saved, tmp))
    except OSError:
        pass  # caching is an optimisation; a read-only cache folder must not fail the evaluation
    return features
