"""Which image each table row names, and reading it: one file, one file per channel, an item of a stacked array, a
tile of a whole slide, or image bytes held in the table itself.

A table names its images in one of these ways (:class:`ImageLayout`, from the ``data`` config section):

- ``image_column``: one file (or fsspec URL, or OME-Zarr folder) per row — or, in a Parquet/Arrow table, the image
  itself: a binary column, or Hugging Face datasets' ``struct<bytes, path>`` image column.
- ``image_template`` (+ ``channels``): one file per channel. ``{channel}`` is replaced first by each channel name,
  then every ``{column}`` by the row's cell: HPA ``"{Id}_{channel}.png"`` with channels red, green, blue, yellow;
  Cell Painting ``"{PathName_Orig{channel}}/{FileName_Orig{channel}}"`` with DNA, ER, RNA, AGP, Mito. Without
  ``{channel}`` the template names one file per row.
- ``channel_columns``: one file per channel, one column each (channel names: the column names).
- ``index_column``: the row's item in a stacked ``.npy`` ``[N, ...]`` (MedMNIST) or the frame of a multi-frame DICOM.
- ``tile_columns``: a rectangle of a large image (x, y in level-0 pixels, size or width/height, optional level).

The per-row data live in Arrow arrays and numpy arrays, not Python objects: forked loader workers share them with
the parent instead of copying them page by page (each Python object's reference count is written on access, and
the garbage collector writes to every tracked object it visits).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from metadino.data.images import IMAGE_SUFFIXES, is_url, load_image, load_image_bytes, read_image_size
from metadino.data.reading import DEFAULT_READ, ReadOptions, Tile
from metadino.data.values import is_missing
from metadino.errors import UserError

TILE_KEYS = ("x", "y", "size", "width", "height", "level")
_FIELD = re.compile(r"\{([^{}]+)\}")
_SHOW_ROWS = 5


@dataclass(frozen=True)
class ImageLayout:
    """How a table names each row's image (module docstring); the data factory builds it from the config."""

    image_column: str = "path"
    image_template: str | None = None
    channels: tuple[str, ...] | None = None
    channel_columns: tuple[str, ...] | None = None
    index_column: str | None = None
    tile_columns: dict[str, str] = field(default_factory=dict)

    def templates(self) -> list[str]:
        """One path template per file of a row (``{column}`` fields; the channel already substituted)."""
        if self.channel_columns:
            return ["{" + c + "}" for c in self.channel_columns]
        if self.image_template is not None:
            if "{channel}" in self.image_template:
                return [self.image_template.replace("{channel}", c) for c in self.channels or ()]
            return [self.image_template]
        return ["{" + self.image_column + "}"]

    def columns(self) -> list[str]:
        """Every table column the layout reads."""
        names = [m for t in self.templates() for m in _FIELD.findall(t)]
        names += [c for c in (self.index_column,) if c] + list(self.tile_columns.values())
        return list(dict.fromkeys(names))

    def channel_names(self) -> tuple[str, ...] | None:
        return tuple(self.channel_columns) if self.channel_columns else self.channels

    def describe(self) -> str:
        if self.channel_columns:
            return f"data.channel_columns {list(self.channel_columns)}"
        if self.image_template is not None:
            return f"data.image_template '{self.image_template}'"
        return f"column '{self.image_column}'"


