from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metadino.data.regions import Region, TableRegions, load_regions, read_image_size
from metadino.data.seeding import make_generator
from metadino.data.table import load_table
from metadino.errors import UserError

BOX = ["bx0", "by0", "bx1", "by1"]


def _png(path: Path, h: int, w: int, value: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w), np.uint8) if value is None else value.astype(np.uint8)).save(path)


def _table(folder: Path, header: str, rows: list[str], sizes: list[tuple[int, int]] | None = None):
    """CSV with images img/<i>.png (24x32 unless `sizes`); `rows` are the cells after the path."""
    sizes = sizes or [(24, 32)] * len(rows)
    lines = [f"path,{header}"]
    for i, (cells, (h, w)) in enumerate(zip(rows, sizes)):
        _png(folder / f"img/{i}.png", h, w)
        lines.append(f"img/{i}.png,{cells}")
    (folder / "meta.csv").write_text("\n".join(lines) + "\n")
    return load_table(folder / "meta.csv", image_column="path")


def test_boxes_and_rows_without_a_box(tmp_path: Path) -> None:
    t = _table(tmp_path, ",".join(BOX), ["2,3,10.5,20", ",,,", "0,0,32,24"])
    regions = load_regions(t, bbox_columns=BOX)
    assert isinstance(regions, TableRegions) and len(regions) == 3
    assert [regions.has_region(i) for i in range(3)] == [True, False, True]
    r = regions.region(0, (24, 32))
    assert (r.x0, r.y0, r.x1, r.y1, r.mask) == (2.0, 3.0, 10.5, 20.0, None)
    assert r.center == (6.25, 11.5)
    assert regions.region(1, (24, 32)) is None
    assert regions.region(2, (24, 32)).x1 == 32.0  # a box may touch the far edges


@pytest.mark.parametrize(
    "cells, match",
    [
        (["1,2,3,4", "1,2,abc,4"], r"meta\.csv: bounding-box cells are not finite numbers in row 2 \(e\.g\. row 2, column 'bx1' holds 'abc'\)"),
        (["1,2,3,4", "1,2,inf,4"], r"row 2, column 'bx1'"),
        (["1,2,3,4", "1,,3,4"], r"partly empty in row 2 \(e\.g\. row 2: 'by0' empty\)"),
        (["5,2,5,4", "1,2,3,4"], r"column 'bx1' is not larger than column 'bx0' in row 1 .*bx0=5, bx1=5"),
        (["1,2,3,4", "1,9,3,4"], r"column 'by1' is not larger than column 'by0' in row 2"),
        (["-1,2,3,4", "1,2,3,4"], r"column 'bx0' is negative in row 1"),
        (["1,2,3,4", "1,2,40,4"], r"row 2: the box \(1, 2, 40, 4\) in columns 'bx0', 'by0', 'bx1', 'by1' extends outside image 1\.png of width 32 and height 24"),
        (["1,2,3,25", "1,2,3,4"], r"row 1: the box .* extends outside"),
    ],
)
def test_box_errors_name_row_and_column(tmp_path: Path, cells: list[str], match: str) -> None:
    t = _table(tmp_path, ",".join(BOX), cells)
    with pytest.raises(UserError, match=match):
        load_regions(t, bbox_columns=BOX)


def test_box_outside_the_image_is_also_caught_when_the_row_is_used(tmp_path: Path) -> None:
    t = _table(tmp_path, ",".join(BOX), ["1,2,40,4"])
    regions = load_regions(t, bbox_columns=BOX, check_sizes=False)  # headers not read up front
    with pytest.raises(UserError, match=r"meta\.csv row 1: the box .* outside image 0\.png"):
        regions.region(0, (24, 32))


def test_missing_column_is_named_with_a_suggestion(tmp_path: Path) -> None:
    t = _table(tmp_path, "bx0,by0,bx1,BY1", ["1,2,3,4"])
    with pytest.raises(UserError, match=r"no column 'by1' \(did you mean 'BY1'\?\) \(named in crops\.label_guided\)"):
        load_regions(t, bbox_columns=BOX)


def test_row_numbers_follow_the_file_after_a_row_filter(tmp_path: Path) -> None:
    t0 = _table(tmp_path, "split," + ",".join(BOX), ["test,1,2,3,4", "train,1,2,3,4", "train,4,2,3,4"])
    t = load_table(tmp_path / "meta.csv", image_column="path", rows={"split": "train"})
    assert len(t) == 2 and len(t0) == 3
    with pytest.raises(UserError, match=r"in row 3 "):
        load_regions(t, bbox_columns=BOX)


# ----------------------------------------------------------------------------------------------- masks


def _mask_table(tmp_path: Path, masks: dict[int, np.ndarray | None], n: int = 3) -> Path:
    cells = []
    for i in range(n):
        m = masks.get(i)
        if m is None:
            cells.append("")
        else:
            _png(tmp_path / f"masks/{i}.png", *m.shape, value=m)
            cells.append(f"masks/{i}.png")
    _table(tmp_path, "mask", cells)
    return tmp_path / "meta.csv"


