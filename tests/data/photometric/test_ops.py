"""Functional photometric ops: torchvision colour formulas, blur, intensity jitter, windowing, normalisation."""

from __future__ import annotations

import colorsys

import pytest
import torch
import torch.nn.functional as F

from metadino.data.photometric.ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    gaussian_blur,
    hsv_to_rgb,
    intensity_jitter,
    intensity_window,
    rescale_to_unit,
    rgb_to_grayscale,
    rgb_to_hsv,
    self_normalize,
    solarize,
)
from metadino.data.seeding import make_generator

# hand-made 3x2x2 RGB image in [0, 1]: a gray pixel, two saturated ones and a mixed one
IMG = torch.tensor(
    [
        [[0.5, 1.0], [0.0, 0.2]],
        [[0.5, 0.0], [1.0, 0.7]],
        [[0.5, 0.0], [0.0, 0.9]],
    ]
)


def _gray(img: torch.Tensor) -> torch.Tensor:
    return 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def test_grayscale_weights() -> None:
    torch.testing.assert_close(rgb_to_grayscale(IMG)[0], _gray(IMG))


def test_brightness_is_clamped_scaling() -> None:
    torch.testing.assert_close(adjust_brightness(IMG, 1.5), (1.5 * IMG).clamp(0, 1))
    torch.testing.assert_close(adjust_brightness(IMG, 0.5), 0.5 * IMG)


def test_contrast_blends_with_the_grayscale_mean() -> None:
    m = float(_gray(IMG).mean())
    expected = (1.3 * IMG + (1 - 1.3) * m).clamp(0, 1)
    torch.testing.assert_close(adjust_contrast(IMG, 1.3), expected)
    torch.testing.assert_close(adjust_contrast(IMG, 0.0), torch.full_like(IMG, m))


def test_saturation_zero_is_grayscale_and_one_is_identity() -> None:
    torch.testing.assert_close(adjust_saturation(IMG, 0.0), _gray(IMG).expand(3, 2, 2))
    torch.testing.assert_close(adjust_saturation(IMG, 1.0), IMG)
    expected = (1.2 * IMG + (1 - 1.2) * _gray(IMG)).clamp(0, 1)
    torch.testing.assert_close(adjust_saturation(IMG, 1.2), expected)


@pytest.mark.parametrize("factor", [-0.5, -0.1, 0.0, 0.07, 0.25, 0.5])
def test_hue_matches_colorsys(factor: float) -> None:
    img = torch.rand(3, 5, 6, generator=make_generator(11))
    img[:, 0, 0] = 0.4  # a gray pixel
    out = adjust_hue(img, factor)
    for i in range(5):
        for j in range(6):
            h, s, v = colorsys.rgb_to_hsv(*img[:, i, j].tolist())
            expected = colorsys.hsv_to_rgb((h + factor) % 1.0, s, v)
            torch.testing.assert_close(out[:, i, j], torch.tensor(expected, dtype=torch.float32), atol=1e-5, rtol=0)


def test_hue_rotates_primaries_and_hsv_round_trips() -> None:
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(adjust_hue(red, 1 / 3), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1), atol=1e-6, rtol=0)
    img = torch.rand(3, 4, 4, generator=make_generator(2))
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(img)), img, atol=1e-6, rtol=0)


def test_solarize_inverts_above_threshold() -> None:
    x = torch.tensor([0.0, 0.49, 0.5, 0.8, 1.0])
    torch.testing.assert_close(solarize(x, 0.5), torch.tensor([0.0, 0.49, 0.5, 0.2, 0.0]))


def test_blur_equals_2d_gaussian_with_reflect_padding() -> None:
    img = torch.rand(2, 9, 11, generator=make_generator(4))
    k, sigma = 5, 1.3
    x = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    kernel2d = torch.outer(g, g).expand(2, 1, k, k)
    ref = F.conv2d(F.pad(img[None], (2, 2, 2, 2), mode="reflect"), kernel2d, groups=2)[0]
    torch.testing.assert_close(gaussian_blur(img, k, sigma), ref, atol=1e-6, rtol=0)
    const = torch.full((1, 6, 6), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 3, 2.0), const)


def test_blur_kernel_scales_with_crop_size() -> None:
    assert blur_kernel_size(224) == 9
    assert blur_kernel_size(96) == 3
    assert blur_kernel_size(16) == 3
    assert blur_kernel_size(448) % 2 == 1 and blur_kernel_size(448) >= 15


def test_self_normalize_zero_mean_unit_std() -> None:
    x = torch.rand(3, 10, 10, generator=make_generator(0)) * torch.tensor([1.0, 255.0, 3.0]).view(3, 1, 1) + 7
    x[2] = 5.0  # constant channel
    y = self_normalize(x)
    torch.testing.assert_close(y[:2].mean(dim=(1, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:2].std(dim=(1, 2), correction=0), torch.ones(2), atol=1e-4, rtol=0)
    assert torch.equal(y[2], torch.zeros(10, 10))


def test_intensity_jitter_formula_and_no_clamp() -> None:
    x = torch.rand(2, 6, 6, generator=make_generator(0)) * 255.0  # raw 0..255 intensities
    f = torch.tensor([1.4, 0.5], dtype=torch.float64)
    g = torch.tensor([1.2, 0.8], dtype=torch.float64)
    y = intensity_jitter(x, f, g)
    m = x.mean(dim=(1, 2), keepdim=True)
    expected = (f.float().view(2, 1, 1) * x + (1 - f.float().view(2, 1, 1)) * m) * g.float().view(2, 1, 1)
    torch.testing.assert_close(y, expected)
    assert y.max() > 200.0  # the reference clamps to 1 here (fino-spec §0.6); we must not


def test_rescale_and_window() -> None:
    x = torch.tensor([[[0.0, 0.1], [0.2, 0.4]], [[3.0, 3.0], [3.0, 3.0]]])
    torch.testing.assert_close(rescale_to_unit(x), torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]))
    torch.testing.assert_close(
        intensity_window(torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0]), 0.5, 0.4), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])
    )
