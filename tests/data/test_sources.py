"""Each row's image: channel files (template, columns), stack items, tiles, bytes in Parquet, URLs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import torch
from PIL import Image

from metadino.data.images import load_image
from metadino.data.reading import ReadOptions
from metadino.data.sources import TILE_KEYS, ImageLayout
from metadino.data.table import load_table
from metadino.errors import UserError

HPA = ("red", "green", "blue", "yellow")


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _hpa(folder: Path, n: int = 3, size: int = 12) -> tuple[Path, dict[str, np.ndarray]]:
    """The Kaggle HPA layout: train.csv (Id, Target) and train/{Id}_{colour}.png, one 8-bit file per channel."""
    rng = np.random.default_rng(0)
    ids = [f"00{i}a-b{i}" for i in range(n)]
    pixels = {}
    for id_ in ids:
        pixels[id_] = rng.integers(0, 255, (4, size, size), dtype=np.uint8)
        for c, colour in enumerate(HPA):
            _png(folder / "train" / f"{id_}_{colour}.png", pixels[id_][c])
    pd.DataFrame({"Id": ids, "Target": ["0|25", "16", "0"][:n]}).to_csv(folder / "train.csv", index=False)
    return folder / "train.csv", pixels


def test_template_reads_one_file_per_channel_in_order(tmp_path):
    csv, pixels = _hpa(tmp_path)
    layout = ImageLayout(image_template="{Id}_{channel}.png", channels=HPA)
    table = load_table(csv, root=tmp_path / "train", layout=layout)
    assert len(table) == 3 and table.images.channel_names == HPA
    for i, id_ in enumerate(table.frame["Id"]):
        assert torch.equal(table.images.load(i), torch.from_numpy(pixels[id_] / 255).float())
        assert table.images.files_of(i) == [str(tmp_path / "train" / f"{id_}_{c}.png") for c in HPA]
    assert table.paths[0] == tmp_path / "train" / f"{table.frame['Id'][0]}_red.png"
    # the table is filtered and subset like any other, files follow their rows
    sub = load_table(csv, root=tmp_path / "train", layout=layout, rows={"Target": "16"}).subset([0])
    assert sub.images.files_of(0)[1].endswith("001a-b1_green.png")


def test_channel_files_must_exist_and_share_a_size(tmp_path):
    csv, _ = _hpa(tmp_path)
    layout = ImageLayout(image_template="{Id}_{channel}.png", channels=HPA)
    (tmp_path / "train" / "001a-b1_yellow.png").unlink()
    with pytest.raises(UserError, match=r"train\.csv: image files named by data\.image_template '\{Id\}_\{channel\}"
                                        r"\.png' do not exist in row 2 \(e\.g\. .*001a-b1_yellow\.png\)"):
        load_table(csv, root=tmp_path / "train", layout=layout)
    _png(tmp_path / "train" / "001a-b1_yellow.png", np.zeros((12, 10), np.uint8))
    table = load_table(csv, root=tmp_path / "train", layout=layout)
    with pytest.raises(UserError, match=r"differ in height x width \(001a-b1_red\.png 12x12, .*001a-b1_yellow\.png "
                                        r"12x10\)"):
        table.images.load(1)


def test_cell_painting_nested_template_and_channel_columns(tmp_path):
    """load_data.csv: FileName_Orig<stain> + PathName_Orig<stain> per channel, {channel} substituted first."""
    rng = np.random.default_rng(1)
    stains = ("DNA", "ER", "Mito")
    rows = []
    for site in range(2):
        row = {"Metadata_Plate": "BR1", "Metadata_Well": "A01", "Metadata_Site": site}
        for s in stains:
            folder = tmp_path / "images" / f"plate_{s}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"r01c01f0{site}p01-ch{stains.index(s) + 1}.tiff"
            tifffile.imwrite(folder / name, rng.integers(0, 65535, (10, 10), dtype=np.uint16))
            row[f"FileName_Orig{s}"], row[f"PathName_Orig{s}"] = name, str(folder)
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "load_data.csv", index=False)
    layout = ImageLayout(image_template="{PathName_Orig{channel}}/{FileName_Orig{channel}}", channels=stains)
    table = load_table(tmp_path / "load_data.csv", layout=layout)
    img = table.images.load(1)
    assert img.shape == (3, 10, 10)
    for c, s in enumerate(stains):
        assert torch.equal(img[c], load_image(Path(rows[1][f"PathName_Orig{s}"]) / rows[1][f"FileName_Orig{s}"])[0])
    # the same files by one column per channel
    frame = pd.DataFrame({s: [str(Path(r[f"PathName_Orig{s}"]) / r[f"FileName_Orig{s}"]) for r in rows] for s in stains})
    frame.to_csv(tmp_path / "cols.csv", index=False)
    by_columns = load_table(tmp_path / "cols.csv", layout=ImageLayout(channel_columns=stains))
    assert torch.equal(by_columns.images.load(1), img) and by_columns.images.channel_names == stains
    with pytest.raises(UserError, match=r"cols\.csv has no column 'AGP'"):
        load_table(tmp_path / "cols.csv", layout=ImageLayout(channel_columns=(*stains, "AGP")))


def test_empty_template_cell_names_the_column_and_row(tmp_path):
    csv, _ = _hpa(tmp_path)
    frame = pd.read_csv(csv)
    frame.loc[1, "Id"] = None
    frame.to_csv(csv, index=False)
    with pytest.raises(UserError, match=r"data\.image_template '\{Id\}_\{channel\}\.png' needs column 'Id', which is "
                                        r"empty in row 2"):
        load_table(csv, root=tmp_path / "train", layout=ImageLayout(image_template="{Id}_{channel}.png", channels=HPA))


def test_stack_items_share_a_file_but_not_an_item(tmp_path):
    """MedMNIST as `metadino import` writes it: one .npy per split, a row per item."""
    stack = np.random.default_rng(2).integers(0, 255, (4, 9, 9, 3), dtype=np.uint8)
    np.save(tmp_path / "train_images.npy", stack)
    frame = pd.DataFrame({"path": ["train_images.npy"] * 4, "index": [3, 1, 0, 2], "label": [0, 1, 1, 0]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = load_table(tmp_path / "t.csv", layout=ImageLayout(index_column="index"))
    for i, item in enumerate([3, 1, 0, 2]):
        assert torch.equal(table.images.load(i), torch.from_numpy(np.moveaxis(stack[item], -1, 0) / 255).float())
    frame.loc[3, "index"] = 1
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match=r"t\.csv: column 'path' repeats images in rows 2, 4 \(2 rows\)"):
        load_table(tmp_path / "t.csv", layout=ImageLayout(index_column="index"))
    frame.loc[3, "index"] = -2
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match=r"column 'index' \(data\.index_column\) must hold whole numbers >= 0, but has "
                                        r"'-2' in row 4"):
        load_table(tmp_path / "t.csv", layout=ImageLayout(index_column="index"))
    # without the index column the repeated path is refused as before
    with pytest.raises(UserError, match=r"repeats image paths"):
        load_table(tmp_path / "t.csv")


def test_tile_rows_read_only_their_region(tmp_path):
    slide = np.random.default_rng(3).integers(0, 255, (3, 64, 96), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "slide.tif", np.moveaxis(slide, 0, -1), tile=(16, 16), photometric="rgb")
    frame = pd.DataFrame({"path": ["slide.tif"] * 3, "x": [0, 16, 80], "y": [0, 32, 48], "size": [16, 32, 16]})
    frame.to_csv(tmp_path / "tiles.csv", index=False)
    layout = ImageLayout(tile_columns={"x": "x", "y": "y", "size": "size"})
    table = load_table(tmp_path / "tiles.csv", layout=layout)
    for i, (x, y, s) in enumerate(zip(frame.x, frame.y, frame["size"])):
        assert torch.equal(table.images.load(i), torch.from_numpy(slide[:, y:y + s, x:x + s] / 255).float())
        assert table.images.size(i) == (s, s)
    assert set(TILE_KEYS) == {"x", "y", "size", "width", "height", "level"}


def _bytes_of(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["hf_struct", "binary"])
def test_image_bytes_in_parquet(tmp_path, kind):
    rng = np.random.default_rng(4)
    arrays = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(4)]
    blobs = [_bytes_of(a) for a in arrays]
    if kind == "hf_struct":  # datasets.Image(): struct<bytes: binary, path: string>
        column = pa.array([{"bytes": b, "path": f"img_{i}.png"} for i, b in enumerate(blobs)],
                          type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    else:
        column = pa.array(blobs, type=pa.binary())
    pq.write_table(pa.table({"image": column, "split": ["a", "b", "a", "b"]}), tmp_path / "t.parquet")
    table = load_table(tmp_path / "t.parquet", image_column="image", rows={"split": "b"})
    assert len(table) == 2 and table.images.blobs is not None
    assert table.frame["image"].tolist() == (["img_1.png", "img_3.png"] if kind == "hf_struct" else ["row 2", "row 4"])
    for i, source_row in enumerate([1, 3]):
        assert torch.equal(table.images.load(i), torch.from_numpy(np.moveaxis(arrays[source_row], -1, 0) / 255).float())
    # the fingerprint covers the bytes: one changed image, another fingerprint
    before = table.fingerprint()
    blobs[3] = _bytes_of(255 - arrays[3])
    column = pa.array(blobs, type=pa.binary()) if kind == "binary" else pa.array(
        [{"bytes": b, "path": f"img_{i}.png"} for i, b in enumerate(blobs)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": column, "split": ["a", "b", "a", "b"]}), tmp_path / "t.parquet")
    assert load_table(tmp_path / "t.parquet", image_column="image", rows={"split": "b"}).fingerprint() != before


def test_urls_are_kept_as_urls_and_read_through_fsspec(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    img = np.random.default_rng(5).integers(0, 255, (8, 8), dtype=np.uint8)
    fs.pipe("/data/a.png", _bytes_of(img))
    try:
        pd.DataFrame({"path": ["memory://data/a.png", "b.png"]}).to_csv(tmp_path / "t.csv", index=False)
        _png(tmp_path / "b.png", img)
        table = load_table(tmp_path / "t.csv")
        assert table.images.files_of(0) == ["memory://data/a.png"]
        assert torch.equal(table.images.load(0), table.images.load(1))
    finally:
        fs.rm("/data", recursive=True)


def test_nodata_option_reaches_every_channel_file(tmp_path):
    a = np.array([[0, 10], [20, 30]], np.uint16)
    tifffile.imwrite(tmp_path / "x_a.tif", np.tile(a, (3, 3)))
    tifffile.imwrite(tmp_path / "x_b.tif", np.tile(a, (3, 3)) + 1)
    pd.DataFrame({"Id": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    table = load_table(tmp_path / "t.csv", layout=ImageLayout(image_template="{Id}_{channel}.tif", channels=("a", "b")))
    with pytest.raises(UserError, match=r"x_a\.tif has 9 no-data pixels \(NaN or 0\)"):
        table.images.load(0, ReadOptions(nodata_value=0))
    filled = table.images.load(0, ReadOptions(nodata_value=0, nodata="fill", fill_value=-1.0))
    assert (filled[0] == -1).sum() == 9 and (filled[1] == -1).sum() == 0


def _ome_zarr(path: Path, levels: list[np.ndarray]) -> None:
    """A minimal OME-Zarr v0.4 image (Zarr format 2) with axes c, z, y, x."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    for i, data in enumerate(levels):
        root.create_array(str(i), shape=data.shape, dtype=data.dtype, chunks=(1, 1, 16, 16))[...] = data
    axes = [{"name": "c", "type": "channel"}, {"name": "z", "type": "space"}, {"name": "y", "type": "space"},
            {"name": "x", "type": "space"}]
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2**i, 2**i]}]}
                for i in range(len(levels))]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]


def test_ome_zarr_rows_read_a_level_and_a_plane(tmp_path):
    """An OME-Zarr folder in the path column: checked as a folder, read at data.read.level / z."""
    volume = (np.arange(2 * 3 * 32 * 32) % 65535).astype(np.uint16).reshape(2, 3, 32, 32)  # CZYX
    _ome_zarr(tmp_path / "cells.ome.zarr", [volume, volume[:, :, ::2, ::2]])
    pd.DataFrame({"path": ["cells.ome.zarr"]}).to_csv(tmp_path / "t.csv", index=False)
    table = load_table(tmp_path / "t.csv", read=ReadOptions(level=1, z=2))
    assert torch.equal(table.images.load(0), torch.from_numpy(volume[:, 2, ::2, ::2] / 65535).float())
    with pytest.raises(UserError, match=r"Z planes.*data\.read\.z"):
        load_table(tmp_path / "t.csv").images.load(0)
    pd.DataFrame({"path": ["other.ome.zarr"]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(UserError, match=r"do not exist in row 1 \(e\.g\. .*other\.ome\.zarr\)"):
        load_table(tmp_path / "u.csv")
