"""Annotated regions of a metadata table, for label-guided local crops (DINO-LG).

A row's region is either a bounding box (four numeric columns x0, y0, x1, y1) or a mask image (a column of
paths, resolved like the image paths; non-zero pixels of any channel = region).

Coordinates are pixels of the original image, x along the width (columns) and y along the height (rows),
measured at pixel edges: the box covers ``x0 <= x < x1`` and ``y0 <= y < y1``, so pixel columns 3..7 are
``x0=3, x1=8`` (COCO's ``x + w``). A valid box has ``0 <= x0 < x1 <= width`` and ``0 <= y0 < y1 <= height``;
fractional values are allowed.

A row whose four box cells are all empty, whose mask cell is empty, or whose mask has no non-zero pixel has
no region: its local crops are ordinary ones.

Checks happen in two places, both naming the table, row and column: :func:`load_regions` before any compute
(cell values, mask files, and — with ``check_sizes`` — box and mask sizes against the image headers), and
:meth:`TableRegions.region` when a row is used (against the decoded image, and the mask's content).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from metadino.data.images import IMAGE_SUFFIXES, load_image, read_image_size
from metadino.data.seeding import draw_int, draw_uniform
from metadino.data.sources import rows_text as _rows
from metadino.data.table import MetadataTable, _list, _suggest
from metadino.data.values import is_missing
from metadino.errors import UserError


@dataclass(frozen=True, eq=False)
class Region:
    """The annotated region of one image.

    Attributes:
        x0, y0, x1, y1: bounding box in pixel-edge coordinates of the image (module docstring).
        mask: bool [H, W] of the whole image, or None for a box region.
    """

    x0: float
    y0: float
    x1: float
    y1: float
    mask: torch.Tensor | None = None
    _row_cumsum: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (0.0 <= self.x0 < self.x1 and 0.0 <= self.y0 < self.y1):
            raise ValueError(f"invalid region box {(self.x0, self.y0, self.x1, self.y1)}: need 0 <= x0 < x1, 0 <= y0 < y1")

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Region | None:
        """Region of the non-zero pixels of ``mask`` (bool [H, W]); None when it has none."""
        if mask.dim() != 2:
            raise ValueError(f"expected a mask [H, W], got shape {tuple(mask.shape)}")
        mask = mask.bool()
        rows = mask.sum(dim=1)
        cols = mask.any(dim=0).nonzero().flatten()
        ys = rows.nonzero().flatten()
        if len(ys) == 0:
            return None
        return cls(
            x0=float(cols[0]),
            y0=float(ys[0]),
            x1=float(cols[-1] + 1),
            y1=float(ys[-1] + 1),
            mask=mask,
            _row_cumsum=rows.cumsum(0),
        )

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) centre of the bounding box."""
        return 0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1)

    def anchor(self, generator: torch.Generator) -> tuple[tuple[float, float], tuple[float, float]]:
        """A random point of the region to centre a crop on, and the point the crop must contain.

        Box: a uniform point of the box; the crop must contain the box centre. Mask: the centre of a
        uniformly drawn non-zero pixel, which the crop must contain (the centre of an irregular mask's box
        may lie outside the mask). Returns ((x, y), (x, y)).
        """
        if self.mask is None or self._row_cumsum is None:
            point = (draw_uniform(generator, self.x0, self.x1), draw_uniform(generator, self.y0, self.y1))
            return point, self.center
        # k-th non-zero pixel in row-major order, found through per-row counts: O(H + W) memory
        total = int(self._row_cumsum[-1])
        k = draw_int(generator, 0, total - 1)
        y = int(torch.searchsorted(self._row_cumsum, torch.tensor(k), right=True))
        before = int(self._row_cumsum[y - 1]) if y > 0 else 0
        x = int(self.mask[y].nonzero().flatten()[k - before])
        point = (x + 0.5, y + 0.5)
        return point, point


