from __future__ import annotations

import pytest
import torch

from metadino.data.crops import (
    Crops,
    MultiCropAugmentation,
    label_guided_crop_box,
    random_crop_size,
    random_resized_crop_box,
    resize,
)
from metadino.data.photometric import build_photometric
from metadino.data.regions import Region
from metadino.data.seeding import draw_int, draw_uniform, make_generator


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


def test_bad_images_raise() -> None:
    aug = _aug()
    with pytest.raises(ValueError, match="channels"):
        aug(_img(3), seed=0, epoch=0, index=0)
    with pytest.raises(ValueError, match="float"):
        aug(torch.zeros(4, 8, 8, dtype=torch.uint8), seed=0, epoch=0, index=0)


# ------------------------------------------------------------------------------ label-guided crops (DINO-LG)


def _contains(box: tuple[int, int, int, int], x0: float, y0: float, x1: float, y1: float) -> bool:
    top, left, h, w = box
    return left <= x0 and x1 <= left + w and top <= y0 and y1 <= top + h


def _contains_point(box: tuple[int, int, int, int], x: float, y: float) -> bool:
    top, left, h, w = box
    return left <= x < left + w and top <= y < top + h


def test_guided_box_contains_the_region_centre_and_the_whole_region_when_it_fits() -> None:
    g = make_generator(0)
    fits = larger = 0
    for i in range(400):
        H, W = draw_int(g, 20, 90), draw_int(g, 20, 90)
        x0, y0 = draw_uniform(g, 0, W - 1), draw_uniform(g, 0, H - 1)
        region = Region(x0, y0, draw_uniform(g, x0 + 0.3, W), draw_uniform(g, y0 + 0.3, H))
        scale = (0.02, 0.3) if i % 2 else (0.3, 1.0)
        box = label_guided_crop_box(H, W, scale, (3 / 4, 4 / 3), region, make_generator(i))
        top, left, h, w = box
        assert 0 <= top and top + h <= H and 0 <= left and left + w <= W  # inside the image
        assert _contains_point(box, *region.center)
        pixels = (int(x0), int(region.y0), -(-region.x1 // 1), -(-region.y1 // 1))  # pixels the region touches
        if pixels[2] - pixels[0] <= w and pixels[3] - pixels[1] <= h:
            assert _contains(box, region.x0, region.y0, region.x1, region.y1)
            fits += 1
        else:
            larger += 1
    assert fits > 50 and larger > 50  # both cases exercised


def test_guided_box_is_centred_on_the_anchor_with_the_usual_size() -> None:
    # a small box in the middle of a large image: no constraint binds, so the crop is centred on the anchor
    region = Region(95.0, 100.0, 105.0, 104.0)
    for i in range(50):
        top, left, h, w = label_guided_crop_box(200, 200, (0.01, 0.02), (3 / 4, 4 / 3), region, make_generator(i))
        g = make_generator(i)
        h0, w0, drawn = random_crop_size(200, 200, (0.01, 0.02), (3 / 4, 4 / 3), g)
        (px, py), _ = region.anchor(g)
        assert drawn and (h, w) == (h0, w0)  # the size an ordinary crop draws from the same stream
        assert abs(left + w / 2 - px) <= 0.5 and abs(top + h / 2 - py) <= 0.5


def test_guided_box_on_a_mask_contains_a_mask_pixel_and_the_mask_when_it_fits() -> None:
    mask = torch.zeros(60, 80, dtype=torch.bool)
    mask[10:14, 60:63] = True  # small blob: fits in every crop below
    mask[50, 5] = True  # far pixel: the mask's box spans most of the image
    small = Region.from_mask(mask[:, 40:].contiguous())
    large = Region.from_mask(mask)
    for i in range(100):
        box = label_guided_crop_box(60, 40, (0.05, 0.1), (3 / 4, 4 / 3), small, make_generator(i))
        assert _contains(box, small.x0, small.y0, small.x1, small.y1)
        g = make_generator(i)
        box = label_guided_crop_box(60, 80, (0.05, 0.1), (3 / 4, 4 / 3), large, g)
        top, left, h, w = box
        assert mask[top : top + h, left : left + w].any()  # the crop shows region pixels


def _guided_aug(share: float, n_local: int = 4, **kw) -> MultiCropAugmentation:
    args = dict(hflip=False, local_scale=(0.05, 0.2), label_guided_share=share)
    args.update(kw)
    return _aug(2, "none", n_local=n_local, **args)


def _expected_local(img: torch.Tensor, aug: MultiCropAugmentation, region: Region | None, crop_id: int, **keys) -> torch.Tensor:
    g = make_generator(keys["seed"], keys["epoch"], keys["index"], crop_id)
    H, W = img.shape[1:]
    if region is None:
        top, left, h, w = random_resized_crop_box(H, W, aug.local_scale, aug.ratio, g)
    else:
        top, left, h, w = label_guided_crop_box(H, W, aug.local_scale, aug.ratio, region, g)
    return resize(img[:, top : top + h, left : left + w], (aug.local_size, aug.local_size))


def test_share_zero_is_bit_identical_to_ordinary_crops() -> None:
    img, region = _img(2, 64, 72), Region(30.0, 20.0, 40.0, 28.0)
    plain = _aug(2, "none", n_local=4, hflip=False, local_scale=(0.05, 0.2))
    for i in range(5):
        keys = dict(seed=3, epoch=1, index=i)
        ref = plain(img, **keys)
        assert _same(_guided_aug(0.0)(img, region=region, **keys), ref)
        assert _same(_guided_aug(1.0)(img, region=None, **keys), ref)  # rows without a region fall back


def test_share_one_guides_every_local_crop_and_leaves_global_crops_alone() -> None:
    img, region = _img(2, 64, 72), Region(50.0, 5.0, 58.0, 11.0)
    aug, plain = _guided_aug(1.0, mask_probability=1.0), _guided_aug(0.0, mask_probability=1.0)
    for i in range(6):
        keys = dict(seed=0, epoch=2, index=i)
        out, ref = aug(img, region=region, **keys), plain(img, **keys)
        assert all(torch.equal(a, b) for a, b in zip(out.global_crops + out.masks, ref.global_crops + ref.masks))
        for j, crop in enumerate(out.local_crops):
            torch.testing.assert_close(crop, _expected_local(img, aug, region, 2 + j, **keys), rtol=0, atol=0)
            assert not torch.equal(crop, ref.local_crops[j])


def test_guided_crops_contain_the_region_end_to_end() -> None:
    # the image is 1 on the region and 0 elsewhere: every guided crop holds the region and shows it
    img = torch.zeros(1, 80, 96)
    img[0, 30:36, 60:68] = 1.0
    region = Region(60.0, 30.0, 68.0, 36.0)
    aug = _aug(1, "none", n_local=3, hflip=False, local_scale=(0.1, 0.3), label_guided_share=1.0, patch_size=4,
               global_size=32, local_size=16)
    for i in range(20):
        for j, crop in enumerate(aug(img, seed=0, epoch=0, index=i, region=region).local_crops):
            box = label_guided_crop_box(80, 96, aug.local_scale, aug.ratio, region, make_generator(0, 0, i, 2 + j))
            assert _contains(box, 60, 30, 68, 36)
            assert crop.max() > 0.2


def test_share_is_respected_with_stochastic_rounding() -> None:
    img, region = _img(2, 64, 72), Region(30.0, 20.0, 40.0, 28.0)
    aug = _guided_aug(0.4, n_local=3)  # 1.2 guided crops per sample on average
    counts = []
    for i in range(200):
        keys = dict(seed=0, epoch=0, index=i)
        n = aug.n_guided(**keys)
        assert n in (1, 2) and n == aug.n_guided(**keys)
        counts.append(n)
        if i < 8:  # the guided crops are the first n local crops
            out = aug(img, region=region, **keys)
            for j, crop in enumerate(out.local_crops):
                expected = _expected_local(img, aug, region if j < n else None, 2 + j, **keys)
                torch.testing.assert_close(crop, expected, rtol=0, atol=0)
    assert abs(sum(counts) / 200 - 1.2) < 0.1
    assert _guided_aug(0.5, n_local=4).n_guided(seed=0, epoch=0, index=0) == 2
    assert _guided_aug(1.0, n_local=0).uses_regions is False


def test_guided_crops_are_a_pure_function_of_the_keys() -> None:
    img = _img(2, 64, 72)
    mask = torch.zeros(64, 72, dtype=torch.bool)
    mask[40:50, 3:9] = True
    mask[10, 60] = True
    region = Region.from_mask(mask)
    a = _guided_aug(0.7, n_local=5)(img, seed=1, epoch=0, index=4, region=region)
    torch.manual_seed(5)
    b = _guided_aug(0.7, n_local=5)(img, seed=1, epoch=0, index=4, region=Region.from_mask(mask.clone()))
    assert _same(a, b)
    c = _guided_aug(0.7, n_local=5)(img, seed=1, epoch=1, index=4, region=region)
    assert not torch.equal(a.local_crops[0], c.local_crops[0])
    with pytest.raises(ValueError, match="label_guided_share"):
        _guided_aug(1.5)
