"""Photometric (intensity/colour) augmentation presets for one crop, built from :mod:`.ops`.

A preset is a :class:`Photometric`: ``preset(crop, generator, crop_kind)`` applies the random ops and the
normalization; ``preset.normalize(x)`` is the deterministic part alone (used by evaluation). All randomness
comes from the generator passed in, so a crop is a pure function of its seed keys (see seeding.py).

Presets (``PHOTOMETRIC_PRESETS``; add one by adding a factory to ``_PRESETS``):

- ``natural``: the DINO colour pipeline for RGB images in [0, 1], with torchvision's formulas.
- ``microscopy``: per-channel intensity jitter + channel dropout + per-image self-normalization, any C.
- ``xray``: radiographs; intensity windowing, gamma, mild brightness/contrast, blur; no colour op, any C.
- ``satellite``: multi-band imagery; random 90 degree rotations and flips, per-band gain/offset jitter.
- ``none``: no random op; Normalize(mean, std) if given.

The xray and satellite presets apply their brightness/contrast jitter *after* standardisation (in units
of the standardised intensities): an affine per-channel jitter before a per-image self-normalisation
would be cancelled exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from metadino.data.photometric.ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    gaussian_blur,
    intensity_jitter,
    intensity_window,
    rescale_to_unit,
    rgb_to_grayscale,
    self_normalize,
    solarize,
)
from metadino.data.seeding import draw_int, draw_uniform

CROP_KINDS = ("global0", "global1", "local")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _coin(generator: torch.Generator, p: float) -> bool:
    """True with probability p (p=1 always, p=0 never)."""
    return torch.rand((), generator=generator, dtype=torch.float64).item() < p


class Photometric:
    """Base preset: identity, optionally followed by Normalize(mean, std).

    Args:
        in_chans: number of channels the preset expects.
        mean, std: per-channel normalization, both or neither; length in_chans.
    """

    def __init__(self, in_chans: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std for normalization, or neither")
        if mean is not None and std is not None:
            if len(mean) != in_chans or len(std) != in_chans:
                raise ValueError(
                    f"mean/std have {len(mean)}/{len(std)} values but the images have {in_chans} channels"
                )
            if any(s <= 0 for s in std):
                raise ValueError(f"std values must be > 0, got {list(std)}")
        self.in_chans = in_chans
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self._stats: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic part only. Args: x [C, H, W]."""
        if self.mean is None or self.std is None:
            return x
        key = (x.dtype, x.device)
        if key not in self._stats:  # built once per dtype: a small tensor per crop costs more than the op
            self._stats[key] = (torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1),
                                torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1))
        mean, std = self._stats[key]
        return (x - mean).div_(std)

    def augment(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        """Random ops (subclasses override). Args: crop [C, H, W]."""
        return crop

    def apply(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        """The whole training pipeline of a checked crop; presets whose random ops sit between deterministic
        steps override this (and keep :meth:`normalize` equal to the pipeline without its random ops)."""
        return self.normalize(self.augment(crop, generator, crop_kind))

    def __call__(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        """Random ops then normalization. Args: crop float [C, H, W]; crop_kind in CROP_KINDS."""
        if crop_kind not in CROP_KINDS:
            raise ValueError(f"crop_kind must be one of {CROP_KINDS}, got {crop_kind!r}")
        if crop.dim() != 3 or crop.shape[0] != self.in_chans:
            raise ValueError(f"expected a [{self.in_chans}, H, W] crop, got shape {tuple(crop.shape)}")
        return self.apply(crop, generator, crop_kind)


class NaturalPhotometric(Photometric):
    """DINO colour pipeline for RGB crops with values in [0, 1].

    ColorJitter(0.4, 0.4, 0.2, 0.1) with p=0.8 (ops in random order, as torchvision), RandomGrayscale
    p=0.2, Gaussian blur (kernel 9 at 224 px scaled to the crop, sigma U(0.1, 2.0)), solarize p=0.2 on
    global1 only, Normalize (ImageNet by default).

    Deviation from the reference: the blur probabilities are the intended ones (global0 1.0, global1 0.1,
    local 0.5). The DINOv3 reference inverts them (global0 never, global1 0.9; facebookresearch/dinov3#286).
    Only the kernel scales with the crop (9 at 224 px, 5 at 128 px, 3 at 96 px); sigma stays U(0.1, 2.0) in pixels.
    The reference's ``gaussian_blur: false`` removes blur and solarize: here ``blur=False, solarize=False``.
    """

    blur_p = {"global0": 1.0, "global1": 0.1, "local": 0.5}
    solarize_p = {"global0": 0.0, "global1": 0.2, "local": 0.0}

    def __init__(
        self,
        in_chans: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur: bool = True,
        solarize: bool = True,
        sigma: tuple[float, float] = (0.1, 2.0),
    ):
        if in_chans != 3:
            raise ValueError(f"the 'natural' photometric preset needs RGB images (3 channels), got {in_chans}")
        if mean is None and std is None:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        super().__init__(in_chans, mean, std)
        self.brightness = (max(0.0, 1.0 - brightness), 1.0 + brightness)
        self.contrast = (max(0.0, 1.0 - contrast), 1.0 + contrast)
        self.saturation = (max(0.0, 1.0 - saturation), 1.0 + saturation)
        self.hue = (-hue, hue)
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.blur = blur
        self.solarize_enabled = solarize
        self.sigma = sigma

    def color_jitter(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """torchvision ColorJitter: random order of the 4 ops, factors drawn up front."""
        order = torch.randperm(4, generator=generator).tolist()
        b = draw_uniform(generator, *self.brightness)
        c = draw_uniform(generator, *self.contrast)
        s = draw_uniform(generator, *self.saturation)
        h = draw_uniform(generator, *self.hue)
        ops: list[Callable[[torch.Tensor], torch.Tensor]] = [
            lambda x: adjust_brightness(x, b),
            lambda x: adjust_contrast(x, c),
            lambda x: adjust_saturation(x, s),
            lambda x: adjust_hue(x, h),
        ]
        for i in order:
            img = ops[i](img)
        return img

    def augment(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        if _coin(generator, self.jitter_p):
            crop = self.color_jitter(crop, generator)
        if _coin(generator, self.grayscale_p):
            crop = rgb_to_grayscale(crop).expand_as(crop).clone()
        if self.blur and _coin(generator, self.blur_p[crop_kind]):
            k = blur_kernel_size(min(crop.shape[-2:]))
            crop = gaussian_blur(crop, k, draw_uniform(generator, *self.sigma))
        if self.solarize_enabled and _coin(generator, self.solarize_p[crop_kind]):
            crop = solarize(crop, 0.5)
        return crop


class MicroscopyPhotometric(Photometric):
    """Intensity augmentation for any channel count (fluorescence microscopy and the like).

    Per channel c: contrast f_c = max(N(1, 0.2), 0.5) around the channel mean, then brightness
    g_c = max(N(1, 0.2), 0.5); then, when C >= 2, with p=0.2 one uniformly chosen channel is zeroed (never
    all); optional blur (off by default); then per-image per-channel self-normalization.

    Deviation from the reference: the jitter is never clamped. The reference's HPA pipeline clamps to
    [0, 1] on 0..255 inputs, which turns channels into near-binary masks.
    ``mean``/``std`` are ignored: self-normalization replaces them.
    """

    def __init__(
        self,
        in_chans: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        jitter_std: float = 0.2,
        min_factor: float = 0.5,
        channel_drop_p: float = 0.2,
        blur_p: float = 0.0,
        sigma: tuple[float, float] = (0.1, 2.0),
    ):
        super().__init__(in_chans)
        self.jitter_std = jitter_std
        self.min_factor = min_factor
        self.channel_drop_p = channel_drop_p
        self.blur_p = blur_p
        self.sigma = sigma

    def _factors(self, generator: torch.Generator) -> torch.Tensor:
        f = 1.0 + self.jitter_std * torch.randn(self.in_chans, generator=generator, dtype=torch.float64)
        return f.clamp_min(self.min_factor)

    def augment(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        contrast = self._factors(generator)
        brightness = self._factors(generator)
        crop = intensity_jitter(crop, contrast, brightness)
        if self.in_chans >= 2 and _coin(generator, self.channel_drop_p):  # the jitter's output is a new tensor
            crop[draw_int(generator, 0, self.in_chans - 1)] = 0.0
        if self.blur_p > 0 and _coin(generator, self.blur_p):
            crop = gaussian_blur(crop, blur_kernel_size(min(crop.shape[-2:])), draw_uniform(generator, *self.sigma))
        return crop

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self_normalize(x)


def _standardize(p: Photometric, x: torch.Tensor) -> torch.Tensor:
    """Normalize(mean, std) when the preset has them, else per-image self-normalization."""
    return Photometric.normalize(p, x) if p.mean is not None else self_normalize(x)


class XRayPhotometric(Photometric):
    """Radiographs: intensity windowing and gamma, no colour op; single channel (any C treated alike).

    When to use it: X-ray radiographs (chest, bone, dental), mammograms, CT/MR slices exported as images —
    grayscale data where intensity carries meaning and colour does not exist. Give ``crops.mean/std`` (of
    the [0, 1]-rescaled intensities) for images with large uniform background, otherwise each crop is
    self-normalized.

    Deterministic part (training and evaluation): each channel is rescaled to [0, 1] by its min/max over
    the crop (a 12-bit image stored in a 16-bit file becomes full range), and standardised at the end:
    Normalize(mean, std) if given, else per-image per-channel self-normalization.
    Random part, one draw shared by all channels (so channels are never mixed and are treated alike):
    with p=0.8 an intensity window (centre U(0.5 +- 0.15), width U(0.6, 1.0), clamped to [0, 1]); gamma
    x**g with log g ~ U(log 0.7, log 1.4); Gaussian blur with p=0.2 (sigma U(0.1, 1.0) px); then, after
    standardisation, mild contrast c ~ U(0.9, 1.1) and brightness shift b ~ U(-0.1, 0.1): z -> c*z + b.
    No hue, saturation, grayscale or solarize op.
    """

    def __init__(
        self,
        in_chans: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        window_p: float = 0.8,
        window_center: tuple[float, float] = (0.35, 0.65),
        window_width: tuple[float, float] = (0.6, 1.0),
        gamma: tuple[float, float] = (0.7, 1.4),
        contrast: float = 0.1,
        brightness: float = 0.1,
        blur_p: float = 0.2,
        sigma: tuple[float, float] = (0.1, 1.0),
    ):
        super().__init__(in_chans, mean, std)
        if not 0.0 < window_width[0] <= window_width[1]:
            raise ValueError(f"window_width must satisfy 0 < min <= max, got {window_width}")
        if not 0.0 < gamma[0] <= gamma[1]:
            raise ValueError(f"gamma must satisfy 0 < min <= max, got {gamma}")
        self.window_p = window_p
        self.window_center = window_center
        self.window_width = window_width
        self.log_gamma = (math.log(gamma[0]), math.log(gamma[1]))
        self.contrast = (max(0.0, 1.0 - contrast), 1.0 + contrast)
        self.brightness = (-brightness, brightness)
        self.blur_p = blur_p
        self.sigma = sigma

    def augment(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        """Window, gamma and blur of a [0, 1]-rescaled crop [C, H, W]; output stays in [0, 1]."""
        if _coin(generator, self.window_p):
            center = draw_uniform(generator, *self.window_center)
            width = draw_uniform(generator, *self.window_width)
            crop = intensity_window(crop, center, width)
        g = math.exp(draw_uniform(generator, *self.log_gamma))
        crop = crop.clamp_min(0.0).pow(g)
        if self.blur_p > 0 and _coin(generator, self.blur_p):
            crop = gaussian_blur(crop, blur_kernel_size(min(crop.shape[-2:])), draw_uniform(generator, *self.sigma))
        return crop

    def apply(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        z = _standardize(self, self.augment(rescale_to_unit(crop), generator, crop_kind))
        c = draw_uniform(generator, *self.contrast)
        b = draw_uniform(generator, *self.brightness)
        return c * z + b

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return _standardize(self, rescale_to_unit(x))


class SatellitePhotometric(Photometric):
    """Multi-band imagery: random 90 degree rotations and flips, per-band gain/offset jitter, no colour op.

    When to use it: satellite and aerial imagery (RGB, multispectral, SAR) seen from above, where there is
    no "up" — any rotation or mirror image of a scene is an equally valid scene — and bands are separate
    sensor channels whose calibration varies between acquisitions. Give ``crops.mean/std`` (per-band
    statistics of your data set) when absolute reflectance matters; otherwise each crop is self-normalized.

    Random geometry: k ~ U{0, 1, 2, 3} quarter turns (``torch.rot90``; a non-square crop gets 0 or 2 so
    its shape is kept), then horizontal and vertical flips with p=0.5 each — together all 8 symmetries of
    the square. Then standardisation (Normalize(mean, std) if given, else per-image per-band
    self-normalization), then per band b independently z_b -> c_b * z_b + o_b with c_b ~ U(1 +- contrast)
    and o_b ~ U(+-brightness) (in standardised units). No hue, saturation or band mixing.
    The iBOT masks are drawn on the token grid of the finished crop, so the geometric ops need no mask
    bookkeeping.
    """

    def __init__(
        self,
        in_chans: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        rotate: bool = True,
        flip: bool = True,
        contrast: float = 0.2,
        brightness: float = 0.2,
    ):
        super().__init__(in_chans, mean, std)
        self.rotate = rotate
        self.flip = flip
        self.contrast = contrast
        self.brightness = brightness

    def augment(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        """The geometric part: rotation and flips of a crop [C, H, W]."""
        if self.rotate:
            k = draw_int(generator, 0, 3)
            if crop.shape[-2] != crop.shape[-1]:
                k = 2 * (k // 2)  # a quarter turn would swap H and W
            if k:
                crop = torch.rot90(crop, k, dims=(-2, -1))
        if self.flip:
            if _coin(generator, 0.5):
                crop = crop.flip(-1)
            if _coin(generator, 0.5):
                crop = crop.flip(-2)
        return crop

    def apply(self, crop: torch.Tensor, generator: torch.Generator, crop_kind: str) -> torch.Tensor:
        z = self.normalize(self.augment(crop, generator, crop_kind))
        if self.contrast == 0 and self.brightness == 0:
            return z.contiguous()
        c = 1.0 + self.contrast * (2.0 * torch.rand(self.in_chans, generator=generator, dtype=torch.float64) - 1.0)
        o = self.brightness * (2.0 * torch.rand(self.in_chans, generator=generator, dtype=torch.float64) - 1.0)
        return (c.to(z.dtype).view(-1, 1, 1) * z + o.to(z.dtype).view(-1, 1, 1)).contiguous()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return _standardize(self, x)


def _natural(in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> Photometric:
    return NaturalPhotometric(in_chans, mean, std)


def _microscopy(in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> Photometric:
    return MicroscopyPhotometric(in_chans)


def _xray(in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> Photometric:
    return XRayPhotometric(in_chans, mean, std)


def _satellite(in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> Photometric:
    return SatellitePhotometric(in_chans, mean, std)


def _none(in_chans: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> Photometric:
    return Photometric(in_chans, mean, std)


# The one place that maps a preset name to its builder.
_PRESETS: dict[str, Callable[[int, Sequence[float] | None, Sequence[float] | None], Photometric]] = {
    "natural": _natural,
    "microscopy": _microscopy,
    "xray": _xray,
    "satellite": _satellite,
    "none": _none,
}
PHOTOMETRIC_PRESETS: tuple[str, ...] = tuple(_PRESETS)


def build_photometric(
    preset: str, *, in_chans: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Photometric:
    """Build a preset by name (one of ``PHOTOMETRIC_PRESETS``); ValueError for unknown names or a bad C."""
    if preset not in _PRESETS:
        raise ValueError(f"unknown photometric preset {preset!r}; choose one of {', '.join(PHOTOMETRIC_PRESETS)}")
    return _PRESETS[preset](in_chans, mean, std)


__all__ = [
    "CROP_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PHOTOMETRIC_PRESETS",
    "MicroscopyPhotometric",
    "NaturalPhotometric",
    "Photometric",
    "SatellitePhotometric",
    "XRayPhotometric",
    "build_photometric",
]
