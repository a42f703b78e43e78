"""metadino.data.tiff: series, levels, planes, axes, tiles (decoding only the tiles under them), size and errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from metadino.data.reading import ReadOptions, Tile
from metadino.data.tiff import read_tiff, tiff_size
from metadino.errors import UserError

SLIDE = 4096  # the tiled pyramid's level-0 side: 256 tiles of 256 x 256
ZSTD = 50000  # tifffile.COMPRESSION.ZSTD


def _ramp(shape: tuple[int, ...], dtype: type = np.uint16) -> np.ndarray:
    """Distinct values everywhere (within the dtype), so that any misplaced pixel shows."""
    return (np.arange(int(np.prod(shape))) % np.iinfo(dtype).max).astype(dtype).reshape(shape)


def _slide_pixels() -> np.ndarray:
    """A gradient with random low bits: compresses to a few MB, and no shift of it equals itself."""
    y, x = np.mgrid[:SLIDE, :SLIDE]
    noise = np.random.default_rng(0).integers(0, 8, (SLIDE, SLIDE))
    return ((y // 16 + x // 16) * 8 % 256 ^ noise).astype(np.uint8)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 4096² ZSTD-tiled pyramid in SubIFDs (levels 4096², 2048², 1024²), as whole-slide scanners write them."""
    pixels = _slide_pixels()
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(pixels, tile=(256, 256), compression="zstd", subifds=2, photometric="minisblack")
        for step in (2, 4):
            tw.write(pixels[::step, ::step], tile=(256, 256), compression="zstd", subfiletype=1,
                     photometric="minisblack")
    return path, pixels


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the ZSTD tile decodes tifffile makes (one entry per decoded tile or strip)."""
    codecs = tifffile.TIFF.DECOMPRESSORS
    real = type(codecs).__getitem__
    calls: list[int] = []

    def counting(self: object, key: int) -> object:
        decode = real(self, key)
        if key != ZSTD or getattr(self, "_encode", False):  # COMPRESSORS share the class: not the encodes
            return decode

        def counted(*args: object, **kwargs: object) -> object:
            calls.append(1)
            return decode(*args, **kwargs)

        return counted

    monkeypatch.setattr(type(codecs), "__getitem__", counting)
    monkeypatch.delitem(codecs._codecs, ZSTD, raising=False)  # its cache would bypass __getitem__
    return calls


# --- axes and layout ---------------------------------------------------------------------------------------------


def test_2d_and_rgb_and_channel_first_read_exactly_in_file_dtype(tmp_path):
    gray, rgb, cyx = _ramp((5, 6), np.uint8), _ramp((4, 5, 3), np.uint8), _ramp((3, 8, 9))
    tifffile.imwrite(tmp_path / "g.tif", gray)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "cyx.tif", cyx, photometric="minisblack")
    out = read_tiff(tmp_path / "g.tif")
    assert out.dtype == np.uint8 and np.array_equal(out, gray[None])
    assert np.array_equal(read_tiff(tmp_path / "rgb.tif"), np.moveaxis(rgb, -1, 0))  # YXS: samples are channels
    out = read_tiff(tmp_path / "cyx.tif")
    assert out.dtype == np.uint16 and np.array_equal(out, cyx)


def test_unlabelled_page_stack_follows_the_layout_rule(tmp_path):
    """tifffile labels a minisblack [H, W, C] array "QYX" (H pages of W x C): the channels_first rule decides."""
    hwc = _ramp((20, 30, 3))
    tifffile.imwrite(tmp_path / "hwc.tif", hwc, photometric="minisblack")
    assert tifffile.TiffFile(tmp_path / "hwc.tif").series[0].axes == "QYX"
    assert np.array_equal(read_tiff(tmp_path / "hwc.tif"), np.moveaxis(hwc, -1, 0))
    assert tiff_size(tmp_path / "hwc.tif", ReadOptions()) == (20, 30)
    tifffile.imwrite(tmp_path / "q4.tif", np.zeros((2, 3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(UserError, match=r"q4\.tif has 4-D data"):
        read_tiff(tmp_path / "q4.tif")
    tifffile.imwrite(tmp_path / "cube.tif", np.zeros((16, 16, 16), np.uint8), photometric="minisblack")
    with pytest.raises(UserError, match=r"cube\.tif has shape \(16, 16, 16\) and its channel axis cannot"):
        read_tiff(tmp_path / "cube.tif")


@pytest.fixture
def stack(tmp_path: Path) -> tuple[Path, np.ndarray]:
    data = _ramp((2, 5, 3, 8, 9))
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "TZCYX"})
    assert tifffile.TiffFile(path).series[0].axes == "TZCYX"
    return path, data


def test_z_and_t_planes_are_chosen(stack):
    path, data = stack
    out = read_tiff(path, ReadOptions(z=3, t=1))
    assert out.dtype == np.uint16 and np.array_equal(out, data[1, 3])
    assert np.array_equal(read_tiff(path, ReadOptions(z=0, t=0)), data[0, 0])
    tile = read_tiff(path, ReadOptions(z=4, t=1), Tile(x=2, y=3, width=4, height=5))
    assert np.array_equal(tile, data[1, 4, :, 3:8, 2:6])


def test_unchosen_or_out_of_range_planes_are_refused(stack):
    path, _ = stack
    with pytest.raises(UserError, match=r"stack\.ome\.tif holds 5 Z planes; choose one with data\.read\.z"):
        read_tiff(path, ReadOptions(t=0))
    with pytest.raises(UserError, match=r"stack\.ome\.tif holds 2 time points; choose one with data\.read\.t"):
        read_tiff(path, ReadOptions(z=0))
    with pytest.raises(UserError, match=r"holds 5 Z planes \(0 to 4\) but data\.read\.z is 5"):
        read_tiff(path, ReadOptions(z=5, t=0))
    with pytest.raises(UserError, match=r"holds 2 time points \(0 to 1\) but data\.read\.t is -1"):
        read_tiff(path, ReadOptions(z=0, t=-1))
    assert tiff_size(path, ReadOptions()) == (8, 9)  # the size needs no plane


def test_a_plane_read_decodes_only_that_plane(tmp_path, decodes):
    data = _ramp((6, 32, 32))
    path = tmp_path / "z.ome.tif"
    tifffile.imwrite(path, data, photometric="minisblack", compression="zstd", metadata={"axes": "ZYX"})
    assert np.array_equal(read_tiff(path, ReadOptions(z=4)), data[4:5])
    assert len(decodes) == 1  # one page (one strip) of six


def test_length_one_axes_are_dropped(tmp_path):
    data = _ramp((1, 2, 1, 6, 7))
    path = tmp_path / "one.ome.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "TCZYX"})
    assert np.array_equal(read_tiff(path), data[0, :, 0])


def test_channels_and_samples_merge(tmp_path):
    """An OME-TIFF of two RGB channels: C x S channels, C-major."""
    data = _ramp((2, 6, 7, 3), np.uint8)
    path = tmp_path / "crgb.ome.tif"
    tifffile.imwrite(path, data, photometric="rgb", metadata={"axes": "CYXS"})
    assert tifffile.TiffFile(path).series[0].axes == "CYXS"
    expected = np.moveaxis(data, -1, 1).reshape(6, 6, 7)
    assert np.array_equal(read_tiff(path), expected)
    assert np.array_equal(read_tiff(path, tile=Tile(x=1, y=2, width=3, height=4)), expected[:, 2:6, 1:4])


# --- series ------------------------------------------------------------------------------------------------------


@pytest.fixture
def two_series(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    first, second = _ramp((2, 16, 20)), np.full((8, 8), 7, np.uint16)
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(first, photometric="minisblack", metadata={"axes": "CYX"})
        tw.write(second, photometric="minisblack", metadata={"axes": "YX"})
    return path, first, second


def test_series_is_chosen_and_the_count_warned(two_series):
    path, first, second = two_series
    with pytest.warns(UserWarning, match=r"two\.ome\.tif holds 2 image series; reading only the first"):
        assert np.array_equal(read_tiff(path), first)
    with pytest.warns(UserWarning, match=r"two\.ome\.tif holds 2 image series; reading only series 1 \(shape"):
        assert np.array_equal(read_tiff(path, ReadOptions(series=1)), second[None])
    with pytest.warns(UserWarning, match=r"reading only the first"):
        assert np.array_equal(read_tiff(path, tile=Tile(x=3, y=2, width=5, height=4)), first[:, 2:6, 3:8])
    with pytest.raises(UserError, match=r"two\.ome\.tif holds 2 image series \(0 to 1\) but data\.read\.series is 2"):
        read_tiff(path, ReadOptions(series=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the size probe does not warn
        assert tiff_size(path, ReadOptions(series=1)) == (8, 8)
        assert tiff_size(path, ReadOptions()) == (16, 20)


def test_one_series_does_not_warn(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", _ramp((4, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_tiff(tmp_path / "one.tif")


# --- pyramid levels and tiles ------------------------------------------------------------------------------------


def test_levels_read_exactly_and_out_of_range_is_refused(slide):
    path, pixels = slide
    assert np.array_equal(read_tiff(path, ReadOptions(level=2)), pixels[None, ::4, ::4])
    assert tiff_size(path, ReadOptions(level=1)) == (2048, 2048)
    assert tiff_size(path, ReadOptions()) == (SLIDE, SLIDE)
    with pytest.raises(UserError, match=r"slide\.tif has 3 resolution levels \(0 to 2\) but level 3 was asked"):
        read_tiff(path, ReadOptions(level=3))
    with pytest.raises(UserError, match=r"has 3 resolution levels"):
        tiff_size(path, ReadOptions(level=3))


def test_ome_pyramid_level(tmp_path):
    data = _ramp((2, 64, 96))
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, tile=(32, 32), subifds=1, photometric="minisblack", metadata={"axes": "CYX"})
        tw.write(data[:, ::2, ::2], tile=(32, 32), subfiletype=1, photometric="minisblack")
    assert np.array_equal(read_tiff(path, ReadOptions(level=1)), data[:, ::2, ::2])
    # a tile of level 1: x/y in level-0 pixels (x=20 -> 10 at level 1), size in level-1 pixels
    tile = read_tiff(path, tile=Tile(x=20, y=6, width=16, height=8, level=1))
    assert np.array_equal(tile, data[:, ::2, ::2][:, 3:11, 10:26])


def test_tile_equals_the_slice_and_decodes_only_its_tiles(slide, decodes):
    path, pixels = slide
    out = read_tiff(path, tile=Tile(x=512, y=768, width=256, height=256))
    assert out.dtype == np.uint8 and np.array_equal(out, pixels[None, 768:1024, 512:768])
    assert len(decodes) == 1  # one 256² tile of 256
    decodes.clear()
    out = read_tiff(path, tile=Tile(x=1000, y=3000, width=300, height=200))
    assert np.array_equal(out, pixels[None, 3000:3200, 1000:1300])
    assert len(decodes) == 6  # the region straddles 2 x 3 tiles
    decodes.clear()
    assert np.array_equal(read_tiff(path), pixels[None])
    assert len(decodes) == (SLIDE // 256) ** 2  # and the hook does see a full read decode every tile


def test_tile_of_a_lower_level(slide, decodes):
    path, pixels = slide
    # level 2 (1024²): level-0 x=2000, y=404 -> 500, 101; 64 x 32 level-2 pixels
    out = read_tiff(path, ReadOptions(level=2), Tile(x=2000, y=404, width=64, height=32))
    assert np.array_equal(out, pixels[::4, ::4][None, 101:133, 500:564])
    assert len(decodes) == 2
    # the tile's own level wins over data.read.level
    out = read_tiff(path, ReadOptions(level=2), Tile(x=4094, y=4094, width=1, height=1, level=1))
    assert np.array_equal(out, pixels[None, 4094:4095:2, 4094:4095:2])


def test_tile_outside_the_image_is_refused(slide):
    path, _ = slide
    for tile in (Tile(x=4000, y=0, width=256, height=256), Tile(x=0, y=-1, width=8, height=8),
                 Tile(x=0, y=3800, width=8, height=200, level=1), Tile(x=0, y=0, width=0, height=8)):
        with pytest.raises(UserError, match=r"tile at x=-?\d+, y=-?\d+ .* extends outside TIFF .*slide\.tif, which "
                                            r"is \d+ x \d+ pixels at that level \(4096 x 4096 at level 0\)"):
            read_tiff(path, tile=tile)
    assert read_tiff(path, tile=Tile(x=3840, y=3840, width=256, height=256)).shape == (1, 256, 256)  # the corner


def test_pixel_limit_counts_the_area_read(slide):
    path, pixels = slide
    small = ReadOptions(max_pixels=100_000)
    with pytest.raises(UserError, match=r"slide\.tif is larger than the pixel limit: 4096 x 4096 = 16,777,216 "
                                        r"pixels, more than 100,000"):
        read_tiff(path, small)
    assert read_tiff(path, ReadOptions(level=2, max_pixels=2**20)).shape == (1, 1024, 1024)
    tile = Tile(x=0, y=0, width=256, height=256)
    assert np.array_equal(read_tiff(path, small, tile), pixels[None, :256, :256])  # a tile under the limit reads
    with pytest.raises(UserError, match=r"512 x 256 = 131,072 pixels, more than 100,000"):
        read_tiff(path, small, Tile(x=0, y=0, width=512, height=256))


def test_size_decodes_nothing(slide, decodes):
    path, _ = slide
    assert tiff_size(path, ReadOptions(level=2)) == (1024, 1024)
    assert decodes == []


# --- codec errors ------------------------------------------------------------------------------------------------


def test_missing_codec_is_named_on_full_and_tile_reads(tmp_path, monkeypatch):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, _ramp((64, 64), np.uint8), compression="lzw", tile=(16, 16))
    codecs = tifffile.TIFF.DECOMPRESSORS
    real = type(codecs).__getitem__

    def without_lzw(self: object, key: int) -> object:
        if key == 5:
            raise KeyError(f"{tifffile.COMPRESSION(key)!r} requires the 'imagecodecs' package")
        return real(self, key)

    monkeypatch.setattr(type(codecs), "__getitem__", without_lzw)
    monkeypatch.delitem(codecs._codecs, 5, raising=False)
    for tile in (None, Tile(x=8, y=8, width=16, height=16)):
        with pytest.raises(UserError, match=r"lzw\.tif uses the LZW codec.*pip install -U imagecodecs"):
            read_tiff(path, tile=tile)
    monkeypatch.undo()
    assert np.array_equal(read_tiff(path, tile=Tile(x=8, y=8, width=16, height=16)),
                          _ramp((64, 64), np.uint8)[None, 8:24, 8:24])


def test_file_without_an_image_is_refused(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "e.tif", _ramp((4, 4)))
    monkeypatch.setattr(tifffile.TiffFile, "series", property(lambda self: []))
    with pytest.raises(UserError, match=r"e\.tif holds no image"):
        read_tiff(tmp_path / "e.tif")
