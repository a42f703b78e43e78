"""Training dataset, step-indexed sampler and crop-major collate.

Which image a batch slot holds and how it is augmented depend only on (seed, step, slot), never
on the number of workers, the world size or whether the run was resumed:

* :class:`StepSampler` walks a seeded per-epoch permutation of the table. Global position
  ``p = step * global_batch + slot`` maps to ``(epoch, perm_epoch[p % n])`` with
  ``epoch = p // n``. Rank ``r`` of ``W`` owns slots ``[r * B, (r + 1) * B)``, so the union
  over ranks is exactly the single-process batch of the same global size.
* :class:`SSLDataset` receives ``(epoch, index)`` and augments with
  ``(seed, epoch, index, crop id)`` counters (see :mod:`metadino.data.seeding`); with label-guided crops,
  the row's region (:mod:`metadino.data.regions`) is part of the sample, as fixed as its image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from metadino.data.batch import Batch, Target
from metadino.data.crops import MultiCropAugmentation, eval_view
from metadino.data.photometric.presets import Photometric
from metadino.data.reading import ReadOptions
from metadino.data.regions import TableRegions
from metadino.data.seeding import make_generator
from metadino.data.table import MetadataTable
from metadino.data.targets import TableTargets
from metadino.errors import UserError

_PERMUTATION_STREAM = 0x5A4D  # keeps the sampler's random stream apart from the augmentation streams


def load_checked_image(table: MetadataTable, index: int, in_chans: int,
                       options: ReadOptions | None = None) -> torch.Tensor:
    """Decode row `index` of `table` and check its channel count; errors name the row and file."""
    path = table.images.name(index)
    try:
        image = table.images.load(index, options)
    except UserError as e:
        raise UserError(f"{table.source.name} row {table.row_numbers[index]}: {e}") from None
    if image.shape[0] != in_chans:
        raise UserError(
            f"{table.source.name} row {table.row_numbers[index]}: image '{path}' has {image.shape[0]} channel(s) "
            f"but model.in_chans={in_chans}; set model.in_chans to match your images."
        )
    return image


class SSLDataset(Dataset[dict[str, Any]]):
    """Rows of a metadata table -> multi-crop views. Indexed by ``(epoch, row index)``.

    ``regions`` (from :func:`metadino.data.regions.load_regions` on the same table) gives each row's
    annotated region to the augmentation for label-guided local crops; it is only read when the
    augmentation guides some crops (``augment.uses_regions``).
    """

    def __init__(
        self,
        table: MetadataTable,
        augment: MultiCropAugmentation,
        *,
        seed: int,
        in_chans: int,
        targets: TableTargets | None = None,
        regions: TableRegions | None = None,
        options: ReadOptions | None = None,
    ):
        if regions is not None and len(regions) != len(table):
            raise ValueError(f"regions cover {len(regions)} rows but the table has {len(table)}")
        self.table = table
        self.regions = regions
        self.targets = targets
        self.augment = augment
        self.seed = seed
        self.in_chans = in_chans
        self.options = options

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        image = load_checked_image(self.table, index, self.in_chans, self.options)
        region = None
        if self.regions is not None and self.augment.uses_regions:
            region = self.regions.region(index, (image.shape[1], image.shape[2]))
        crops = self.augment(image, seed=self.seed, epoch=epoch, index=index, region=region)
        sample = {"global": crops.global_crops, "local": crops.local_crops, "masks": crops.masks, "index": index}
        if self.targets is not None:
            sample["targets"] = self.targets.row(index)
        return sample


def collate_crops(samples: Sequence[dict[str, Any]]) -> Batch:
    """Samples -> a crop-major :class:`~metadino.data.batch.Batch` (row ``crop * B + b`` holds crop `crop` of
    sample `b`), with a :class:`~metadino.data.batch.Target` per metadata column."""
    n_global = len(samples[0]["global"])
    n_local = len(samples[0]["local"])
    glob = torch.stack([s["global"][j] for j in range(n_global) for s in samples])
    local = torch.stack([s["local"][j] for j in range(n_local) for s in samples]) if n_local else None
    masks = torch.stack([s["masks"][j] for j in range(n_global) for s in samples])
    index = torch.tensor([s["index"] for s in samples], dtype=torch.long)
    targets = {}
    if "targets" in samples[0]:
        targets = {k: Target(torch.stack([s["targets"][k][0] for s in samples]), torch.stack([s["targets"][k][1] for s in samples]))
                   for k in samples[0]["targets"]}
    return Batch(glob, local, masks, index, targets)


class StepSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler yielding, for batch positions ``start_step .. total_steps-1`` (``total_steps`` None: without end),
    this rank's ``(epoch, index)`` list. The position is the optimizer step, except under fp16, where a step whose
    gradients overflowed uses up a batch but not a step (the run records its data position for exact resume)."""

    def __init__(
        self,
        n_items: int,
        *,
        batch_size: int,
        total_steps: int | None,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if n_items < 1:
            raise ValueError("StepSampler needs at least one item")
        self.n_items = n_items
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self._perm_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an unbounded StepSampler has no length")
        return max(self.total_steps - self.start_step, 0)

    def permutation(self, epoch: int) -> torch.Tensor:
        perm = self._perm_cache.get(epoch)
        if perm is None:
            perm = torch.randperm(self.n_items, generator=make_generator(self.seed, epoch, _PERMUTATION_STREAM))
            if len(self._perm_cache) >= 2:  # at most two epochs are in flight (a batch may straddle a boundary)
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = perm
        return perm

    def batch(self, step: int) -> list[tuple[int, int]]:
        global_batch = self.batch_size * self.world_size
        first = step * global_batch + self.rank * self.batch_size
        out = []
        for p in range(first, first + self.batch_size):
            epoch = p // self.n_items
            out.append((epoch, int(self.permutation(epoch)[p % self.n_items])))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            yield self.batch(step)
            step += 1


class EvalDataset(Dataset[torch.Tensor]):
    """Row i -> the deterministic evaluation view of its image (resize, centre crop, normalise)."""

    def __init__(self, table: MetadataTable, *, image_size: int, in_chans: int, photometric: Photometric,
                 options: ReadOptions | None = None):
        self.table = table
        self.options = options
        self.size = image_size
        self.in_chans = in_chans
        self.photometric = photometric

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = load_checked_image(self.table, index, self.in_chans, self.options)
        return eval_view(image, self.size, self.photometric)
