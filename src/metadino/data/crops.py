"""Multi-crop augmentation (2 global + n local crops) with iBOT masks, for any channel count.

Every random draw of a crop comes from ``make_generator(seed, epoch, index, crop_id)`` (geometry, then
photometric), and the iBOT mask of global crop j from ``make_generator(seed, epoch, index, j, 1)``, a
separate stream. So a sample's crops and masks do not depend on the worker, rank, batch size or the order
in which samples are processed.

Label-guided local crops (DINO-LG): when a sample comes with an annotated :class:`Region` and
``label_guided_share`` > 0, the first ``n_guided`` local crops are centred on the region (see
:func:`label_guided_crop_box`); ``n_guided`` is ``share * n_local`` rounded stochastically (floor, plus one
with probability equal to the fractional part, drawn from ``make_generator(seed, epoch, index, 0, 2)``), so
the expected share is exact. Global crops never change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metadino.data.masking import MaskingGenerator
from metadino.data.photometric.presets import Photometric
from metadino.data.regions import Region
from metadino.data.seeding import draw_int, draw_uniform, make_generator

_MASK_STREAM = 1  # 5th seed key: masks never share a stream with crop geometry/photometric draws
_GUIDED_STREAM = 2  # 5th seed key of the draw that rounds share * n_local


@dataclass
class Crops:
    """Crops of one sample.

    Attributes:
        global_crops: n_global x [C, G, G].
        local_crops: n_local x [C, L, L].
        masks: n_global x bool [N], N = (G // patch_size)**2: iBOT masks of the global crops (row-major grid).
    """

    global_crops: list[torch.Tensor]
    local_crops: list[torch.Tensor]
    masks: list[torch.Tensor]


def random_crop_size(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, bool]:
    """The size part of RandomResizedCrop: (h, w, drawn).

    Area fraction U(scale), log-uniform aspect w/h in ``ratio``, 10 attempts; ``drawn`` is False when all
    attempts failed and (h, w) is the fallback: the whole image clipped to ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * draw_uniform(generator, *scale)
        aspect = math.exp(draw_uniform(generator, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return h, w, True
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return max(h, 1), max(w, 1), False


def random_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: (top, left, h, w).

    Size from :func:`random_crop_size`; a drawn size is placed uniformly, the fallback is centred.
    """
    h, w, drawn = random_crop_size(height, width, scale, ratio, generator)
    if drawn:
        return draw_int(generator, 0, height - h), draw_int(generator, 0, width - w), h, w
    return (height - h) // 2, (width - w) // 2, h, w


def _place(point: float, keep: float, r0: float, r1: float, size: int, limit: int) -> int:
    """Start of a crop of ``size`` px on an axis of ``limit`` px, as close as possible to being centred on
    ``point``, inside [0, limit), containing the pixel of ``keep``, and the region pixels
    [floor(r0), ceil(r1)) whenever they fit in ``size``. The constraints always intersect (derivation:
    r0 >= 0, r1 <= limit, size <= limit)."""
    lo, hi = 0, limit - size
    first, end = math.floor(r0), math.ceil(r1)
    if end - first <= size:  # the whole region fits: keep all of it
        lo, hi = max(lo, end - size), min(hi, first)
    else:
        k = min(math.floor(keep), limit - 1)
        lo, hi = max(lo, k - size + 1), min(hi, k)
    return min(max(math.floor(point - size / 2 + 0.5), lo), hi)


def label_guided_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    region: Region,
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """A crop box (top, left, h, w) centred on a random point of ``region`` (DINO-LG).

    The size is drawn as in :func:`random_crop_size` (same scale and aspect); the box is then centred on
    :meth:`Region.anchor`'s point and shifted the least needed to stay inside the image, to contain the
    anchor's keep-point (box regions: the box centre; mask regions: the drawn mask pixel), and, when the
    region's box fits in the crop, the whole region.
    """
    if not (region.x1 <= width and region.y1 <= height):
        raise ValueError(f"region {(region.x0, region.y0, region.x1, region.y1)} leaves a {height}x{width} image")
    h, w, _ = random_crop_size(height, width, scale, ratio, generator)
    (px, py), (kx, ky) = region.anchor(generator)
    top = _place(py, ky, region.y0, region.y1, h, height)
    left = _place(px, kx, region.x0, region.x1, w, width)
    return top, left, h, w


def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize, antialiased when downsampling. Args: img [C, H, W]. Returns [C, *size]."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    down = img.shape[-2] > size[0] or img.shape[-1] > size[1]
    out = F.interpolate(img.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=down)
    return out.squeeze(0)


class MultiCropAugmentation:
    """DINO multi-crop for float images [C, H, W] of any C, with per-crop photometric ops and iBOT masks.

    Geometry per crop: RandomResizedCrop (scale, ratio (3/4, 4/3)) resized bilinearly to the crop size
    (images smaller than the crop are upsampled), then optional h/v flips with p=0.5.

    iBOT masks are drawn per global crop, independently of the batch: with probability
    ``mask_probability`` a crop gets exactly int(N * r) masked tokens, r ~ U(mask_ratio), as random blocks
    (:class:`MaskingGenerator`, blocks of >= 4 patches, <= 0.5*N per block, aspect in [0.3, 1/0.3]) topped
    up with uniformly random tokens; otherwise no token is masked. Deviation from the reference collate,
    which masks exactly int(2B * p) crops of the batch at ratios linspace(r_min, r_max, n+1)[1:] and
    shuffles them (FINO's released code): that couples a sample's mask to its batch, so the masks would change with
    batch size and worker layout. The per-crop draw has the same expected masked share and ratio range.

    Args:
        global_size, local_size: crop sizes in px, multiples of ``patch_size``.
        n_local: number of local crops (0 allowed).
        global_scale, local_scale: area fraction ranges of the crops.
        hflip, vflip: random horizontal / vertical flips with p=0.5.
        photometric: the preset applied to each crop (global crop 0 is "global0", the others "global1").
        patch_size: backbone patch size (mask grid = global_size // patch_size).
        mask_ratio: (min, max) share of masked tokens of a masked crop.
        mask_probability: probability that a global crop is masked.
        n_global: number of global crops.
        label_guided_share: share of local crops centred on the sample's region when one is given
            (module docstring); 0 = ordinary crops, bit for bit.
    """

    ratio = (3.0 / 4.0, 4.0 / 3.0)

    def __init__(
        self,
        *,
        global_size: int,
        local_size: int,
        n_local: int,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        hflip: bool = True,
        vflip: bool = False,
        photometric: Photometric,
        patch_size: int,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        n_global: int = 2,
        label_guided_share: float = 0.0,
    ) -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        for name, size in (("global_size", global_size), ("local_size", local_size)):
            if size < patch_size or size % patch_size:
                raise ValueError(f"{name}={size} must be a positive multiple of patch_size={patch_size}")
        if n_global < 1 or n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global} and {n_local}")
        for name, (lo, hi) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        if not 0.0 <= mask_ratio[0] <= mask_ratio[1] <= 1.0:
            raise ValueError(f"mask_ratio must satisfy 0 <= min <= max <= 1, got {mask_ratio}")
        if not 0.0 <= mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
        if not 0.0 <= label_guided_share <= 1.0:
            raise ValueError(f"label_guided_share must be in [0, 1], got {label_guided_share}")
        self.global_size = global_size
        self.local_size = local_size
        self.n_local = n_local
        self.n_global = n_global
        self.global_scale = global_scale
        self.local_scale = local_scale
        self.hflip = hflip
        self.vflip = vflip
        self.photometric = photometric
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.mask_probability = mask_probability
        self.label_guided_share = label_guided_share
        grid = global_size // patch_size
        self.masking = MaskingGenerator((grid, grid), min_num_patches=4, max_num_patches=int(0.5 * grid * grid))

    def _check(self, image: torch.Tensor) -> None:
        if image.dim() != 3 or not image.is_floating_point():
            raise ValueError(f"expected a float image [C, H, W], got {image.dtype} {tuple(image.shape)}")
        if image.shape[0] != self.photometric.in_chans:
            raise ValueError(
                f"image has {image.shape[0]} channels but the photometric preset expects {self.photometric.in_chans}"
            )
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"empty image of shape {tuple(image.shape)}")

    @property
    def uses_regions(self) -> bool:
        """Whether regions can change any crop (so a dataset need not load them otherwise)."""
        return self.label_guided_share > 0 and self.n_local > 0

    def n_guided(self, *, seed: int, epoch: int, index: int) -> int:
        """How many local crops of sample (seed, epoch, index) are label-guided when it has a region."""
        exact = self.label_guided_share * self.n_local
        n = math.floor(exact)
        frac = exact - n
        if frac > 1e-9 and draw_uniform(make_generator(seed, epoch, index, 0, _GUIDED_STREAM), 0.0, 1.0) < frac:
            n += 1
        return min(n, self.n_local)

    def _crop(
        self,
        image: torch.Tensor,
        size: int,
        scale: tuple[float, float],
        kind: str,
        generator: torch.Generator,
        region: Region | None = None,
    ) -> torch.Tensor:
        height, width = image.shape[1], image.shape[2]
        if region is None:
            top, left, h, w = random_resized_crop_box(height, width, scale, self.ratio, generator)
        else:
            top, left, h, w = label_guided_crop_box(height, width, scale, self.ratio, region, generator)
        crop = resize(image[:, top : top + h, left : left + w], (size, size))
        if self.hflip and draw_uniform(generator, 0.0, 1.0) < 0.5:
            crop = crop.flip(-1)
        if self.vflip and draw_uniform(generator, 0.0, 1.0) < 0.5:
            crop = crop.flip(-2)
        return self.photometric(crop.contiguous(), generator, kind)

    def _mask(self, generator: torch.Generator) -> torch.Tensor:
        n = self.masking.num_patches
        if draw_uniform(generator, 0.0, 1.0) >= self.mask_probability:
            return torch.zeros(n, dtype=torch.bool)
        r = draw_uniform(generator, *self.mask_ratio)
        return self.masking(int(n * r), generator).view(-1)

    def __call__(
        self, image: torch.Tensor, *, seed: int, epoch: int, index: int, region: Region | None = None
    ) -> Crops:
        """Crops and masks of one sample, a pure function of (seed, epoch, index, region).

        Args:
            image: float [C, H, W] (the range the photometric preset expects, e.g. [0, 1] for "natural").
            seed, epoch, index: run seed, epoch, sample index in the dataset.
            region: the sample's annotated region in pixels of ``image`` (DINO-LG), or None.
        Returns:
            :class:`Crops`; crop ids are 0..n_global-1 for global crops, then n_global.. for local crops.
        """
        self._check(image)
        global_crops, masks = [], []
        for j in range(self.n_global):
            kind = "global0" if j == 0 else "global1"
            global_crops.append(
                self._crop(image, self.global_size, self.global_scale, kind, make_generator(seed, epoch, index, j))
            )
            masks.append(self._mask(make_generator(seed, epoch, index, j, _MASK_STREAM)))
        guided = self.n_guided(seed=seed, epoch=epoch, index=index) if region is not None and self.uses_regions else 0
        local_crops = [
            self._crop(
                image,
                self.local_size,
                self.local_scale,
                "local",
                make_generator(seed, epoch, index, self.n_global + i),
                region if i < guided else None,
            )
            for i in range(self.n_local)
        ]
        return Crops(global_crops=global_crops, local_crops=local_crops, masks=masks)


def eval_view(image: torch.Tensor, size: int, photometric: Photometric) -> torch.Tensor:
    """Resize the shorter side to ``size``, centre-crop ``size`` x ``size``, apply the preset's normalisation.

    Args:
        image: float [C, H, W].
    Returns:
        [C, size, size]; no random operation, so embeddings are reproducible.
    """
    h, w = image.shape[1], image.shape[2]
    # torchvision Resize(int): the long side is truncated, not rounded
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    image = resize(image, (new_h, new_w))
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return photometric.normalize(image[:, top : top + size, left : left + size].contiguous())
