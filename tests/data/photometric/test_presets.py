"""Photometric presets: registry, purity in the generator, per-preset rates and ranges, eval agreement."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import metadino.data.photometric.presets as ph
from metadino.data.crops import eval_view
from metadino.data.photometric import PHOTOMETRIC_PRESETS, build_photometric
from metadino.data.photometric.ops import rescale_to_unit, self_normalize
from metadino.data.photometric.presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MicroscopyPhotometric,
    NaturalPhotometric,
    Photometric,
    SatellitePhotometric,
    XRayPhotometric,
)
from metadino.data.seeding import make_generator


def test_presets_registry() -> None:
    assert set(PHOTOMETRIC_PRESETS) >= {"natural", "microscopy", "xray", "satellite", "none"}
    assert isinstance(build_photometric("xray", in_chans=1), XRayPhotometric)
    assert isinstance(build_photometric("satellite", in_chans=13), SatellitePhotometric)
    assert isinstance(build_photometric("natural", in_chans=3), NaturalPhotometric)
    assert isinstance(build_photometric("microscopy", in_chans=5), MicroscopyPhotometric)
    with pytest.raises(ValueError, match="unknown photometric preset"):
        build_photometric("xray-typo", in_chans=1)
    with pytest.raises(ValueError, match="3 channels"):
        build_photometric("natural", in_chans=4)
    with pytest.raises(ValueError):
        build_photometric("none", in_chans=2, mean=[0.5], std=[0.2])
    with pytest.raises(ValueError):
        build_photometric("none", in_chans=1, mean=[0.5])


def test_natural_defaults_to_imagenet_normalization() -> None:
    p = build_photometric("natural", in_chans=3)
    assert p.mean == IMAGENET_MEAN and p.std == IMAGENET_STD
    x = torch.rand(3, 4, 4, generator=make_generator(0))
    expected = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(p.normalize(x), expected)


def test_natural_is_pure_function_of_generator() -> None:
    p = build_photometric("natural", in_chans=3)
    x = torch.rand(3, 16, 16, generator=make_generator(0))
    a = p(x, make_generator(1), "global1")
    assert torch.equal(a, p(x, make_generator(1), "global1"))
    assert not torch.equal(a, p(x, make_generator(2), "global1"))
    with pytest.raises(ValueError, match="crop_kind"):
        p(x, make_generator(1), "global2")
    with pytest.raises(ValueError):
        p(torch.rand(4, 8, 8), make_generator(1), "local")


def test_natural_blur_and_solarize_rates(monkeypatch: pytest.MonkeyPatch) -> None:
    # Intended rates (the reference's blur rates are inverted, fino-spec §0.5).
    calls: list[str] = []
    monkeypatch.setattr(ph, "gaussian_blur", lambda img, k, s: (calls.append("blur"), img)[1])
    monkeypatch.setattr(ph, "solarize", lambda img, t: (calls.append("sol"), img)[1])
    p = build_photometric("natural", in_chans=3)
    x = torch.rand(3, 4, 4, generator=make_generator(0))
    n = 400
    rates = {}
    for kind in ("global0", "global1", "local"):
        for i in range(n):
            p(x, make_generator(i, 7), kind)
        rates[kind] = (calls.count("blur") / n, calls.count("sol") / n)
        calls.clear()
    assert rates["global0"] == (1.0, 0.0)
    assert abs(rates["global1"][0] - 0.1) < 0.05 and abs(rates["global1"][1] - 0.2) < 0.06
    assert abs(rates["local"][0] - 0.5) < 0.08 and rates["local"][1] == 0.0


def test_natural_output_range_before_normalization() -> None:
    p = NaturalPhotometric(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    x = torch.rand(3, 12, 12, generator=make_generator(5))
    for i in range(30):
        y = p(x, make_generator(i), "global1")
        assert y.min() >= 0.0 and y.max() <= 1.0


def test_microscopy_jitter_never_clamps(monkeypatch: pytest.MonkeyPatch) -> None:
    p = MicroscopyPhotometric(3, channel_drop_p=0.0)
    monkeypatch.setattr(p, "normalize", lambda t: t)  # look at the augmented values before normalization
    x = torch.rand(3, 8, 8, generator=make_generator(0)) * 10.0 + 100.0
    for i in range(10):
        y = p(x, make_generator(i), "local")
        assert y.min() > 1.0  # 0..255-like values survive: nothing is capped at 1


@pytest.mark.parametrize("c", [1, 4, 7])
def test_microscopy_output_is_self_normalized(c: int) -> None:
    p = build_photometric("microscopy", in_chans=c, mean=[0.1] * c, std=[9.0] * c)  # mean/std ignored
    x = torch.rand(c, 16, 16, generator=make_generator(c)) * 255.0
    for i in range(8):
        y = p(x, make_generator(i), "global0")
        for ch in range(c):
            if torch.all(y[ch] == 0):
                continue  # dropped channel
            assert abs(float(y[ch].mean())) < 1e-4
            assert abs(float(y[ch].std(correction=0)) - 1.0) < 1e-3


def test_microscopy_channel_dropout_rate() -> None:
    p = build_photometric("microscopy", in_chans=4)
    x = torch.rand(4, 4, 4, generator=make_generator(0)) + 0.1
    dropped = []
    for i in range(300):
        y = p(x, make_generator(i, 3), "local")
        zero = [bool(torch.all(y[ch] == 0)) for ch in range(4)]
        assert sum(zero) <= 1  # never more than one channel
        dropped.append(any(zero))
    assert abs(sum(dropped) / 300 - 0.2) < 0.07
    single = build_photometric("microscopy", in_chans=1)
    x1 = torch.rand(1, 4, 4, generator=make_generator(0)) + 0.1
    assert all(not torch.all(single(x1, make_generator(i), "local") == 0) for i in range(50))


def test_none_preset() -> None:
    x = torch.rand(2, 4, 4, generator=make_generator(0))
    assert torch.equal(build_photometric("none", in_chans=2)(x, make_generator(0), "local"), x)
    p = build_photometric("none", in_chans=2, mean=[0.5, 0.25], std=[0.5, 2.0])
    expected = (x - torch.tensor([0.5, 0.25]).view(2, 1, 1)) / torch.tensor([0.5, 2.0]).view(2, 1, 1)
    torch.testing.assert_close(p(x, make_generator(0), "global0"), expected)
    assert type(p) is Photometric


# ---------------------------------------------------------------------------------- xray and satellite


@pytest.mark.parametrize("preset, c", [("xray", 1), ("xray", 3), ("satellite", 4), ("satellite", 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_new_presets_are_pure_functions_of_the_generator(preset: str, c: int, dtype: torch.dtype) -> None:
    p = build_photometric(preset, in_chans=c)
    x = torch.rand(c, 12, 12, generator=make_generator(c), dtype=dtype)
    for kind in ("global0", "global1", "local"):
        a = p(x, make_generator(1), kind)
        assert a.shape == x.shape and a.dtype == dtype and torch.isfinite(a).all()
        assert torch.equal(a, p(x, make_generator(1), kind))
        assert not torch.equal(a, p(x, make_generator(2), kind))


def test_xray_never_mixes_channels_and_treats_them_alike() -> None:
    p = build_photometric("xray", in_chans=3)
    x = torch.rand(3, 16, 16, generator=make_generator(0))
    y = x.clone()
    y[1:] = torch.rand(2, 16, 16, generator=make_generator(1))  # other content in channels 1, 2
    same = x[:1].expand(3, 16, 16).clone()
    for i in range(20):
        for kind in ("global0", "local"):
            a = p(x, make_generator(i), kind)
            torch.testing.assert_close(p(y, make_generator(i), kind)[0], a[0], rtol=0, atol=0)
            out = p(same, make_generator(i), kind)  # identical channels stay identical: one draw for all
            assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_xray_keeps_the_intensity_order_without_blur() -> None:
    # windowing, gamma, standardisation and contrast are non-decreasing maps: no inversion, no colour op
    p = XRayPhotometric(1, blur_p=0.0)
    x = torch.rand(1, 10, 10, generator=make_generator(3))
    order = x.flatten().argsort()
    changed = 0
    for i in range(30):
        y = p(x, make_generator(i), "global1").flatten()[order]
        assert (y[1:] - y[:-1] >= -1e-5).all()
        changed += not torch.allclose(y, p.normalize(x).flatten()[order], atol=1e-3)
    assert changed >= 25  # the random ops do act


def test_xray_window_and_gamma_ranges() -> None:
    p = XRayPhotometric(1, mean=[0.0], std=[1.0], blur_p=0.0, contrast=0.0, brightness=0.0)
    x = torch.linspace(0, 1, 101).view(1, 1, 101)
    clipped = []
    for i in range(200):
        y = p(x, make_generator(i), "local")
        assert y.min() >= 0.0 and y.max() <= 1.0  # window + gamma stay in [0, 1] before standardisation
        clipped.append(bool((y == 0).sum() > 1 or (y == 1).sum() > 1))
    assert abs(sum(clipped) / 200 - 0.8) < 0.08  # the window is applied with p=0.8 (and always clips here)


def test_xray_normalisation_train_and_eval_agree() -> None:
    x12 = torch.rand(1, 16, 16, generator=make_generator(0)) * (4095 / 65535)  # 12-bit data in a 16-bit file
    x = x12 / (4095 / 65535)
    p = build_photometric("xray", in_chans=1, mean=[0.5], std=[0.25])
    expected = (rescale_to_unit(x) - 0.5) / 0.25
    torch.testing.assert_close(p.normalize(x12), expected)
    torch.testing.assert_close(p.normalize(x), expected)
    off = XRayPhotometric(1, [0.5], [0.25], window_p=0.0, gamma=(1.0, 1.0), blur_p=0.0, contrast=0.0, brightness=0.0)
    torch.testing.assert_close(off(x12, make_generator(0), "local"), expected)  # random ops off = eval view
    selfnorm = build_photometric("xray", in_chans=1).normalize(x12)
    torch.testing.assert_close(selfnorm, self_normalize(x), atol=1e-4, rtol=0)


def test_satellite_geometry_is_exact_and_covers_all_rotations() -> None:
    c = 3
    x = torch.rand(c, 8, 8, generator=make_generator(0))
    off = dict(mean=[0.0] * c, std=[1.0] * c, contrast=0.0, brightness=0.0)  # photometric jitter off
    rotations = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    rotate_only = SatellitePhotometric(c, flip=False, **off)
    seen: Counter[int] = Counter()
    for i in range(200):
        y = rotate_only(x, make_generator(i), "local")
        hits = [k for k, r in enumerate(rotations) if torch.equal(y, r)]
        assert len(hits) == 1  # a bit-exact quarter turn of the input
        seen[hits[0]] += 1
    assert all(seen[k] > 30 for k in range(4))  # all 4 rotations, about equally often
    # with the flips: all 8 symmetries of the square, each an exact rot90 + flip of the input
    symmetries = {tuple(f(r).flatten().tolist()) for r in rotations for f in (lambda t: t, lambda t: t.flip(-1))}
    both = SatellitePhotometric(c, **off)
    outputs = {tuple(both(x, make_generator(i), "global1").flatten().tolist()) for i in range(200)}
    assert len(symmetries) == 8 and outputs == symmetries
    non_square = both(torch.rand(c, 4, 6, generator=make_generator(1)), make_generator(1), "local")
    assert non_square.shape == (c, 4, 6)
    still = SatellitePhotometric(c, rotate=False, flip=False, **off)
    assert torch.equal(still(x, make_generator(3), "global0"), x)


def test_satellite_jitter_is_per_band_affine_after_standardisation() -> None:
    c = 5
    x = torch.rand(c, 10, 10, generator=make_generator(0), dtype=torch.float64) * 1000.0
    p = SatellitePhotometric(c, rotate=False, flip=False)
    z = self_normalize(x)
    slopes = []
    for i in range(20):
        y = p(x, make_generator(i), "global0")
        for b in range(c):  # y_b = s_b * z_b + o_b, no band mixing
            s = float(((y[b] - y[b].mean()) * z[b]).mean() / (z[b] ** 2).mean())
            o = float(y[b].mean() - s * z[b].mean())
            torch.testing.assert_close(y[b], s * z[b] + o)
            assert 0.8 <= s <= 1.2 and -0.2 <= o <= 0.2
            slopes.append(s)
        assert len({round(float(y[b].std()), 6) for b in range(c)}) > 1  # bands get their own factors
    assert max(slopes) - min(slopes) > 0.3


@pytest.mark.parametrize("preset, c", [("xray", 1), ("satellite", 4), ("microscopy", 2), ("natural", 3)])
def test_eval_view_has_no_random_op(preset: str, c: int) -> None:
    p = build_photometric(preset, in_chans=c)
    x = torch.rand(c, 30, 40, generator=make_generator(0))
    a = eval_view(x, 16, p)
    torch.manual_seed(1)
    torch.rand(5)
    assert torch.equal(a, eval_view(x, 16, p)) and torch.equal(a, eval_view(x, 16, build_photometric(preset, in_chans=c)))
    center = F.interpolate(x[None], size=(16, 21), mode="bilinear", align_corners=False, antialias=True)[0][:, :, 2:18]
    torch.testing.assert_close(a, p.normalize(center))
