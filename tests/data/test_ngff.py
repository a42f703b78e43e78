"""metadino.data.ngff: OME-Zarr v0.4 (Zarr 2) and v0.5 (Zarr 3) images, levels, planes, tiles and refusals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.storage

from metadino.data.ngff import ngff_channel_names, ngff_size, read_ngff
from metadino.data.reading import ReadOptions, Tile
from metadino.errors import UserError

_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _ramp(shape: tuple[int, ...], dtype: type = np.uint16) -> np.ndarray:
    """Distinct values everywhere, so that any misplaced pixel shows."""
    return (np.arange(int(np.prod(shape))) % np.iinfo(dtype).max).astype(dtype).reshape(shape)


def _pyramid(level0: np.ndarray, axes: str, levels: int = 2) -> list[np.ndarray]:
    """Level 0 and its 2x downsamples in y and x (by striding, so the expected pixels are known exactly)."""
    out = [level0]
    for _ in range(levels - 1):
        index = tuple(slice(None, None, 2) if a in "yx" else slice(None) for a in axes)
        out.append(out[-1][index])
    return out


def _write(path: Path, levels: list[np.ndarray], axes: str, version: str = "0.4", *, scales: bool = True,
           labels: list[str] | None = None, chunk: int = 16, group: Any = None) -> Path:
    """A real OME-Zarr image: v0.4 as Zarr format 2 (``.zattrs``), v0.5 as Zarr format 3 (``zarr.json``)."""
    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt) if group is None else group
    datasets = []
    for i, data in enumerate(levels):
        chunks = tuple(chunk if a in "yx" else 1 for a in axes)
        extra = {"dimension_names": list(axes)} if fmt == 3 else {}
        array = root.create_array(str(i), shape=data.shape, dtype=data.dtype, chunks=chunks, **extra)
        array[...] = data
        entry: dict[str, Any] = {"path": str(i)}
        if scales:
            scale = [0.5 * 2**i if a in "yx" else 1.0 for a in axes]  # 0.5 µm pixels at level 0
            entry["coordinateTransformations"] = [{"type": "scale", "scale": scale}]
        datasets.append(entry)
    multiscale = {"version": version, "name": "img", "datasets": datasets,
                  "axes": [{"name": a, "type": _TYPES[a]} for a in axes]}
    ome: dict[str, Any] = {"multiscales": [multiscale]}
    if labels is not None:
        ome["omero"] = {"channels": [{"label": label, "color": "FFFFFF"} for label in labels]}
    if fmt == 2:
        root.attrs.update(ome)
    else:
        root.attrs["ome"] = {"version": version, **ome}
    return path


@pytest.fixture
def tczyx(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    levels = _pyramid(_ramp((2, 3, 4, 64, 48)), "tczyx")
    path = _write(tmp_path / "stack.ome.zarr", levels, "tczyx", "0.4", labels=["DAPI", "GFP", "RFP"])
    assert (path / ".zattrs").is_file() and (path / "0" / ".zarray").is_file()  # Zarr format 2
    return path, levels


@pytest.fixture
def cyx(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    levels = _pyramid(_ramp((2, 64, 80), np.uint8), "cyx")
    path = _write(tmp_path / "img.ome.zarr", levels, "cyx", "0.5", labels=["nuclei", "membrane"])
    assert "ome" in json.loads((path / "zarr.json").read_text())["attributes"]  # Zarr format 3, v0.5 layout
    return path, levels


@pytest.fixture
def chunk_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys of the array chunks zarr reads from disk (metadata documents are left out)."""
    keys: list[str] = []
    real = zarr.storage.LocalStore.get

    async def counting(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        if not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            keys.append(key)
        return await real(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting)
    return keys


# --- reading -----------------------------------------------------------------------------------------------------


def test_v04_tczyx_planes_and_levels_read_exactly(tczyx):
    path, levels = tczyx
    out = read_ngff(path, ReadOptions(z=2, t=1))
    assert out.dtype == np.uint16 and np.array_equal(out, levels[0][1, :, 2])
    assert np.array_equal(read_ngff(path, ReadOptions(z=3, t=0, level=1)), levels[1][0, :, 3])
    assert ngff_size(path, ReadOptions()) == (64, 48)
    assert ngff_size(path, ReadOptions(level=1)) == (32, 24)
    assert ngff_channel_names(path) == ["DAPI", "GFP", "RFP"]


def test_v05_cyx_reads_exactly(cyx):
    path, levels = cyx
    out = read_ngff(path)
    assert out.dtype == np.uint8 and np.array_equal(out, levels[0])
    assert np.array_equal(read_ngff(path, ReadOptions(level=1)), levels[1])
    assert ngff_size(path, ReadOptions(level=1)) == (32, 40)
    assert ngff_channel_names(path) == ["nuclei", "membrane"]


def test_axes_in_another_order_and_without_channels(tmp_path):
    yxc = _ramp((20, 24, 3))
    path = _write(tmp_path / "yxc.zarr", [yxc], "yxc", "0.5")
    assert np.array_equal(read_ngff(path), np.moveaxis(yxc, -1, 0))
    assert ngff_channel_names(path) is None  # no omero metadata
    zyx = _ramp((1, 20, 24))
    path = _write(tmp_path / "zyx.zarr", [zyx], "zyx", "0.4")
    assert np.array_equal(read_ngff(path), zyx)  # one Z plane: no choice needed, and one channel


def test_plane_read_decodes_only_its_chunks(tczyx, chunk_reads):
    path, levels = tczyx
    assert np.array_equal(read_ngff(path, ReadOptions(z=1, t=0)), levels[0][0, :, 1])
    assert len(chunk_reads) == 3 * (64 // 16) * (48 // 16)  # 3 channels x 12 chunks, of 2 x 3 x 4 x 12


# --- tiles -------------------------------------------------------------------------------------------------------


def test_tiles_equal_the_slice_and_read_only_their_chunks(cyx, chunk_reads):
    path, levels = cyx
    out = read_ngff(path, tile=Tile(x=20, y=8, width=24, height=16))
    assert out.dtype == np.uint8 and np.array_equal(out, levels[0][:, 8:24, 20:44])
    assert len(chunk_reads) == 2 * 2 * 2  # 2 channels x (rows 0-1 x columns 1-2 of the 16² chunks), of 2 x 20
    chunk_reads.clear()
    # level 1: x/y in level-0 pixels (40, 16 -> 20, 8), size in level-1 pixels
    out = read_ngff(path, tile=Tile(x=40, y=16, width=12, height=8, level=1))
    assert np.array_equal(out, levels[1][:, 8:16, 20:32])
    assert len(chunk_reads) == 2 * 1 * 1  # rows 8-15, columns 20-31: chunk (0, 1) of each channel
    assert np.array_equal(read_ngff(path, ReadOptions(level=1), Tile(x=0, y=0, width=4, height=4)),
                          levels[1][:, :4, :4])  # data.read.level applies when the tile names none


def test_tile_of_a_plane(tczyx):
    path, levels = tczyx
    out = read_ngff(path, ReadOptions(z=3, t=1), Tile(x=10, y=30, width=20, height=17))
    assert np.array_equal(out, levels[0][1, :, 3, 30:47, 10:30])


def test_tile_origin_uses_the_scale_transforms_else_the_shapes(tmp_path):
    """A 101-wide level 0 and a 50-wide level 1 (ome-zarr-py's floor downsampling): the scale transforms say x2, so
    level-0 x=60 is level-1 x=30; without transforms the shapes' ratio gives 60 * 50 // 101 = 29."""
    level0 = _ramp((1, 20, 101))
    level1 = level0[:, ::2, :100:2]
    scaled = _write(tmp_path / "scaled.zarr", [level0, level1], "cyx", "0.4")
    plain = _write(tmp_path / "plain.zarr", [level0, level1], "cyx", "0.4", scales=False)
    tile = Tile(x=60, y=4, width=3, height=2, level=1)
    assert np.array_equal(read_ngff(scaled, tile=tile), level1[:, 2:4, 30:33])
    assert np.array_equal(read_ngff(plain, tile=tile), level1[:, 2:4, 29:32])


def test_tile_outside_the_image_and_the_pixel_limit(cyx):
    path, levels = cyx
    for tile in (Tile(x=70, y=0, width=16, height=16), Tile(x=-1, y=0, width=4, height=4),
                 Tile(x=0, y=40, width=4, height=30, level=1)):
        with pytest.raises(UserError, match=r"tile at x=-?\d+, y=\d+ .* extends outside OME-Zarr .*img\.ome\.zarr, "
                                            r"which is \d+ x \d+ pixels at that level \(80 x 64 at level 0\)"):
            read_ngff(path, tile=tile)
    small = ReadOptions(max_pixels=1000)
    with pytest.raises(UserError, match=r"img\.ome\.zarr is larger than the pixel limit: 80 x 64 = 5,120 pixels"):
        read_ngff(path, small)
    assert np.array_equal(read_ngff(path, small, Tile(x=0, y=0, width=30, height=30)), levels[0][:, :30, :30])


# --- refusals ----------------------------------------------------------------------------------------------------


def test_wrong_level_and_unchosen_or_out_of_range_planes(tczyx):
    path, _ = tczyx
    with pytest.raises(UserError, match=r"stack\.ome\.zarr has 2 resolution levels \(0 to 1\) but level 2 was"):
        read_ngff(path, ReadOptions(level=2, z=0, t=0))
    with pytest.raises(UserError, match=r"has 2 resolution levels"):
        ngff_size(path, ReadOptions(level=5))
    with pytest.raises(UserError, match=r"stack\.ome\.zarr holds 4 Z planes; choose one with data\.read\.z"):
        read_ngff(path, ReadOptions(t=0))
    with pytest.raises(UserError, match=r"stack\.ome\.zarr holds 2 time points; choose one with data\.read\.t"):
        read_ngff(path, ReadOptions(z=0))
    with pytest.raises(UserError, match=r"holds 4 Z planes \(0 to 3\) but data\.read\.z is 4"):
        read_ngff(path, ReadOptions(z=4, t=0))
    with pytest.raises(UserError, match=r"holds a single image but data\.read\.series is 1"):
        read_ngff(path, ReadOptions(series=1, z=0, t=0))


def test_not_an_ome_zarr_group(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(UserError, match=r"empty\.zarr is not a Zarr group"):
        read_ngff(tmp_path / "empty.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3).attrs["note"] = "no image metadata"
    with pytest.raises(UserError, match=r"plain\.zarr is a Zarr group but not an OME-Zarr image.*'multiscales'"):
        read_ngff(tmp_path / "plain.zarr")
    with pytest.raises(UserError, match=r"missing\.zarr does not exist"):
        ngff_size(tmp_path / "missing.zarr", ReadOptions())
    (tmp_path / "file.zarr").write_text("not a directory")
    with pytest.raises(UserError, match=r"file\.zarr is not a directory"):
        ngff_channel_names(tmp_path / "file.zarr")


def test_axes_that_cannot_be_mapped(tmp_path):
    path = _write(tmp_path / "bad.zarr", [_ramp((3, 8, 8))], "cyx", "0.4")
    attrs = json.loads((path / ".zattrs").read_text())
    attrs["multiscales"][0]["axes"] = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"},
                                       {"name": "w", "type": "space"}]
    (path / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(UserError, match=r"bad\.zarr has axes \[c, y, w\] that cannot be mapped to channels"):
        read_ngff(path)
    attrs["multiscales"][0]["axes"] = ["c", "y"]
    (path / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(UserError, match=r"bad\.zarr describes its axes as \['c', 'y'\] for 3-D data"):
        read_ngff(path)
    attrs["multiscales"][0]["axes"] = [{"name": "angle"}, {"name": "y"}, {"name": "x"}]
    (path / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(UserError, match=r"has an axis other than t, c, z, y, x of length 3 \(axes \[angle, y, x\]\)"):
        read_ngff(path)


def test_bioformats2raw_layout_reads_its_numbered_images(tmp_path):
    path = tmp_path / "b2r.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    first, second = _ramp((2, 16, 16)), _ramp((1, 8, 12)) + 7
    _write(path / "0", [first], "cyx", group=root.create_group("0"), labels=["a", "b"])
    _write(path / "1", [second], "cyx", group=root.create_group("1"))
    root.create_group("OME")
    with pytest.warns(UserWarning, match=r"b2r\.ome\.zarr holds 2 images \(bioformats2raw layout\); reading only "
                                         r"the first"):
        assert np.array_equal(read_ngff(path), first)
    with pytest.warns(UserWarning, match=r"reading only series 1"):
        assert np.array_equal(read_ngff(path, ReadOptions(series=1)), second)
    with pytest.raises(UserError, match=r"b2r\.ome\.zarr \(bioformats2raw layout\) holds 2 images \(subgroups 0, 1\) "
                                        r"but data\.read\.series is 2"):
        read_ngff(path, ReadOptions(series=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ngff_size(path, ReadOptions(series=1)) == (8, 12)
        assert ngff_channel_names(path) == ["a", "b"]
        assert np.array_equal(read_ngff(path / "1"), second)  # pointing at the image itself


def test_plate_and_well_groups_are_refused_naming_a_field(tmp_path):
    plate = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w", zarr_format=3)
    plate.attrs["ome"] = {"version": "0.5", "plate": {"wells": [{"path": "B/3", "rowIndex": 1, "columnIndex": 2}]}}
    with pytest.raises(UserError, match=r"plate\.zarr is an HCS plate, not an image; .*plate\.zarr/B/3/0"):
        read_ngff(tmp_path / "plate.zarr")
    well = zarr.open_group(str(tmp_path / "well.zarr"), mode="w", zarr_format=2)
    well.attrs["well"] = {"images": [{"path": "5"}]}
    with pytest.raises(UserError, match=r"well\.zarr is an HCS well, not an image; .*well\.zarr/5"):
        read_ngff(tmp_path / "well.zarr")


def test_channel_names_need_a_label_per_channel(tmp_path):
    path = _write(tmp_path / "two.zarr", [_ramp((2, 8, 8))], "cyx", "0.5", labels=["only one"])
    assert ngff_channel_names(path) is None  # 1 label for 2 channels
    path = _write(tmp_path / "gray.zarr", [_ramp((8, 8))], "yx", "0.4", labels=["gray"])
    assert ngff_channel_names(path) == ["gray"]
    assert np.array_equal(read_ngff(path), _ramp((8, 8))[None])