class ImageSource:
    """Each row's image reference, and reading it. Built by :func:`build_source`; sliced with :meth:`take`."""

    def __init__(self, *, files: Sequence[pa.Array] = (), blobs: pa.Array | None = None,
                 blob_names: pa.Array | None = None, index: np.ndarray | None = None, tiles: np.ndarray | None = None,
                 channel_names: tuple[str, ...] | None = None, options: ReadOptions = DEFAULT_READ):
        self.files = list(files)
        self.options = options  # how this table's files are decoded (data.read), unless a caller passes others
        self.blobs = blobs
        self.blob_names = blob_names
        self.index = index
        self.tiles = tiles
        self.channel_names = channel_names
        self._n = len(blobs) if blobs is not None else len(self.files[0])

    def __len__(self) -> int:
        return self._n

    def take(self, rows: Sequence[int] | np.ndarray) -> ImageSource:
        idx = pa.array(np.asarray(rows, dtype=np.int64))
        return ImageSource(
            files=[f.take(idx) for f in self.files],
            blobs=None if self.blobs is None else self.blobs.take(idx),
            blob_names=None if self.blob_names is None else self.blob_names.take(idx),
            index=None if self.index is None else self.index[np.asarray(rows, dtype=np.int64)],
            tiles=None if self.tiles is None else self.tiles[np.asarray(rows, dtype=np.int64)],
            channel_names=self.channel_names, options=self.options,
        )

    # ------------------------------------------------------------------------------------------ per row

    def files_of(self, i: int) -> list[str]:
        """The files of row `i` (one per channel group; none for bytes held in the table)."""
        return [str(f[i].as_py()) for f in self.files]

    def name(self, i: int) -> str:
        """How messages name row `i`'s image: its file (the first, with a count of the others), or the name of its
        bytes."""
        if self.blobs is not None:
            named = None if self.blob_names is None else self.blob_names[i].as_py()
            return str(named) if named else "(image bytes in the table)"
        files = self.files_of(i)
        return files[0] if len(files) == 1 else f"{files[0]} (+{len(files) - 1} channel files)"

    def item(self, i: int) -> int | None:
        return None if self.index is None else int(self.index[i])

    def tile(self, i: int) -> Tile | None:
        if self.tiles is None:
            return None
        x, y, w, h, level = (int(v) for v in self.tiles[i])
        return Tile(x=x, y=y, width=w, height=h, level=None if level < 0 else level)

    def key(self, i: int) -> str:
        """What makes row `i`'s image itself (its files, item and tile): two rows with one key repeat an image."""
        item = self.item(i)
        tile = None if self.tiles is None else tuple(int(v) for v in self.tiles[i])
        if self.blobs is not None:
            return f"bytes:{i}"
        return "\0".join(self.files_of(i)) + (f"\1{item}" if item is not None else "") + (f"\1{tile}" if tile else "")

    def load(self, i: int, options: ReadOptions | None = None) -> torch.Tensor:
        """Decode row `i` to float32 ``[C, H, W]`` (with `options`, default the table's); the channel files of a row
        are stacked in order.

        Raises:
            UserError: naming the file (and, for channel files of different sizes, every file with its size).
        """
        item, tile = self.item(i), self.tile(i)
        options = self.options if options is None else options
        if self.blobs is not None:
            return load_image_bytes(self.blobs[i].as_py(), self.name(i), options, index=item, tile=tile)
        files = self.files_of(i)
        parts = [load_image(f, options, index=item, tile=tile) for f in files]
        if len(parts) == 1:
            return parts[0]
        sizes = {tuple(p.shape[1:]) for p in parts}
        if len(sizes) > 1:
            listed = ", ".join(f"{Path(f).name} {p.shape[1]}x{p.shape[2]}" for f, p in zip(files, parts))
            raise UserError(f"the channel files of one image differ in height x width ({listed}); every channel of a "
                            "row must have the same size")
        return torch.cat(parts, dim=0)

    def stat_key(self, i: int) -> tuple[str, str] | None:
        """(the row's key, an identity of its files' contents: size and mtime/ctime), or None when a local file
        cannot be stat'ed; bytes rows and URLs are identified by their key alone."""
        if self.blobs is not None or any(is_url(f) for f in self.files_of(i)):
            return self.key(i), ""
        parts = []
        for f in self.files_of(i):
            try:
                st = os.stat(f)
            except OSError:
                return None
            parts.append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
        return self.key(i), ",".join(parts)

    def size(self, i: int) -> tuple[int, int] | None:
        """(H, W) of row `i`'s image from file headers where the format allows (None: only decoding tells)."""
        tile = self.tile(i)
        if tile is not None:
            return tile.height, tile.width
        if self.blobs is not None or self.index is not None:
            return None
        first = self.files_of(i)[0]
        if is_url(first):
            return None
        try:
            return read_image_size(Path(first))
        except UserError:  # not a 2-D image: decoding the row reports it, with the row
            return None

    def bytes_digest(self, h: Any) -> None:
        """Feed the image bytes held in the table into a hashlib object (the table's fingerprint)."""
        if self.blobs is None:
            return
        for buf in self.blobs.buffers():
            if buf is not None:
                h.update(memoryview(buf))


# ------------------------------------------------------------------------------------------- building