class TableRegions:
    """Per-row regions of a :class:`MetadataTable` (rows in the table's selected order).

    Build it with :func:`load_regions`. Box rows hold the four numbers (NaN = no region); mask rows hold
    the mask path, loaded when the row is used (so the object stays small and picklable for workers).
    """

    def __init__(
        self,
        table: MetadataTable,
        *,
        boxes: np.ndarray | None = None,
        box_columns: Sequence[str] = (),
        mask_paths: Sequence[Path | None] | None = None,
        mask_column: str | None = None,
    ):
        if (boxes is None) == (mask_paths is None):
            raise ValueError("give boxes or mask_paths, not both or neither")
        n = len(boxes) if boxes is not None else len(mask_paths or [])
        if n != len(table):
            raise ValueError(f"{n} regions for a table of {len(table)} rows")
        self.table = table
        self.boxes = boxes
        self.box_columns = tuple(box_columns)
        self.mask_paths = None if mask_paths is None else list(mask_paths)
        self.mask_column = mask_column

    def __len__(self) -> int:
        return len(self.table)

    def _where(self, index: int) -> str:
        return f"{self.table.source.name} row {self.table.row_numbers[index]}"

    def has_region(self, index: int) -> bool:
        """Whether row ``index`` names a region (an all-zero mask is only found when it is loaded)."""
        if self.boxes is not None:
            return not bool(np.isnan(self.boxes[index, 0]))
        return self.mask_paths is not None and self.mask_paths[index] is not None

    def region(self, index: int, image_size: tuple[int, int]) -> Region | None:
        """Region of row ``index`` for its decoded image of size (H, W); None when the row has none.

        Raises:
            UserError: the box leaves the image, or the mask is unreadable or not the image's size.
        """
        height, width = int(image_size[0]), int(image_size[1])
        if not self.has_region(index):
            return None
        if self.boxes is not None:
            x0, y0, x1, y1 = (float(v) for v in self.boxes[index])
            self._check_box_fits(index, (x0, y0, x1, y1), height, width)
            return Region(x0, y0, x1, y1)
        assert self.mask_paths is not None  # has_region checked it
        path = self.mask_paths[index]
        assert path is not None
        try:
            mask = load_image(path)
        except UserError as e:
            raise UserError(f"{self._where(index)}, column '{self.mask_column}': {e}") from None
        if tuple(mask.shape[1:]) != (height, width):
            self._size_error(index, path, tuple(mask.shape[1:]), (height, width))
        return Region.from_mask((mask != 0).any(dim=0))

    def check_sizes(self) -> None:
        """Check every region against its image's size, read from file headers (no decoding).

        Boxes must lie inside the image; masks must be readable and have the image's height and width.
        Images whose header cannot be read are skipped here (decoding them fails later with its own
        message).
        """
        for index in range(len(self)):
            if not self.has_region(index):
                continue
            size = self.table.images.size(index)
            if self.boxes is not None:
                if size is not None:
                    self._check_box_fits(index, tuple(float(v) for v in self.boxes[index]), *size)
                continue
            assert self.mask_paths is not None
            path = self.mask_paths[index]
            assert path is not None
            try:
                mask_size = read_image_size(path)
            except Exception as err:  # decoders raise many types
                raise UserError(
                    f"{self._where(index)}, column '{self.mask_column}': cannot read mask {path}: "
                    f"{type(err).__name__}: {err}; re-export the mask or empty the cell"
                ) from err
            if size is not None and mask_size is not None and mask_size != size:
                self._size_error(index, path, mask_size, size)

    def _check_box_fits(self, index: int, box: tuple[float, ...], height: int, width: int) -> None:
        x0, y0, x1, y1 = box
        if x1 > width or y1 > height:
            cols = ", ".join(f"'{c}'" for c in self.box_columns)
            raise UserError(
                f"{self._where(index)}: the box ({_num(x0)}, {_num(y0)}, {_num(x1)}, {_num(y1)}) in columns {cols} "
                f"extends outside image {self.table.paths[index].name} of width {width} and height {height}; "
                f"boxes are pixels of the original image with 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height"
            )

    def _size_error(self, index: int, path: Path, mask_hw: tuple[int, ...], image_hw: tuple[int, ...]) -> None:
        raise UserError(
            f"{self._where(index)}, column '{self.mask_column}': mask {path.name} is {mask_hw[0]}x{mask_hw[1]} "
            f"(height x width) but image {self.table.paths[index].name} is {image_hw[0]}x{image_hw[1]}; "
            f"save each mask at its image's size"
        )


def load_regions(
    table: MetadataTable,
    *,
    bbox_columns: Sequence[str] = (),
    mask_column: str | None = None,
    root: str | Path | None = None,
    check_sizes: bool = True,
) -> TableRegions:
    """Read and check the regions of every row before any compute.

    Args:
        table: the training rows.
        bbox_columns: four columns x0, y0, x1, y1 (pixels of the original image), or empty.
        mask_column: column of mask image paths (relative ones start at ``root``), or None.
        root: folder relative mask paths start from; default the table's folder (like the image paths).
        check_sizes: also check boxes and mask sizes against the image headers (see
            :meth:`TableRegions.check_sizes`); costs one header read per annotated row.

    Raises:
        UserError: a missing column, a non-numeric or partly empty box, x1 <= x0 or y1 <= y0, a negative
            coordinate, a mask path with an unsupported suffix or a missing file, or (``check_sizes``) a
            box outside its image or a mask of another size; messages name the table, rows and columns.
    """
    if bool(bbox_columns) == (mask_column is not None):
        raise ValueError("give either bbox_columns or mask_column")
    columns = [str(c) for c in table.frame.columns]
    wanted = list(bbox_columns) if bbox_columns else [str(mask_column)]
    for column in wanted:
        if column not in table.frame.columns:
            raise UserError(
                f"{table.source.name} has no column '{column}'{_suggest(column, columns)} (named in "
                f"crops.label_guided); available columns: {_list(columns)}; fix the column name or add the column"
            )
    if bbox_columns:
        if len(bbox_columns) != 4:
            raise ValueError(f"bbox_columns must name four columns (x0, y0, x1, y1), got {list(bbox_columns)}")
        regions = TableRegions(table, boxes=_read_boxes(table, list(bbox_columns)), box_columns=bbox_columns)
    else:
        assert mask_column is not None
        paths = _read_mask_paths(table, mask_column, root)
        regions = TableRegions(table, mask_paths=paths, mask_column=mask_column)
    if check_sizes:
        regions.check_sizes()
    return regions


