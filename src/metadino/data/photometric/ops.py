"""Functional image ops for photometric augmentation, in plain torch, free of randomness.

Colour ops follow torchvision's formulas for float images in [0, 1] (blends clamped to [0, 1]); the
intensity ops (jitter, window, rescale, self-normalisation) take any intensity range and never clamp
unless their docstring says so. Images are ``[C, H, W]`` (or ``[..., C, H, W]`` where noted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rgb_to_grayscale(img: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma. Args: img [..., 3, H, W]. Returns [..., 1, H, W]."""
    r, g, b = img.unbind(dim=-3)
    # (0.2989 r + 0.587 g) + 0.114 b, the same roundings as the plain expression, in one output buffer
    out = r * 0.2989
    out += g * 0.587
    out += b * 0.114
    return out.unsqueeze(-3)


def _blend(img1: torch.Tensor, img2: torch.Tensor | None, ratio: float) -> torch.Tensor:
    """clamp(ratio * img1 + (1 - ratio) * img2, 0, 1); img2 None means zeros (torchvision clamps float blends
    to [0, 1]: these ops assume images in [0, 1])."""
    out = img1 * ratio
    if img2 is not None:  # adding (1 - ratio) * 0 would change nothing but the sign of a zero
        out += img2 * (1.0 - ratio)
    return out.clamp_(0.0, 1.0)


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """clamp(factor * img, 0, 1). Args: img [..., C, H, W] in [0, 1]."""
    return _blend(img, None, factor)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean of the grayscale image (per image). Args: img [..., 3, H, W] in [0, 1]."""
    mean = rgb_to_grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the grayscale image; factor 0 gives grayscale. Args: img [..., 3, H, W] in [0, 1]."""
    return _blend(img, rgb_to_grayscale(img), factor)


def _hsv(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, s, v) planes of an RGB image [..., 3, H, W], torchvision's formulas."""
    r, g, b = img.unbind(dim=-3)
    maxc = img.amax(dim=-3)  # amax/amin: the same values as max/min(dim), without the index pass
    minc = img.amin(dim=-3)
    eqc = maxc == minc  # gray pixels: hue and saturation 0, avoid 0/0
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    # torchvision sums the three sector terms masked by 0/1 factors; exactly one mask holds, so selecting
    # that term gives the same hue (the masked-out terms are zeros, which the "+ 1.0" below absorbs)
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h /= 6.0
    h += 1.0
    return torch.fmod(h, 1.0, out=h), s, maxc


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """Args: img [..., 3, H, W] in [0, 1]. Returns HSV [..., 3, H, W], all channels in [0, 1]."""
    return torch.stack(_hsv(img), dim=-3)


# Which of (v, q, p, t) each output channel takes in hue sector 0..5 (torchvision's hsv_to_rgb table).
_SECTOR_PICK = torch.tensor([[0, 1, 2, 2, 3, 0], [3, 0, 0, 1, 2, 2], [2, 2, 3, 0, 0, 1]])


def _rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """RGB [..., 3, H, W] of HSV planes [..., H, W]."""
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    sector = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp_(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp_(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp_(0.0, 1.0)
    cand = torch.stack((v, q, p, t), dim=-3)  # [..., 4, H, W]
    pick = _SECTOR_PICK.to(sector.device)[:, sector]  # [3, ..., H, W]
    return cand.gather(-3, pick.movedim(0, -3))


def hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`. Args: img [..., 3, H, W] HSV. Returns RGB [..., 3, H, W]."""
    h, s, v = img.unbind(dim=-3)
    return _rgb(h, s, v)


def adjust_hue(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Rotate the hue by ``factor`` turns (in [-0.5, 0.5]) through HSV. Args: img [..., 3, H, W] in [0, 1]."""
    h, s, v = _hsv(img)
    h += factor
    return _rgb(torch.remainder(h, 1.0, out=h), s, v)


def solarize(img: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert pixels >= threshold (images in [0, 1])."""
    return torch.where(img >= threshold, 1.0 - img, img)


def gaussian_blur(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, as torchvision. Args: img [C, H, W]; kernel_size odd."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = img.shape[-3]
    pad = kernel_size // 2
    out = F.pad(img.unsqueeze(0), (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)
    return out.squeeze(0)


def blur_kernel_size(crop_size: int, base_kernel: int = 9, base_size: int = 224) -> int:
    """Kernel ``base_kernel`` at ``base_size`` px, scaled to the crop, odd, at least 3."""
    k = 2 * int(round((base_kernel * crop_size / base_size - 1) / 2)) + 1
    return max(3, k)


def intensity_jitter(img: torch.Tensor, contrast: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """Per-channel contrast around the channel mean, then brightness; never clamped.

    Args:
        img: [C, H, W], any intensity range.
        contrast, brightness: [C] factors.
    """
    mean = img.mean(dim=(-2, -1), keepdim=True)
    c = contrast.to(img.dtype).view(-1, 1, 1)
    out = img * c  # c * img + (1 - c) * mean, then * brightness: same roundings, one buffer
    out += (1.0 - c) * mean
    return out.mul_(brightness.to(img.dtype).view(-1, 1, 1))


def channel_std(img: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Biased std over (H, W) per channel, [..., C, 1, 1], with the float32 value of ``std(dim=(-2, -1))``.

    Fast path, one full reduction per channel: torch computes it in float64 around the float32 mean,
    several times faster than the dim reduction (a float64 Welford pass). Its only extra error is the
    squared error of that mean, negligible unless |mean| >> std, so channels with |mean| > 30 std (faint
    or constant ones) are redone with the dim reduction: the result is the same float32 value.

    Args:
        img: [..., C, H, W]. mean: its per-channel mean [..., C, 1, 1] when the caller has it.
    """
    flat = img.reshape(-1, img.shape[-2] * img.shape[-1])
    std = torch.stack([row.std(correction=0) for row in flat])
    mean = flat.mean(dim=-1) if mean is None else mean.reshape(-1)
    redo = (mean.abs() > 30.0 * std).nonzero().squeeze(1)
    if redo.numel():
        std[redo] = flat[redo].std(dim=-1, correction=0)
    return std.view(*img.shape[:-2], 1, 1)


def self_normalize(img: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-channel (x - mean_HW) / (biased std_HW + eps); a constant channel becomes 0. Args: img [C, H, W]."""
    mean = img.mean(dim=(-2, -1), keepdim=True)
    return (img - mean).div_(channel_std(img, mean) + eps)


def rescale_to_unit(img: torch.Tensor) -> torch.Tensor:
    """Per-channel min-max rescale to [0, 1]; a constant channel becomes 0. Args: img [C, H, W]."""
    lo = img.amin(dim=(-2, -1), keepdim=True)
    span = img.amax(dim=(-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (img - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(img))


def intensity_window(img: torch.Tensor, center: float, width: float) -> torch.Tensor:
    """Radiology window: [center - width/2, center + width/2] -> [0, 1], clamped. Args: img [C, H, W]."""
    return ((img - (center - 0.5 * width)) / width).clamp(0.0, 1.0)


__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "channel_std",
    "gaussian_blur",
    "hsv_to_rgb",
    "intensity_jitter",
    "intensity_window",
    "rescale_to_unit",
    "rgb_to_grayscale",
    "rgb_to_hsv",
    "self_normalize",
    "solarize",
]