def build_source(frame: pd.DataFrame, layout: ImageLayout, *, root: Path, name: str, row_numbers: Sequence[int],
                 blobs: pa.Array | None = None, blob_names: pa.Array | None = None,
                 options: ReadOptions = DEFAULT_READ) -> ImageSource:
    """Each selected row's image reference, checked (missing cells, unknown columns, suffixes, repeats).

    Args:
        frame: the selected rows.
        layout: how the table names its images.
        root: folder relative paths start from.
        name: the table's file name, for messages.
        row_numbers: each row's "row N", for messages.
        blobs/blob_names: the image bytes (and their names) of a binary image column, already selected.
        options: how the files are decoded (kept with the source).

    Raises:
        UserError: naming the table, the rows and the column or template.
    """
    index = _index_column(frame, layout, name, row_numbers)
    tiles = _tile_columns(frame, layout, name, row_numbers)
    if blobs is not None:
        return ImageSource(blobs=blobs, blob_names=blob_names, index=index, tiles=tiles,
                           channel_names=layout.channel_names(), options=options)
    files = [_render(frame, t, root, name, row_numbers, layout) for t in layout.templates()]
    source = ImageSource(files=files, index=index, tiles=tiles, channel_names=layout.channel_names(), options=options)
    _check_suffixes(source, name, row_numbers, layout)
    _check_repeats(source, name, row_numbers, layout)
    return source


def check_files_exist(source: ImageSource, name: str, row_numbers: Sequence[int], layout: ImageLayout,
                      workers: int | None = None) -> None:
    """Every named local file exists (OME-Zarr: the folder); stat'ed in chunks by threads (``stat`` releases the GIL,
    which pays on network file systems, where a stat costs a round trip).

    URLs are not checked here (a listing per file would be slow); a missing one is named when it is read.
    """
    n = len(source)
    if not source.files or n == 0:
        return
    texts = pd.Series([v for f in source.files for v in f.to_pylist()], dtype=object)
    remote = texts.str.match(r"^[A-Za-z][A-Za-z0-9+.-]+://").to_numpy(dtype=bool)
    folder = texts.str.lower().str.rstrip("/").str.endswith(".zarr").to_numpy(dtype=bool)
    found = np.ones(len(texts), dtype=bool)
    local = np.flatnonzero(~remote)
    paths, is_folder = texts.to_numpy()[local].tolist(), folder[local].tolist()
    starts = range(0, len(paths), 4096)

    def stat_chunk(start: int) -> list[bool]:
        isdir, isfile = os.path.isdir, os.path.isfile
        return [isdir(p) if d else isfile(p) for p, d in zip(paths[start:start + 4096], is_folder[start:start + 4096])]

    with ThreadPoolExecutor(max_workers=max(1, min(16, workers or (os.cpu_count() or 1) * 4, len(starts)))) as pool:
        found[local] = [ok for part in pool.map(stat_chunk, starts) for ok in part]
    missing_rows = np.flatnonzero(~found.reshape(len(source.files), n).all(axis=0))
    if len(missing_rows):
        first = int(missing_rows[0])
        per_file = found.reshape(len(source.files), n)[:, first]
        missing_file = source.files_of(first)[int(np.flatnonzero(~per_file)[0])]
        rows = [row_numbers[int(i)] for i in missing_rows]
        raise UserError(
            f"{name}: image files named by {layout.describe()} do not exist in {rows_text(rows)} (e.g. {missing_file}); "
            f"fix the paths, pass the right root folder, or remove those rows"
        )


def _render(frame: pd.DataFrame, template: str, root: Path, name: str, row_numbers: Sequence[int],
            layout: ImageLayout) -> pa.Array:
    """The template filled per row, resolved against `root`, as an Arrow string array."""
    fields = _FIELD.findall(template)
    for column in fields:
        if column not in frame.columns:
            raise UserError(f"{name} has no column '{column}', which {layout.describe()} names; available columns: "
                            f"{', '.join(repr(str(c)) for c in list(frame.columns)[:30])}")
    cells = {c: frame[c].tolist() for c in fields}
    empty: list[int] = []
    out: list[str] = []
    for i in range(len(frame)):
        values = {}
        for column in fields:
            cell = cells[column][i]
            text = "" if is_missing(cell) else (str(int(cell)) if isinstance(cell, float) and cell.is_integer()
                                                 else str(cell).strip())
            if not text:
                empty.append(i)
                break
            values[column] = text
        if len(values) < len(fields):
            out.append("")
            continue
        out.append(_resolve(_fill(template, values), root))
    if empty:
        cols = sorted({c for i in empty[:1] for c in fields if is_missing(cells[c][i]) or not str(cells[c][i]).strip()})
        column, rows = cols[0] if cols else fields[0], rows_text([row_numbers[i] for i in empty])
        if template == "{" + column + "}":
            raise UserError(f"{name}: column '{column}' is empty in {rows}; fill in the image path or remove those rows")
        raise UserError(f"{name}: {layout.describe()} needs column '{column}', which is empty in {rows}; fill in the "
                        "cells or remove those rows")
    return pa.array(out, type=pa.large_string())


