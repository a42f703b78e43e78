from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from metadino.data.images import IMAGE_SUFFIXES, load_image
from metadino.errors import UserError


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_suffixes():
    assert set(IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"}


def test_grayscale_png(tmp_path):
    arr = np.array([[0, 255, 51], [102, 0, 255]], dtype=np.uint8)
    img = load_image(_png(tmp_path / "g.png", arr))
    assert img.dtype == torch.float32 and img.shape == (1, 2, 3)
    assert torch.allclose(img[0], torch.from_numpy(arr.astype(np.float32) / 255))
    assert img[0, 0, 1].item() == 1.0


def test_rgb_png_keeps_channel_order(tmp_path):
    arr = np.zeros((4, 5, 3), dtype=np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 255, 0, 51
    img = load_image(_png(tmp_path / "rgb.png", arr))
    assert img.shape == (3, 4, 5)
    assert img[0].eq(1.0).all() and img[1].eq(0.0).all() and torch.allclose(img[2], torch.tensor(0.2))


def test_rgba_la_and_palette_png(tmp_path):
    rgba = np.zeros((3, 3, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0] = (10, 20, 30, 0)
    img = load_image(_png(tmp_path / "rgba.png", rgba))
    assert img.shape == (4, 3, 3)
    assert img[3, 0, 0].item() == 0.0 and img[3, 1, 1].item() == 1.0
    assert torch.allclose(img[:3, 0, 0], torch.tensor([10, 20, 30]) / 255)

    la = np.stack([np.full((3, 3), 255, np.uint8), np.zeros((3, 3), np.uint8)], -1)
    img = load_image(_png(tmp_path / "la.png", la, mode="LA"))
    assert img.shape == (2, 3, 3) and img[0].eq(1).all() and img[1].eq(0).all()

    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    img = load_image(tmp_path / "p.png")
    assert img.shape == (3, 2, 4)
    assert img[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and img[:, 0, 1].tolist() == [0.0, 0.0, 1.0]


def test_jpeg_rgb_and_cmyk(tmp_path):
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[..., 1] = 200
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    img = load_image(tmp_path / "a.jpg")
    assert img.shape == (3, 16, 16)
    assert abs(img[1].mean().item() - 200 / 255) < 0.02 and img[0].mean().item() < 0.05

    Image.new("CMYK", (8, 6), (0, 0, 0, 0)).save(tmp_path / "c.jpeg")
    img = load_image(tmp_path / "c.jpeg")
    assert img.shape == (3, 6, 8) and img.min().item() > 0.9  # no ink = white


def test_16bit_png(tmp_path):
    arr = np.array([[0, 65535], [1000, 32768]], dtype=np.uint16)
    img = load_image(_png(tmp_path / "g16.png", arr))
    assert img.shape == (1, 2, 2)
    assert img[0, 0, 1].item() == 1.0
    assert img[0, 1, 0].item() == pytest.approx(1000 / 65535)


def _four_channel() -> np.ndarray:
    arr = np.zeros((4, 8, 10), dtype=np.uint16)
    for c in range(4):
        arr[c] = 1000 * (c + 1)
    arr[2, 3, 4] = 65535
    return arr


def test_tiff_uint16_channel_first_and_last_agree(tmp_path):
    arr = _four_channel()
    tifffile.imwrite(tmp_path / "cf.tif", arr, photometric="minisblack")
    tifffile.imwrite(tmp_path / "cl.tiff", np.moveaxis(arr, 0, -1), photometric="minisblack")
    first, last = load_image(tmp_path / "cf.tif"), load_image(tmp_path / "cl.tiff")
    assert first.shape == last.shape == (4, 8, 10)
    assert torch.equal(first, last)
    assert first[2, 3, 4].item() == 1.0
    assert [round(first[c, 0, 0].item() * 65535) for c in range(4)] == [1000, 2000, 3000, 4000]


def test_tiff_2d_and_float_not_clamped(tmp_path):
    tifffile.imwrite(tmp_path / "u8.tif", np.full((5, 6), 255, np.uint8))
    assert load_image(tmp_path / "u8.tif").shape == (1, 5, 6)
    data = np.array([[-2.5, 0.0], [1.5, 300.0]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data)
    img = load_image(tmp_path / "f.tif")
    assert img.shape == (1, 2, 2) and torch.equal(img[0], torch.from_numpy(data))


def test_npy_float_int_bool(tmp_path):
    data = np.random.default_rng(0).normal(0, 10, (3, 7, 9)).astype(np.float64)
    np.save(tmp_path / "f.npy", data)
    img = load_image(tmp_path / "f.npy")
    assert img.dtype == torch.float32 and img.shape == (3, 7, 9)
    assert torch.allclose(img, torch.from_numpy(data.astype(np.float32)))

    np.save(tmp_path / "hwc.npy", np.moveaxis(data, 0, -1))
    assert torch.equal(load_image(tmp_path / "hwc.npy"), img)

    np.save(tmp_path / "i16.npy", np.array([[32767, -32767]], dtype=np.int16))
    assert load_image(tmp_path / "i16.npy")[0, 0].tolist() == [1.0, -1.0]
    np.save(tmp_path / "b.npy", np.array([[True, False]]))
    assert load_image(tmp_path / "b.npy")[0, 0].tolist() == [1.0, 0.0]


def test_layout_rule_rejects_ambiguous_and_4d(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((8, 8, 8), np.float32))
    with pytest.raises(UserError, match=r"cube\.npy.*channel axis"):
        load_image(tmp_path / "cube.npy")
    np.save(tmp_path / "vol.npy", np.zeros((100, 128, 128), np.uint8))  # a z-stack, not channels
    with pytest.raises(UserError, match="channel axis"):
        load_image(tmp_path / "vol.npy")
    np.save(tmp_path / "stack.npy", np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(UserError, match=r"stack\.npy.*4-D"):
        load_image(tmp_path / "stack.npy")
    tifffile.imwrite(tmp_path / "t.tif", np.zeros((2, 3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(UserError, match=r"t\.tif.*4-D"):
        load_image(tmp_path / "t.tif")


def test_broken_files_raise_user_error_naming_the_path(tmp_path):
    good = _png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "text.tif").write_text("nor is this\n")
    (tmp_path / "text.npy").write_text("nor this\n")
    for name in ("truncated.png", "empty.png", "text.png", "text.tif", "text.npy"):
        with pytest.raises(UserError, match=rf"{name.replace('.', '[.]')}.*(corrupt|decode)"):
            load_image(tmp_path / name)
    with pytest.raises(UserError, match=r"missing\.png.*does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(UserError, match=r"x\.bmp.*suffix '\.bmp' is not supported"):
        load_image(tmp_path / "x.bmp")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match=r"obj\.npy"):
        load_image(tmp_path / "obj.npy")


def test_uppercase_suffix_and_str_path(tmp_path):
    path = _png(tmp_path / "UP.PNG", np.zeros((2, 2), np.uint8))
    assert load_image(str(path)).shape == (1, 2, 2)


@pytest.mark.parametrize(("orientation", "bright"), [(6, "top"), (8, "bottom"), (3, "right"), (1, "left")])
def test_exif_orientation_is_honoured(tmp_path, orientation, bright):
    """A JPEG stored sideways with an orientation tag is read as displayed (before: as stored)."""
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, :16] = 255  # stored: the left half is white
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "sideways.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    x = load_image(path)
    h, w = (32, 16) if orientation in (6, 8) else (16, 32)
    assert x.shape == (3, h, w)
    halves = {"top": x[:, : h // 2].mean() - x[:, h // 2 :].mean(), "bottom": x[:, h // 2 :].mean() - x[:, : h // 2].mean(),
              "left": x[:, :, : w // 2].mean() - x[:, :, w // 2 :].mean(),
              "right": x[:, :, w // 2 :].mean() - x[:, :, : w // 2].mean()}
    assert halves[bright] > 0.9
