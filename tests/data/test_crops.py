from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metadino.data.crops import Crops, MultiCropAugmentation, random_resized_crop_box, resize
from metadino.data.photometric import build_photometric
from metadino.data.seeding import make_generator


def _aug(c: int = 4, preset: str = "microscopy", **kw) -> MultiCropAugmentation:
    photometric = build_photometric(preset, in_chans=c)
    args = dict(global_size=32, local_size=16, n_local=3, photometric=photometric, patch_size=8)
    args.update(kw)
    return MultiCropAugmentation(**args)


def _img(c: int = 4, h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(c, h, w, generator=make_generator(seed))


def _same(a: Crops, b: Crops) -> bool:
    pairs = zip(a.global_crops + a.local_crops + a.masks, b.global_crops + b.local_crops + b.masks, strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def test_pure_function_of_seed_epoch_index() -> None:
    img = _img()
    a = _aug(mask_probability=1.0)(img, seed=1, epoch=2, index=3)
    b = _aug(mask_probability=1.0)(img, seed=1, epoch=2, index=3)  # a fresh object: no hidden state
    assert _same(a, b)
    others = ({"seed": 1, "epoch": 2, "index": 4}, {"seed": 1, "epoch": 3, "index": 3}, {"seed": 2, "epoch": 2, "index": 3})
    for other in others:
        c = _aug(mask_probability=1.0)(img, **other)
        assert not torch.equal(a.global_crops[0], c.global_crops[0])
        assert not torch.equal(a.local_crops[0], c.local_crops[0])
        assert not torch.equal(a.masks[0], c.masks[0])


def test_independent_of_call_order_and_global_rng() -> None:
    aug, img = _aug(), _img()
    first5 = aug(img, seed=0, epoch=0, index=5)
    first3 = aug(img, seed=0, epoch=0, index=3)
    torch.manual_seed(123)
    torch.rand(10)
    then3 = aug(img, seed=0, epoch=0, index=3)
    then5 = aug(img, seed=0, epoch=0, index=5)
    assert _same(first5, then5) and _same(first3, then3)


def test_crops_within_a_sample_differ() -> None:
    out = _aug(n_local=4)(_img(), seed=0, epoch=0, index=0)
    assert not torch.equal(out.global_crops[0], out.global_crops[1])
    assert len({tuple(c.flatten()[:8].tolist()) for c in out.local_crops}) == 4


@pytest.mark.parametrize("c, preset", [(1, "microscopy"), (3, "natural"), (4, "microscopy"), (7, "none")])
def test_shapes_for_any_channel_count(c: int, preset: str) -> None:
    aug = _aug(c, preset, n_local=5, patch_size=16, global_size=32)
    out = aug(_img(c, 50, 70), seed=0, epoch=0, index=0)
    assert [t.shape for t in out.global_crops] == [torch.Size([c, 32, 32])] * 2
    assert [t.shape for t in out.local_crops] == [torch.Size([c, 16, 16])] * 5
    assert [(m.shape, m.dtype) for m in out.masks] == [(torch.Size([4]), torch.bool)] * 2
    assert all(torch.isfinite(t).all() for t in out.global_crops + out.local_crops)


def test_images_smaller_than_the_crop_are_upsampled() -> None:
    out = _aug(3, "natural")(_img(3, 10, 7), seed=0, epoch=0, index=0)
    assert out.global_crops[0].shape == (3, 32, 32) and out.local_crops[0].shape == (3, 16, 16)


def test_zero_local_crops() -> None:
    out = _aug(n_local=0)(_img(), seed=0, epoch=0, index=0)
    assert out.local_crops == [] and len(out.global_crops) == 2


def test_mask_counts_are_exact() -> None:
    # grid 8x8 = 64 tokens at 64 px / patch 8; a fixed ratio makes the count int(N * r) exactly
    for r in (0.1, 0.3, 0.37, 0.5):
        aug = _aug(n_local=0, global_size=64, mask_probability=1.0, mask_ratio=(r, r))
        for i in range(5):
            for m in aug(_img(h=20, w=20), seed=0, epoch=0, index=i).masks:
                assert int(m.sum()) == int(64 * r)


def test_masked_share_and_ratio_range() -> None:
    aug = _aug(n_local=0, global_size=64, mask_probability=0.5)
    img = _img(h=8, w=8)
    counts = [int(m.sum()) for i in range(300) for m in aug(img, seed=0, epoch=0, index=i).masks]
    masked = [n for n in counts if n > 0]
    assert abs(len(masked) / len(counts) - 0.5) < 0.06
    assert min(masked) >= int(64 * 0.1) and max(masked) <= int(64 * 0.5)
    assert max(masked) - min(masked) >= 20  # ratios spread over the range
    none = _aug(n_local=0, mask_probability=0.0)
    assert all(not m.any() for m in none(img, seed=0, epoch=0, index=1).masks)


def test_masks_do_not_depend_on_photometric_or_local_crops() -> None:
    # separate random stream: changing the augmentation pipeline leaves the masks alone
    img = _img()
    a = _aug(n_local=0, mask_probability=1.0)(img, seed=0, epoch=0, index=9)
    b = _aug(4, "none", n_local=6, mask_probability=1.0)(img, seed=0, epoch=0, index=9)
    assert all(torch.equal(x, y) for x, y in zip(a.masks, b.masks, strict=True))


def test_flips() -> None:
    # scale (1, 1) on a square image always falls back to the whole image, so only flips change it
    img = _img(2, 32, 32)
    variants = {"id": img, "h": img.flip(-1), "v": img.flip(-2), "hv": img.flip(-1).flip(-2)}

    def seen(aug: MultiCropAugmentation) -> set[str]:
        out = set()
        for i in range(24):
            crop = aug(img, seed=0, epoch=0, index=i).global_crops[0]
            out |= {k for k, v in variants.items() if torch.equal(crop, v)}
        return out

    common = dict(n_local=0, global_scale=(1.0, 1.0))
    assert seen(_aug(2, "none", hflip=True, vflip=True, **common)) == {"id", "h", "v", "hv"}
    assert seen(_aug(2, "none", hflip=True, vflip=False, **common)) == {"id", "h"}
    assert seen(_aug(2, "none", hflip=False, vflip=False, **common)) == {"id"}


def test_random_resized_crop_box() -> None:
    g = make_generator(0)
    for _ in range(100):
        top, left, h, w = random_resized_crop_box(60, 80, (0.2, 0.6), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.15 <= h * w / 4800 <= 0.65
        assert 0.7 <= w / h <= 1.4
    # a 10x1000 strip cannot hold a crop of 90% area with ratio <= 4/3: center-crop fallback
    assert random_resized_crop_box(10, 1000, (0.9, 1.0), (3 / 4, 4 / 3), g) == (0, 493, 10, 13)
    assert random_resized_crop_box(1000, 10, (0.9, 1.0), (3 / 4, 4 / 3), g) == (493, 0, 13, 10)


def test_resize_antialiases_when_downsampling() -> None:
    # factor 3: plain bilinear samples exact pixels here and returns the 0/1 checkerboard unchanged
    checker = ((torch.arange(48)[:, None] + torch.arange(48)[None, :]) % 2).float()[None]
    small = resize(checker, (16, 16))
    # antialiased: the interior is near-flat gray (borders see the clamped edge)
    torch.testing.assert_close(small[:, 1:-1, 1:-1], torch.full((1, 14, 14), 0.5), atol=0.02, rtol=0)
    up = resize(torch.rand(2, 5, 5, generator=make_generator(0)), (12, 10))
    assert up.shape == (2, 12, 10)


def test_sizes_must_be_multiples_of_patch() -> None:
    with pytest.raises(ValueError, match="global_size"):
        _aug(global_size=30)
    with pytest.raises(ValueError, match="local_size"):
        _aug(local_size=12)
    with pytest.raises(ValueError, match="multiple"):
        _aug().eval_transform(_img(), 20)


def test_bad_images_raise() -> None:
    aug = _aug()
    with pytest.raises(ValueError, match="channels"):
        aug(_img(3), seed=0, epoch=0, index=0)
    with pytest.raises(ValueError, match="float"):
        aug(torch.zeros(4, 8, 8, dtype=torch.uint8), seed=0, epoch=0, index=0)


def test_eval_transform_resize_center_crop_normalize() -> None:
    img = _img(2, 40, 80)
    aug = _aug(2, "none", patch_size=8)
    out = aug.eval_transform(img, 32)
    ref = F.interpolate(img[None], size=(32, 64), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(out, ref[:, :, 16:48])
    assert torch.equal(out, aug.eval_transform(img, 32))
    micro = _aug(2, "microscopy").eval_transform(img * 255.0, 16)
    assert micro.shape == (2, 16, 16)
    torch.testing.assert_close(micro.mean(dim=(1, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    assert torch.equal(micro, _aug(2, "microscopy").eval_transform(img * 255.0, 16))