def _fill(template: str, values: dict[str, str]) -> str:
    def cell(match: re.Match[str]) -> str:
        return values[match.group(1)]
    return _FIELD.sub(cell, template)


def _resolve(text: str, root: Path) -> str:
    if is_url(text):
        return text
    p = os.path.expanduser(text)
    # normpath, not resolve(): keeps the user's symlinks and costs no file-system calls.
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(root, p))


def _index_column(frame: pd.DataFrame, layout: ImageLayout, name: str, row_numbers: Sequence[int]) -> np.ndarray | None:
    column = layout.index_column
    if column is None:
        return None
    return _integers(frame, column, name, row_numbers, "data.index_column", allow_missing=False)


def _tile_columns(frame: pd.DataFrame, layout: ImageLayout, name: str, row_numbers: Sequence[int]) -> np.ndarray | None:
    cols = layout.tile_columns
    if not cols:
        return None
    n = len(frame)

    def values(key: str, default: int | None = None) -> np.ndarray:
        if key not in cols:
            return np.full(n, -1 if default is None else default, dtype=np.int64)
        return _integers(frame, cols[key], name, row_numbers, f"data.tile_columns.{key}", allow_missing=False)

    x, y = values("x"), values("y")
    if "size" in cols:
        width = height = values("size")
    else:
        width, height = values("width"), values("height")
    level = values("level")
    return np.stack([x, y, width, height, level], axis=1)


def _integers(frame: pd.DataFrame, column: str, name: str, row_numbers: Sequence[int], key: str, *,
              allow_missing: bool) -> np.ndarray:
    if column not in frame.columns:
        raise UserError(f"{name} has no column '{column}' (named in {key}); available columns: "
                        f"{', '.join(repr(str(c)) for c in list(frame.columns)[:30])}")
    numbers = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(numbers) | (numbers != np.round(numbers)) | (numbers < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{name}: column '{column}' ({key}) must hold whole numbers >= 0, but has "
                        f"'{frame[column].iloc[i]}' in row {row_numbers[i]} "
                        f"({int(bad.sum())} such row(s)); fix those cells")
    return np.asarray(numbers, dtype=np.int64)


def _check_suffixes(source: ImageSource, name: str, row_numbers: Sequence[int], layout: ImageLayout) -> None:
    for f in source.files:
        texts = pd.Series(f.to_pylist(), dtype=object)
        suffixes = texts.map(lambda t: Path(t.split("?", 1)[0].rstrip("/")).suffix.lower() if is_url(t)
                             else Path(t.rstrip("/")).suffix.lower())
        bad = np.flatnonzero(~suffixes.isin(IMAGE_SUFFIXES).to_numpy())
        if len(bad):
            example = Path(str(texts.iloc[int(bad[0])])).name
            raise UserError(
                f"{name}: {layout.describe()} names files with an unsupported image type in "
                f"{rows_text([row_numbers[int(i)] for i in bad])} (e.g. '{example}'); supported: "
                f"{', '.join(IMAGE_SUFFIXES)} — convert the images or fix the paths"
            )


def _check_repeats(source: ImageSource, name: str, row_numbers: Sequence[int], layout: ImageLayout) -> None:
    if source.index is None and source.tiles is None and len(source.files) == 1:
        keys = pd.Series(source.files[0].to_pandas(types_mapper=None), dtype=object)
    else:
        keys = pd.Series([source.key(i) for i in range(len(source))], dtype=object)
    repeated = keys.duplicated(keep=False).to_numpy()
    if repeated.any():
        rows = np.flatnonzero(repeated)
        a = int(rows[0])
        b = int(next(j for j in rows[1:] if keys.iloc[int(j)] == keys.iloc[a]))
        what = "images" if source.index is not None or source.tiles is not None else "image paths"
        raise UserError(
            f"{name}: {layout.describe()} repeats {what} in {rows_text([row_numbers[int(i)] for i in rows])} (e.g. row "
            f"{row_numbers[a]} and row {row_numbers[b]} both name {source.name(a)}); keep one row per image"
        )


def rows_text(numbers: Sequence[int]) -> str:
    """'row 4' / 'rows 3, 7, 9, 12, 15 and 4 more (9 rows)'."""
    numbers = sorted(numbers)
    if len(numbers) == 1:
        return f"row {numbers[0]}"
    shown = ", ".join(str(n) for n in numbers[:_SHOW_ROWS])
    if len(numbers) <= _SHOW_ROWS:
        return f"rows {shown} ({len(numbers)} rows)"
    return f"rows {shown} and {len(numbers) - _SHOW_ROWS} more ({len(numbers)} rows)"
