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
    channel_std,
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


def _hsv_d3b9de9(img: torch.Tensor) -> torch.Tensor:
    """rgb_to_hsv as it was at d3b9de9 (max/min with indices, 0/1-masked sector terms)."""
    r, g, b = img.unbind(dim=-3)
    maxc, minc = img.max(dim=-3).values, img.min(dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    return torch.stack((torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0), s, maxc), dim=-3)


def _rgb_d3b9de9(hsv: torch.Tensor) -> torch.Tensor:
    """hsv_to_rgb as it was at d3b9de9 (18 stacked candidates and a gather)."""
    h, s, v = hsv.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    sector = i.to(torch.int64) % 6
    p, q = (v * (1.0 - s)).clamp(0.0, 1.0), (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    cand = torch.stack((torch.stack((v, q, p, p, t, v), dim=-3), torch.stack((t, v, v, q, p, p), dim=-3),
                        torch.stack((p, p, t, v, v, q), dim=-3)), dim=-4)
    index = sector.unsqueeze(-3).unsqueeze(-3).expand(*cand.shape[:-3], 1, *cand.shape[-2:])
    return cand.gather(-3, index).squeeze(-3)


def _colour_cases() -> torch.Tensor:
    """Random pixels plus the edge cases: gray, ties between channels, primaries, 0 and 1, 16-bit steps."""
    x = torch.rand(3, 40, 50, generator=make_generator(5))
    x[:, 0, :10] = x[0, 0, :10]  # gray
    x[1, 1, :10] = x[0, 1, :10]  # r == g
    x[2, 2, :10] = x[1, 2, :10]  # g == b
    x[:, 3, :3] = torch.eye(3)
    x[:, 4, :4] = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    x[:, 5:10] = torch.round(x[:, 5:10] * 65535) / 65535
    return x


def test_hsv_ops_give_the_d3b9de9_values_bit_for_bit() -> None:
    x = _colour_cases()
    assert torch.equal(rgb_to_hsv(x), _hsv_d3b9de9(x))
    hsv = _hsv_d3b9de9(x)
    assert torch.equal(hsv_to_rgb(hsv), _rgb_d3b9de9(hsv))
    for factor in (-0.5, -0.1, -1e-7, 0.0, 0.03, 0.1, 0.5):
        h, s, v = hsv.unbind(dim=-3)
        old = _rgb_d3b9de9(torch.stack(((h + factor) % 1.0, s, v), dim=-3))
        assert torch.equal(adjust_hue(x, factor), old), factor
    batch = torch.stack((x, x.flip(-1)))  # [..., 3, H, W] inputs keep working
    assert torch.equal(hsv_to_rgb(rgb_to_hsv(batch)), _rgb_d3b9de9(_hsv_d3b9de9(batch)))


def test_blends_give_the_d3b9de9_values() -> None:
    x = _colour_cases()
    gray = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
    assert torch.equal(rgb_to_grayscale(x), gray)
    for f in (0.0, 0.6, 1.0, 1.4):
        assert torch.equal(adjust_brightness(x, f), (f * x + (1.0 - f) * torch.zeros_like(x)).clamp(0, 1))
        assert torch.equal(adjust_saturation(x, f), (f * x + (1.0 - f) * gray).clamp(0, 1))
        m = gray.mean(dim=(-3, -2, -1), keepdim=True)
        assert torch.equal(adjust_contrast(x, f), (f * x + (1.0 - f) * m).clamp(0, 1))


def test_channel_std_equals_the_dim_std() -> None:
    """The per-channel full reduction (and its fallback for faint or constant channels, mean/std > 30) gives
    the float32 value of std(dim=(-2, -1)) on image-like data, offsets up to 1e4 x std included."""
    g = make_generator(6)
    for trial in range(300):
        c, h, w = 1 + trial % 5, 7 + trial % 50, 5 + (3 * trial) % 60
        x = torch.rand(c, h, w, generator=g) * (10.0 ** (trial % 7 - 4)) + torch.rand(c, 1, 1, generator=g) * 3
        if trial % 4 == 0:
            x = torch.round(x.clamp(0, 1) * 65535) / 65535
        assert torch.equal(channel_std(x), x.std(dim=(-2, -1), keepdim=True, correction=0)), trial
    assert torch.equal(channel_std(torch.full((2, 5, 5), 0.3)), torch.zeros(2, 1, 1))
    assert torch.equal(self_normalize(torch.full((2, 5, 5), 0.3)), torch.zeros(2, 5, 5))