def _to_float(value: object) -> float | None:
    """A finite number from a cell, or None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_boxes(table: MetadataTable, columns: list[str]) -> np.ndarray:
    """[n, 4] float64 boxes, NaN rows for rows without a box; every cell problem is a UserError."""
    name = table.source.name
    cells = [table.frame[c].tolist() for c in columns]
    boxes = np.full((len(table), 4), np.nan)
    partial: list[int] = []
    not_numbers: list[int] = []
    first_bad: tuple[int, str, object] | None = None
    for i in range(len(table)):
        row = [cells[k][i] for k in range(4)]
        empty = [is_missing(v) for v in row]
        if all(empty):
            continue
        if any(empty):
            partial.append(table.row_numbers[i])
            continue
        numbers = [_to_float(v) for v in row]
        if any(n is None for n in numbers):
            not_numbers.append(table.row_numbers[i])
            if first_bad is None:
                k = next(k for k, n in enumerate(numbers) if n is None)
                first_bad = (table.row_numbers[i], columns[k], row[k])
            continue
        boxes[i] = numbers
    if not_numbers:
        assert first_bad is not None
        bad_row, column, value = first_bad
        raise UserError(
            f"{name}: bounding-box cells are not finite numbers in {_rows(not_numbers)} (e.g. row {bad_row}, column "
            f"'{column}' holds {value!r}); write pixel coordinates, or leave all four cells of a row empty"
        )
    if partial:
        i = table.row_numbers.index(partial[0])
        empty_cols = [c for k, c in enumerate(columns) if is_missing(cells[k][i])]
        raise UserError(
            f"{name}: the bounding-box columns {', '.join(repr(c) for c in columns)} are partly empty in "
            f"{_rows(partial)} (e.g. row {partial[0]}: {', '.join(repr(c) for c in empty_cols)} empty); fill all four "
            f"cells, or leave all four empty for an image without a region"
        )
    have = ~np.isnan(boxes[:, 0])
    for lo, hi in ((0, 2), (1, 3)):
        bad = [table.row_numbers[i] for i in np.flatnonzero(have & (boxes[:, hi] <= boxes[:, lo]))]
        if bad:
            i = table.row_numbers.index(bad[0])
            raise UserError(
                f"{name}: column '{columns[hi]}' is not larger than column '{columns[lo]}' in {_rows(bad)} "
                f"(e.g. row {bad[0]}: {columns[lo]}={_num(boxes[i, lo])}, {columns[hi]}={_num(boxes[i, hi])}); boxes "
                f"are (x0, y0, x1, y1) with x1 > x0 and y1 > y0 — check the column order"
            )
    for k in (0, 1):
        bad = [table.row_numbers[i] for i in np.flatnonzero(have & (boxes[:, k] < 0))]
        if bad:
            i = table.row_numbers.index(bad[0])
            raise UserError(
                f"{name}: column '{columns[k]}' is negative in {_rows(bad)} (e.g. row {bad[0]}: {_num(boxes[i, k])}), "
                f"so the box starts outside the image; coordinates are pixels of the original image, from 0"
            )
    return boxes


def _read_mask_paths(table: MetadataTable, column: str, root: str | Path | None) -> list[Path | None]:
    name = table.source.name
    root_dir = table.source.parent if root is None else Path(root).expanduser().absolute()
    paths: list[Path | None] = []
    for cell in table.frame[column].tolist():
        if is_missing(cell):
            paths.append(None)
            continue
        p = Path(str(cell).strip()).expanduser()
        paths.append(Path(os.path.normpath(p if p.is_absolute() else root_dir / p)))
    bad_suffix = [r for p, r in zip(paths, table.row_numbers) if p is not None and p.suffix.lower() not in IMAGE_SUFFIXES]
    if bad_suffix:
        example = paths[table.row_numbers.index(bad_suffix[0])]
        raise UserError(
            f"{name}: column '{column}' names masks with an unsupported file type in {_rows(bad_suffix)} "
            f"(e.g. '{example.name if example else ''}'); save masks as one of {', '.join(IMAGE_SUFFIXES)}"
        )
    missing = [r for p, r in zip(paths, table.row_numbers) if p is not None and not os.path.isfile(p)]
    if missing:
        example = paths[table.row_numbers.index(missing[0])]
        raise UserError(
            f"{name}: mask files named in column '{column}' do not exist in {_rows(missing)} (e.g. {example}); "
            f"fix the paths (relative ones start at the image root folder) or empty the cells"
        )
    return paths


def _num(value: float) -> str:
    """12.0 -> '12', 12.5 -> '12.5'."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


__all__ = ["Region", "TableRegions", "load_regions", "read_image_size"]
