"""Does the model look at the annotated object? The CLS attention of the last block against each row's region.

Regions are those of label-guided crops (:mod:`metadino.data.regions`): four box columns x0, y0, x1, y1 (pixels of
the original image, pixel edges) or a mask column. Each region is mapped through exactly the geometry of the
evaluation view (:func:`metadino.data.crops.eval_view`: shorter side resized to the input size, centre crop) onto
the model's patch grid as a **coverage** map: the share of each patch's area inside the region (a box analytically;
a mask resized like the image, bilinear and antialiased when shrinking, then averaged over each patch).

Per row, with the CLS -> patch attention renormalised over the patches and averaged over the heads (``A``, summing
to 1; what CLS gives itself and the registers is left out):

- **attention mass** = sum(A * coverage): the share of the patch attention inside the region (a patch half inside
  counts half);
- **pointing game** = 1 when the patch of A's maximum touches the region (coverage > 0), else 0. The classic pointing
  game allows a 15-pixel tolerance; at patch resolution, touching the region is that tolerance.

Both are averaged over the rows that have a region inside the view. Next to them the scores of a uniform map
(chance): the mean region share of the view, and the mean share of patches that touch the region. Per-head values
are kept too (DINO heads specialise). Rows without a region, and rows whose region the centre crop cuts away
entirely, are counted, not scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from metadino.data.crops import eval_view, resize
from metadino.data.dataset import EvalDataset, load_checked_image
from metadino.data.regions import Region, TableRegions
from metadino.data.table import MetadataTable
from metadino.errors import UserError
from metadino.models.attention import cls_attention
from metadino.models.backbone import Backbone
from metadino.models.preprocessing import Preprocessing

__all__ = ["ViewGeometry", "box_coverage", "localisation_metrics", "localisation_scores", "mask_coverage",
           "region_coverage", "view_geometry"]

ATTENTION_BATCH = 16
# row status in a batch
_SCORED, _NO_REGION, _OUTSIDE = 0, 1, 2


@dataclass(frozen=True)
class ViewGeometry:
    """How :func:`eval_view` maps an image of (height, width) to a size x size view: resize to (new_h, new_w), then
    crop rows top..top+size and columns left..left+size."""

    height: int
    width: int
    size: int
    new_h: int
    new_w: int
    top: int
    left: int


def view_geometry(height: int, width: int, size: int) -> ViewGeometry:
    """The resize + centre crop of :func:`metadino.data.crops.eval_view` (the same integer arithmetic)."""
    new_h, new_w = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return ViewGeometry(height, width, size, new_h, new_w, top, left)


def _overlap_1d(lo: float, hi: float, n: int, patch: int) -> Tensor:
    """[n] length of [lo, hi) inside each of n cells [i*patch, (i+1)*patch), as a share of the cell."""
    edges = torch.arange(n + 1, dtype=torch.float64) * patch
    inside = (torch.minimum(edges[1:], torch.tensor(hi, dtype=torch.float64))
              - torch.maximum(edges[:-1], torch.tensor(lo, dtype=torch.float64))).clamp_min(0.0)
    return inside / patch


def box_coverage(box: Sequence[float], geometry: ViewGeometry, patch: int) -> Tensor:
    """[h, w] share of each patch of the view inside a box (x0, y0, x1, y1) of the original image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    g = geometry
    sx, sy = g.new_w / g.width, g.new_h / g.height  # pixel edges scale linearly (align_corners=False)
    n = g.size // patch
    cols = _overlap_1d(x0 * sx - g.left, x1 * sx - g.left, n, patch)
    rows = _overlap_1d(y0 * sy - g.top, y1 * sy - g.top, n, patch)
    return (rows[:, None] * cols[None, :]).float()


def mask_coverage(mask: Tensor, geometry: ViewGeometry, patch: int) -> Tensor:
    """[h, w] share of each patch inside a mask ([H, W] of the original image), resized like the image."""
    g = geometry
    view = resize(mask.float()[None], (g.new_h, g.new_w))[0].clamp(0.0, 1.0)
    view = view[g.top:g.top + g.size, g.left:g.left + g.size]
    return F.avg_pool2d(view[None, None], patch)[0, 0]


def region_coverage(region: Region, geometry: ViewGeometry, patch: int) -> Tensor:
    """A box or mask :class:`Region` as patch coverage of the view."""
    if region.mask is None:
        return box_coverage((region.x0, region.y0, region.x1, region.y1), geometry, patch)
    return mask_coverage(region.mask, geometry, patch)


def localisation_scores(maps: Tensor, coverage: Tensor) -> dict[str, Tensor]:
    """Per-row scores of attention maps against region coverage.

    Args:
        maps: [N, h, w] or [N, heads, h, w], each map summing to 1 over the patches.
        coverage: [N, h, w] share of each patch inside the row's region (0..1).
    Returns:
        ``attention_mass`` and ``pointing_game`` ([N] or [N, heads]); ``mass_chance`` and ``pointing_chance`` [N]
        (what a uniform map scores).
    """
    cov = coverage.float()
    per_head = maps.dim() == 4
    c = cov[:, None] if per_head else cov
    mass = (maps.float() * c).flatten(-2).sum(-1)
    flat = maps.flatten(-2)
    top = flat.argmax(dim=-1, keepdim=True)  # the first maximum when several patches tie
    hit = (c.flatten(-2).expand_as(flat).gather(-1, top)[..., 0] > 0).float()
    return {"attention_mass": mass, "pointing_game": hit, "mass_chance": cov.flatten(1).mean(1),
            "pointing_chance": (cov.flatten(1) > 0).float().mean(1)}