def test_masks_are_loaded_per_row(tmp_path: Path) -> None:
    m = np.zeros((24, 32), np.uint8)
    m[5:9, 10:12] = 255
    m[7, 20] = 1
    _mask_table(tmp_path, {0: m, 2: np.zeros((24, 32), np.uint8)})
    regions = load_regions(load_table(tmp_path / "meta.csv", image_column="path"), mask_column="mask")
    r = regions.region(0, (24, 32))
    assert (r.x0, r.y0, r.x1, r.y1) == (10.0, 5.0, 21.0, 9.0)  # bounding box of the non-zero pixels
    assert torch.equal(r.mask, torch.from_numpy(m != 0))
    assert regions.region(1, (24, 32)) is None  # empty cell
    assert regions.has_region(2) and regions.region(2, (24, 32)) is None  # all-zero mask: no region


def test_mask_paths_are_relative_to_the_root(tmp_path: Path) -> None:
    m = np.ones((24, 32), np.uint8)
    _mask_table(tmp_path, {0: m}, n=1)
    (tmp_path / "other").mkdir()
    t = load_table(tmp_path / "meta.csv", image_column="path")
    with pytest.raises(UserError, match=r"mask files named in column 'mask' do not exist in row 1"):
        load_regions(t, mask_column="mask", root=tmp_path / "other")
    assert load_regions(t, mask_column="mask", root=tmp_path).mask_paths == [tmp_path / "masks/0.png"]


def test_mask_errors_name_row_and_column(tmp_path: Path) -> None:
    _mask_table(tmp_path, {1: np.ones((24, 30), np.uint8)})
    t = load_table(tmp_path / "meta.csv", image_column="path")
    with pytest.raises(UserError, match=r"meta\.csv row 2, column 'mask': mask 1\.png is 24x30 .* image 1\.png is 24x32"):
        load_regions(t, mask_column="mask")
    regions = load_regions(t, mask_column="mask", check_sizes=False)
    with pytest.raises(UserError, match=r"meta\.csv row 2, column 'mask': mask 1\.png is 24x30"):
        regions.region(1, (24, 32))

    (tmp_path / "masks/1.png").write_bytes(b"not a png")  # unreadable
    with pytest.raises(UserError, match=r"meta\.csv row 2, column 'mask': cannot read mask"):
        load_regions(t, mask_column="mask")
    with pytest.raises(UserError, match=r"meta\.csv row 2, column 'mask': cannot decode image"):
        regions.region(1, (24, 32))

    (tmp_path / "meta.csv").write_text((tmp_path / "meta.csv").read_text().replace("masks/1.png", "masks/1.txt"))
    t = load_table(tmp_path / "meta.csv", image_column="path")
    with pytest.raises(UserError, match=r"column 'mask' names masks with an unsupported file type in row 2"):
        load_regions(t, mask_column="mask")


def test_region_from_mask_and_anchor_draws_mask_pixels_uniformly() -> None:
    mask = torch.zeros(6, 7, dtype=torch.bool)
    pixels = [(1, 2), (1, 5), (4, 0), (5, 6)]  # (y, x)
    for y, x in pixels:
        mask[y, x] = True
    r = Region.from_mask(mask)
    assert (r.x0, r.y0, r.x1, r.y1) == (0.0, 1.0, 7.0, 6.0)
    assert Region.from_mask(torch.zeros(3, 3, dtype=torch.bool)) is None
    g = make_generator(0)
    counts: Counter[tuple[int, int]] = Counter()
    for _ in range(800):
        point, keep = r.anchor(g)
        assert point == keep
        counts[(int(point[1]), int(point[0]))] += 1
        assert point[0] % 1 == 0.5 and point[1] % 1 == 0.5  # pixel centres
    assert set(counts) == set(pixels)
    assert all(abs(c / 800 - 0.25) < 0.06 for c in counts.values())


def test_box_anchor_is_a_point_of_the_box_and_keeps_the_centre() -> None:
    r = Region(2.0, 3.0, 10.0, 5.0)
    g = make_generator(1)
    xs = []
    for _ in range(200):
        (px, py), keep = r.anchor(g)
        assert 2.0 <= px < 10.0 and 3.0 <= py < 5.0 and keep == (6.0, 4.0)
        xs.append(px)
    assert min(xs) < 3.0 and max(xs) > 9.0
    with pytest.raises(ValueError):
        Region(3.0, 0.0, 3.0, 1.0)


def test_read_image_size_uses_the_layout_rule(tmp_path: Path) -> None:
    import tifffile

    _png(tmp_path / "a.png", 7, 9)
    np.save(tmp_path / "b.npy", np.zeros((3, 11, 13), np.float32))
    np.save(tmp_path / "c.npy", np.zeros((11, 13, 4), np.uint16))
    tifffile.imwrite(tmp_path / "d.tif", np.zeros((5, 6), np.uint16))
    np.save(tmp_path / "e.npy", np.zeros((8, 8, 8), np.uint8))  # ambiguous: left to the decoder
    assert read_image_size(tmp_path / "a.png") == (7, 9)
    assert read_image_size(tmp_path / "b.npy") == (11, 13)
    assert read_image_size(tmp_path / "c.npy") == (11, 13)
    assert read_image_size(tmp_path / "d.tif") == (5, 6)
    assert read_image_size(tmp_path / "e.npy") is None
