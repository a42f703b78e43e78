from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from metadino.data.images import IMAGE_SUFFIXES, load_image, load_image_bytes
from metadino.data.reading import ReadOptions, Tile
from metadino.errors import UserError


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_suffixes():
    assert set(IMAGE_SUFFIXES) == {
        ".png", ".jpg", ".jpeg", ".jp2", ".j2k", ".tif", ".tiff", ".dcm", ".dicom", ".npy", ".zarr",
    }


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
    with pytest.raises(UserError, match=r"stack\.npy holds a stack of 2 images.*data\.index_column"):
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


# --- Codecs (issue 12 item 2) ---------------------------------------------------------------------------


def _gradient(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    top = 255 if dtype is np.uint8 else 65535
    return (np.linspace(0, top, int(np.prod(shape))).reshape(shape)).astype(dtype)


@pytest.mark.parametrize("compression", ["lzw", "zstd", "deflate", "packbits"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_lossless_compressed_tiff_reads_exactly(tmp_path, compression, dtype):
    arr = _gradient((3, 40, 48), dtype)
    tifffile.imwrite(tmp_path / "c.tif", arr, photometric="minisblack", compression=compression, tile=(16, 16))
    assert tifffile.TiffFile(tmp_path / "c.tif").pages[0].compression.name.lower().startswith(compression[:3])
    expected = torch.from_numpy(arr.astype(np.float32) / np.iinfo(dtype).max)
    assert torch.equal(load_image(tmp_path / "c.tif"), expected)


def test_lossless_jpeg2000_tiff_reads_exactly(tmp_path):
    arr = _gradient((32, 40), np.uint16)
    tifffile.imwrite(tmp_path / "j2k.tif", arr, compression="jpeg2000", compressionargs={"level": 0})
    assert tifffile.TiffFile(tmp_path / "j2k.tif").pages[0].compression.name == "JPEG2000"
    assert torch.equal(load_image(tmp_path / "j2k.tif")[0], torch.from_numpy(arr.astype(np.float32) / 65535))


@pytest.mark.parametrize(("compression", "args"), [("jpeg", {"level": 90}), ("jpeg2000", {"level": 30})])
def test_lossy_compressed_tiff_reads_approximately(tmp_path, compression, args):
    arr = np.zeros((48, 64, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[:, 32:, 2] = 200, 50, 255
    tifffile.imwrite(tmp_path / "l.tif", arr, photometric="rgb", compression=compression, compressionargs=args)
    img = load_image(tmp_path / "l.tif")
    assert img.shape == (3, 48, 64)
    assert (img - torch.from_numpy(np.moveaxis(arr, -1, 0) / 255).float()).abs().mean().item() < 0.03


def test_missing_tiff_codec_is_named_not_called_corrupt(tmp_path, monkeypatch):
    """What tifffile raises when imagecodecs (or one of its codecs) is absent: a KeyError from its codec table,
    turned into a ValueError by TiffPage.decode."""
    tifffile.imwrite(tmp_path / "lzw.tif", _gradient((16, 16), np.uint8), compression="lzw")
    codecs = tifffile.TIFF.DECOMPRESSORS
    real = type(codecs).__getitem__

    def without_lzw(self, key):
        if key == 5:
            raise KeyError(f"{tifffile.COMPRESSION(key)!r} requires the 'imagecodecs' package")
        return real(self, key)

    monkeypatch.setattr(type(codecs), "__getitem__", without_lzw)
    monkeypatch.delitem(codecs._codecs, 5, raising=False)
    with pytest.raises(UserError, match=r"lzw\.tif uses the LZW codec.*pip install -U imagecodecs") as info:
        load_image(tmp_path / "lzw.tif")
    assert "corrupt" not in str(info.value)
    monkeypatch.undo()
    assert load_image(tmp_path / "lzw.tif").shape == (1, 16, 16)  # and with the codec back, it reads


def test_unknown_tiff_compression_is_named(tmp_path):
    """A compression tag value no codec knows (tifffile: 'n is not a known COMPRESSION')."""
    tifffile.imwrite(tmp_path / "odd.tif", _gradient((8, 8), np.uint8),
                     extratags=[], compression=None)
    data = bytearray((tmp_path / "odd.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "odd.tif") as tif:
        offset = tif.pages[0].tags["Compression"].valueoffset
    data[offset : offset + 2] = (60000).to_bytes(2, "little")
    (tmp_path / "odd.tif").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"odd\.tif uses .*codec.*imagecodecs"):
        load_image(tmp_path / "odd.tif")


@pytest.mark.parametrize("suffix", [".jp2", ".j2k"])
def test_jpeg2000_through_pillow(tmp_path, suffix):
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[..., 0], rgb[:, 16:, 1] = 255, 128
    Image.fromarray(rgb).save(tmp_path / f"a{suffix}", irreversible=False)  # reversible 5/3 wavelet: lossless
    img = load_image(tmp_path / f"a{suffix}")
    assert img.shape == (3, 24, 32) and torch.equal(img, torch.from_numpy(np.moveaxis(rgb, -1, 0) / 255).float())
    gray = _gradient((20, 30), np.uint16)
    Image.fromarray(gray).save(tmp_path / f"g{suffix}", irreversible=False)
    img = load_image(tmp_path / f"g{suffix}")
    assert img.shape == (1, 20, 30) and torch.equal(img[0], torch.from_numpy(gray.astype(np.float32) / 65535))


def test_pixel_limit_is_a_clear_refusal(tmp_path):
    from PIL import Image as PILImage

    _png(tmp_path / "big.png", np.zeros((40, 50), np.uint8))
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((40, 50), np.uint8), compression="zstd")
    np.save(tmp_path / "big.npy", np.zeros((40, 50), np.uint8))
    assert load_image(tmp_path / "big.png").shape == (1, 40, 50)
    assert PILImage.MAX_IMAGE_PIXELS == ReadOptions().max_pixels == 1_000_000_000
    # Pillow errors above 2x its limit and only warns between 1x and 2x: both are refused, and not as corrupt.
    for limit in (1500, 999):
        for name in ("big.png", "big.tif", "big.npy"):
            with pytest.raises(UserError, match=rf"big\.{name[-3:]} is larger than the pixel limit.*2,000 pixels"
                               r".*raise data\.read\.max_pixels") as info:
                load_image(tmp_path / name, ReadOptions(max_pixels=limit))
            assert "corrupt" not in str(info.value)
    for name in ("big.png", "big.tif", "big.npy"):
        assert load_image(tmp_path / name, ReadOptions(max_pixels=2000)).shape == (1, 40, 50)


def test_multi_series_tiff_reads_series_0_and_warns(tmp_path):
    first, second = _gradient((2, 16, 20), np.uint16), np.full((8, 8), 7, np.uint16)
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tw:
        tw.write(first, photometric="minisblack", metadata={"axes": "CYX"})
        tw.write(second, photometric="minisblack", metadata={"axes": "YX"})
    assert len(tifffile.TiffFile(tmp_path / "two.ome.tif").series) == 2
    with pytest.warns(UserWarning, match=r"two\.ome\.tif holds 2 image series; reading only the first"):
        img = load_image(tmp_path / "two.ome.tif")
    assert torch.equal(img, torch.from_numpy(first.astype(np.float32) / 65535))
    tifffile.imwrite(tmp_path / "one.tif", first, photometric="minisblack")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(tmp_path / "one.tif")  # one series: no warning


# ------------------------------------------------------------------------- bytes, URLs, stacks, tiles, no-data


def test_bytes_decode_by_name_or_by_signature(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    _png(tmp_path / "a.png", rgb)
    tifffile.imwrite(tmp_path / "b.tif", rgb[..., 0].astype(np.uint16) * 200, compression="zstd")
    np.save(tmp_path / "c.npy", rgb.astype(np.float32))
    for name in ("a.png", "b.tif", "c.npy"):
        data = (tmp_path / name).read_bytes()
        expected = load_image(tmp_path / name)
        assert torch.equal(load_image_bytes(data, name), expected)
        assert torch.equal(load_image_bytes(data, "row 4"), expected)  # no suffix: the file signature decides
    with pytest.raises(UserError, match=r"cannot read image row 7: its bytes are not PNG"):
        load_image_bytes(b"hello world", "row 7")
    with pytest.raises(UserError, match=r"cannot decode image x\.png"):
        load_image_bytes((tmp_path / "a.png").read_bytes()[:40], "x.png")


def test_fsspec_urls_read_like_files(tmp_path):
    import fsspec

    rgb = np.random.default_rng(1).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    _png(tmp_path / "a.png", rgb)
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/a.png", (tmp_path / "a.png").read_bytes())
    try:
        assert torch.equal(load_image("memory://bucket/a.png"), load_image(tmp_path / "a.png"))
        with pytest.raises(UserError, match=r"memory://bucket/missing\.png does not exist"):
            load_image("memory://bucket/missing.png")
        with pytest.raises(UserError, match=r"suffix '\.gif' is not supported"):
            load_image("memory://bucket/a.gif")
    finally:
        fs.rm("/bucket", recursive=True)


def test_npy_stack_items_are_memory_mapped(tmp_path, monkeypatch):
    stack = np.random.default_rng(2).integers(0, 255, (5, 6, 7, 3), dtype=np.uint8)  # MedMNIST: [N, H, W, C]
    np.save(tmp_path / "s.npy", stack)
    for i in range(5):
        assert torch.equal(load_image(tmp_path / "s.npy", index=i),
                           torch.from_numpy(np.moveaxis(stack[i], -1, 0).astype(np.float32) / 255))
    seen = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: seen.append(k.get("mmap_mode")) or real_load(*a, **k))
    load_image(tmp_path / "s.npy", index=2)
    assert seen == ["r"]
    with pytest.raises(UserError, match=r"s\.npy holds 5 images but the row asks for item 5; valid items are 0 to 4"):
        load_image(tmp_path / "s.npy", index=5)
    _png(tmp_path / "p.png", stack[0])
    with pytest.raises(UserError, match=r"p\.png: an item index .* applies to \.npy stacks and multi-frame DICOM"):
        load_image(tmp_path / "p.png", index=0)


def test_tiles_of_untiled_formats_are_crops(tmp_path):
    img = np.random.default_rng(3).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    _png(tmp_path / "a.png", img)
    np.save(tmp_path / "a.npy", np.moveaxis(img, -1, 0))
    full = load_image(tmp_path / "a.png")
    for name in ("a.png", "a.npy"):
        tile = load_image(tmp_path / name, tile=Tile(x=4, y=5, width=10, height=6))
        assert torch.equal(tile, full[:, 5:11, 4:14])
        with pytest.raises(UserError, match=rf"{name}: tile x=25, y=0, 10x6 lies outside the image of width 30"):
            load_image(tmp_path / name, tile=Tile(x=25, y=0, width=10, height=6))


def test_nodata_policies(tmp_path):
    first = [[1.0, np.nan, 2.0], [3.0, 5.0, 1.0], [2.0, 2.0, 2.0]]
    scene = np.array([first, np.full((3, 3), np.nan)], np.float32)
    np.save(tmp_path / "nan.npy", scene)
    with pytest.raises(UserError, match=r"nan\.npy has 10 no-data pixels \(NaN\) in channel\(s\) \[0, 1\].*"
                                        r"data\.read\.nodata to fill or mean"):
        load_image(tmp_path / "nan.npy")
    filled = load_image(tmp_path / "nan.npy", ReadOptions(nodata="fill", fill_value=-1.0))
    assert filled[0].tolist() == np.nan_to_num(np.array(first), nan=-1.0).tolist() and (filled[1] == -1).all()
    mean = load_image(tmp_path / "nan.npy", ReadOptions(nodata="mean", fill_value=0.5))
    assert mean[0].tolist() == np.nan_to_num(np.array(first), nan=18 / 8).tolist()
    assert (mean[1] == 0.5).all()  # a channel with no valid pixel: the fill value
    # An integer nodata value is compared on the raw pixels, before scaling (Sentinel-2 L1C: 0 = no data).
    raw = np.array([[0, 100], [300, 0]], np.uint16)
    tifffile.imwrite(tmp_path / "s2.tif", raw)
    with pytest.raises(UserError, match=r"s2\.tif has 2 no-data pixels \(NaN or 0\)"):
        load_image(tmp_path / "s2.tif", ReadOptions(nodata_value=0))
    out = load_image(tmp_path / "s2.tif", ReadOptions(nodata_value=0, nodata="mean"))
    assert torch.allclose(out, torch.tensor([[[200, 100], [300, 200]]]) / 65535)
    assert torch.equal(load_image(tmp_path / "s2.tif"), torch.from_numpy(raw[None] / 65535).float())  # default: none
