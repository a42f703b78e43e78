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
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _blend(img1: torch.Tensor, img2: torch.Tensor, ratio: float) -> torch.Tensor:
    # torchvision clamps float blends to [0, 1]: these ops assume images in [0, 1]
    return (ratio * img1 + (1.0 - ratio) * img2).clamp(0.0, 1.0)


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """clamp(factor * img, 0, 1). Args: img [..., C, H, W] in [0, 1]."""
    return _blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean of the grayscale image (per image). Args: img [..., 3, H, W] in [0, 1]."""
    mean = rgb_to_grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the grayscale image; factor 0 gives grayscale. Args: img [..., 3, H, W] in [0, 1]."""
    return _blend(img, rgb_to_grayscale(img), factor)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """Args: img [..., 3, H, W] in [0, 1]. Returns HSV [..., 3, H, W], all channels in [0, 1]."""
    r, g, b = img.unbind(dim=-3)
    maxc = img.max(dim=-3).values
    minc = img.min(dim=-3).values
    eqc = maxc == minc  # gray pixels: hue and saturation 0, avoid 0/0
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`. Args: img [..., 3, H, W] HSV. Returns RGB [..., 3, H, W]."""
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    sector = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # candidates per output channel for the 6 hue sectors: [..., 3, 6, H, W]
    cand = torch.stack(
        (
            torch.stack((v, q, p, p, t, v), dim=-3),
            torch.stack((t, v, v, q, p, p), dim=-3),
            torch.stack((p, p, t, v, v, q), dim=-3),
        ),
        dim=-4,
    )
    index = sector.unsqueeze(-3).unsqueeze(-3).expand(*cand.shape[:-3], 1, *cand.shape[-2:])
    return cand.gather(-3, index).squeeze(-3)


def adjust_hue(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Rotate the hue by ``factor`` turns (in [-0.5, 0.5]) through HSV. Args: img [..., 3, H, W] in [0, 1]."""
    hsv = rgb_to_hsv(img)
    h, s, v = hsv.unbind(dim=-3)
    return hsv_to_rgb(torch.stack(((h + factor) % 1.0, s, v), dim=-3))


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
    out = c * img + (1.0 - c) * mean
    return out * brightness.to(img.dtype).view(-1, 1, 1)


def self_normalize(img: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-channel (x - mean_HW) / (biased std_HW + eps); a constant channel becomes 0. Args: img [C, H, W]."""
    mean = img.mean(dim=(-2, -1), keepdim=True)
    std = img.std(dim=(-2, -1), keepdim=True, correction=0)
    return (img - mean) / (std + eps)


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