class _RegionViews(EvalDataset):
    """Row i -> (the evaluation view exactly as :class:`EvalDataset` makes it, the region's coverage [h, w], status)."""

    def __init__(self, table: MetadataTable, regions: TableRegions, *, image_size: int, in_chans: int, patch: int,
                 photometric: Any) -> None:
        super().__init__(table, image_size=image_size, in_chans=in_chans, photometric=photometric)
        self.regions = regions
        self.patch = patch

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:  # type: ignore[override]
        image = load_checked_image(self.table, index, self.in_chans, self.options)
        view = eval_view(image, self.size, self.photometric)
        n = self.size // self.patch
        region = self.regions.region(index, (image.shape[1], image.shape[2]))
        if region is None:
            return view, torch.zeros(n, n), _NO_REGION
        cov = region_coverage(region, view_geometry(image.shape[1], image.shape[2], self.size), self.patch)
        return view, cov, _OUTSIDE if float(cov.sum()) == 0.0 else _SCORED


def _mean(x: Tensor) -> float | None:
    return float(x.double().mean()) if x.numel() else None


@torch.no_grad()
def localisation_metrics(backbone: Backbone, table: MetadataTable, regions: TableRegions, pre: Preprocessing, *,
                         batch_size: int = 64, device: torch.device | str = "cpu", num_workers: int = 0,
                         progress: bool = True, rows: str = "test") -> dict[str, Any]:
    """Attention mass inside the region and pointing-game hit rate of `backbone`'s last-block CLS attention on the
    rows of `table` (module docstring), at the model's input resolution. `rows` names the rows in the result."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}.")
    if pre.image_size % backbone.patch_size:
        raise UserError(f"the input size {pre.image_size} px is not a multiple of the patch size {backbone.patch_size}.")
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    dataset = _RegionViews(table, regions, image_size=pre.image_size, in_chans=pre.in_chans,
                           patch=backbone.patch_size, photometric=pre.transform())
    # an HF model holds every block's attention probabilities during the call: small batches
    loader = DataLoader(dataset, batch_size=min(batch_size, ATTENTION_BATCH), num_workers=num_workers, shuffle=False)
    parts: dict[str, list[Tensor]] = {}
    status: list[Tensor] = []
    patch_share: list[Tensor] = []
    for views, cov, state in tqdm(loader, desc="attention maps", unit="batch", disable=not progress, leave=False):
        state = torch.as_tensor(state)
        status.append(state)
        keep = state == _SCORED
        if not keep.any():
            continue
        att = cls_attention(backbone, views[keep].to(device))
        scores = localisation_scores(att.patch_distribution(), cov[keep].to(device))
        heads = localisation_scores(att.patch_distribution(mean_heads=False), cov[keep].to(device))
        for key, value in scores.items():
            parts.setdefault(key, []).append(value.cpu())
        for key in ("attention_mass", "pointing_game"):
            parts.setdefault(f"{key}/heads", []).append(heads[key].cpu())
        patch_share.append(att.patch_share.mean(dim=1).cpu())
    states = torch.cat(status) if status else torch.zeros(0, dtype=torch.long)
    got = {k: torch.cat(v) for k, v in parts.items()}
    n = int((states == _SCORED).sum())
    result: dict[str, Any] = {
        "rows": rows,
        "region": (f"box {', '.join(regions.box_columns)}" if regions.boxes is not None
                   else f"mask {regions.mask_column}"),
        "n_rows": n, "n_without_region": int((states == _NO_REGION).sum()),
        "n_outside_view": int((states == _OUTSIDE).sum()),
        "attention_mass": None, "attention_mass_chance": None, "pointing_game": None, "pointing_game_chance": None,
        "per_head": {"attention_mass": [], "pointing_game": []}, "cls_patch_share": None,
        "image_size": pre.image_size, "patch_size": backbone.patch_size,
    }
    if n:
        result.update({
            "attention_mass": _mean(got["attention_mass"]), "attention_mass_chance": _mean(got["mass_chance"]),
            "pointing_game": _mean(got["pointing_game"]), "pointing_game_chance": _mean(got["pointing_chance"]),
            "per_head": {k: [float(v) for v in got[f"{k}/heads"].double().mean(0)]
                         for k in ("attention_mass", "pointing_game")},
            "cls_patch_share": _mean(torch.cat(patch_share)),
        })
    for key in ("attention_mass", "pointing_game"):  # a NaN would mean a bug upstream: never write one silently
        v = result[key]
        if v is not None and not math.isfinite(v):
            raise RuntimeError(f"localisation {key} is not finite")
    return result
