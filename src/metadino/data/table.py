"""Read and validate a user's metadata table (CSV/TSV or Parquet, one row per image).

Row numbers in every message: **"row N" is the N-th data row of the file, counting from 1 and not
counting the header** — in a spreadsheet that shows the header on line 1, row N is on line N + 1.
Parquet files have no header line, so row N is simply the N-th row.

Missing metadata values (the ``missing_values`` tokens, empty cells, NaN/null) are kept as missing
(NaN/None/NA) in :attr:`MetadataTable.frame`: they are valid, and guides mask them out later.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from metadino.data.reading import DEFAULT_READ, ReadOptions
from metadino.data.sources import ImageLayout, ImageSource, build_source, check_files_exist
from metadino.data.sources import rows_text as _rows
from metadino.data.values import category_label, known_mask, multilabel_separator
from metadino.errors import UserError

TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".txt", ".tab", ".parquet", ".pq")
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
DEFAULT_MISSING_VALUES: tuple[str, ...] = ("", "NA", "NaN", "nan", "None", "null")
MAX_CATEGORICAL_INTEGERS = 20
_SHOW_ROWS = 5
_SHOW_VALUES = 10


@dataclass(frozen=True, eq=False)  # eq=False: comparing DataFrames field-wise would raise
class MetadataTable:
    """A validated selection of a metadata table.

    Attributes:
        source: the table file (absolute).
        frame: the selected rows, index reset to ``0..n-1``, all original columns (a column of image bytes holds
            only their names), missing values kept.
        images: each selected row's image reference (:class:`~metadino.data.sources.ImageSource`; Arrow/numpy
            arrays that forked loader workers share).
        row_numbers: each selected row's "row N" in the user's file (module docstring).
        image_column: the column that holds the image paths (the layout's, also when a template names the files).
        layout: how the table names its images.
    """

    source: Path
    frame: pd.DataFrame
    images: ImageSource
    row_numbers: list[int]
    image_column: str
    layout: ImageLayout = ImageLayout()

    def __len__(self) -> int:
        return len(self.images)

    @property
    def paths(self) -> Sequence[Path]:
        """Each row's image file (its first channel file; for bytes held in the table, the name they carry)."""
        return _Paths(self.images)

    def subset(self, indices: Sequence[int]) -> MetadataTable:
        """The rows at `indices` (positions ``0..n-1`` of this selection, kept in the given order); each keeps its
        "row N" and image, so messages and :meth:`fingerprint` follow the rows that remain."""
        idx = [int(i) for i in indices]
        frame = self.frame.iloc[idx].reset_index(drop=True)
        return MetadataTable(source=self.source, frame=frame, images=self.images.take(idx),
                             row_numbers=[self.row_numbers[i] for i in idx], image_column=self.image_column,
                             layout=self.layout)

    def fingerprint(self) -> str:
        """Short sha256 over the selection's content, for run provenance (resume) and the feature cache.

        It covers the column names and dtypes, every cell of the selected rows (pandas' vectorised hash, about a
        second per million rows), their "row N" numbers, image paths and any image bytes held in the table. Not the
        file's mtime or size: a table rewritten with identical content keeps its fingerprint; any changed cell, column
        or selection changes it.
        """
        h = hashlib.sha256()
        for column in sorted(self.frame.columns, key=str):
            series = self.frame[column]
            # text is `object` under pandas 2 and `str` under pandas 3: one name, so an upgrade is not a changed table
            kind = "text" if series.dtype == object or str(series.dtype) in ("str", "string") else str(series.dtype)
            h.update(f"{column}\0{kind}\0".encode())
            try:
                hashed = pd.util.hash_pandas_object(series, index=False)
            except (TypeError, ValueError):  # cells holding lists or arrays (Parquet): hash their text
                hashed = pd.util.hash_pandas_object(series.map(repr), index=False)
            h.update(hashed.to_numpy().tobytes())
        h.update(b"\1" + np.asarray(self.row_numbers, dtype=np.int64).tobytes())
        for files in self.images.files:  # one file per row hashes as before channel files existed: saved runs match
            for text in files.to_pylist():
                h.update(str(text).encode() + b"\0")
        self.images.bytes_digest(h)
        return h.hexdigest()[:16]

    def legacy_fingerprint(self) -> str:
        """The fingerprint runs saved before content fingerprints recorded (columns, image paths, the table file's
        size and mtime): accepted on resume so that such a run can continue, under the old rule."""
        h = hashlib.sha256()
        for column in sorted(str(c) for c in self.frame.columns):
            h.update(column.encode() + b"\0")
        h.update(b"\1")
        for path in self.paths:
            h.update(str(path).encode() + b"\0")
        try:
            stat = self.source.stat()
            h.update(f"\1{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:
            h.update(b"\1missing")
        return h.hexdigest()[:16]


def load_table(
    path: str | Path,
    *,
    image_column: str = "path",
    root: str | Path | None = None,
    rows: Mapping[str, Any] | None = None,
    required_columns: Sequence[str] = (),
    missing_values: Sequence[str] = DEFAULT_MISSING_VALUES,
    check_files: bool = True,
    layout: ImageLayout | None = None,
    read: ReadOptions = DEFAULT_READ,
) -> MetadataTable:
    """Read a metadata table, select rows and validate it before any compute.

    Args:
        path: ``.csv`` (comma), ``.tsv``/``.txt``/``.tab`` (tab) — optionally compressed, e.g. ``.csv.gz`` —
            or ``.parquet``/``.pq``.
        image_column: column holding image paths (or, in Parquet, image bytes); ignored when `layout` is given.
        root: folder that relative image paths are resolved against; defaults to the table's folder.
        rows: filter ``{column: value or list of values}``; all filters must hold (AND). Values are
            compared as class names (:func:`metadino.data.values.category_label`: integer-valued numbers
            without ``.0``, text stripped), so ``{"split": "1"}`` matches an integer column.
        required_columns: columns that must exist (e.g. guide columns named in a config).
        missing_values: cell texts read as missing.
        check_files: check that every selected image file exists (in parallel threads).
        layout: how the table names its images (one file, one file per channel, stack items, tiles); default: one
            file per row in `image_column`.
        read: how the image files are decoded (``data.read``); kept with the table's images.

    Raises:
        UserError: on any problem with the table, naming the file, column and rows.
    """
    layout = layout if layout is not None else ImageLayout(image_column=image_column)
    source = Path(path).expanduser().absolute()
    name = source.name
    frame, blobs, blob_names = _read(source, missing_values, layout.image_column)
    if len(frame) == 0:
        raise UserError(f"{name} has no data rows; add one row per image below the header")
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    uses_image_column = layout.image_template is None and not layout.channel_columns
    if uses_image_column and layout.image_column not in frame.columns:
        raise UserError(
            f"{name} has no image column '{layout.image_column}'{_suggest(layout.image_column, columns)}; "
            f"available columns: {_list(columns)}; pass the column that holds the image paths"
        )
    for column in [*required_columns, *layout.columns()]:
        if column not in frame.columns:
            raise UserError(
                f"{name} has no column '{column}'{_suggest(column, columns)}; available columns: "
                f"{_list(columns)}; fix the column name in the config or add the column to the table"
            )

    row_numbers = np.arange(1, len(frame) + 1)
    if rows:
        keep = _apply_filters(frame, rows, name)
        frame = frame.loc[keep]
        row_numbers = row_numbers[keep]
        if blobs is not None:
            chosen = pa.array(np.flatnonzero(keep))
            blobs = blobs.take(chosen)
            blob_names = None if blob_names is None else blob_names.take(chosen)
    frame = frame.reset_index(drop=True)
    row_list = [int(r) for r in row_numbers]

    root_dir = source.parent if root is None else Path(root).expanduser().absolute()
    if root is not None and not root_dir.is_dir():
        raise UserError(f"image root folder {root_dir} (given for {name}) does not exist; pass an existing folder")
    images = build_source(frame, layout, root=root_dir, name=name, row_numbers=row_list, blobs=blobs,
                          blob_names=blob_names, options=read)
    if check_files:
        check_files_exist(images, name, row_list, layout)
    return MetadataTable(source=source, frame=frame, images=images, row_numbers=row_list,
                         image_column=layout.image_column, layout=layout)


def infer_column_kind(series: pd.Series) -> str:
    """Classify a metadata column, ignoring missing values.

    Rules, in order:

    - ``"constant"``: fewer than two distinct non-missing values.
    - numbers (numeric dtype, or an object column whose values are all Python/numpy numbers):
      ``"categorical"`` when every value is a finite integer and there are at most 20 distinct values,
      otherwise ``"continuous"``. Booleans are categorical.
    - strings: ``"multilabel"`` when :func:`metadino.data.values.multilabel_separator` finds a separator
      (``"|"`` or ``";"`` in at least 25 % of the known cells, with labels shared between cells); otherwise
      ``"categorical"``.

    Returns:
        ``"categorical"``, ``"continuous"``, ``"multilabel"`` or ``"constant"``.
    """
    values = series[known_mask(series)]
    distinct = pd.unique(values)
    if len(distinct) < 2:
        return "constant"
    if pd.api.types.is_bool_dtype(values.dtype):
        return "categorical"
    numeric = pd.api.types.is_numeric_dtype(values.dtype) or all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        for v in distinct
    )
    if numeric:
        numbers = np.asarray(distinct, dtype=np.float64)
        integer_valued = bool(np.all(np.isfinite(numbers)) and np.all(numbers == np.round(numbers)))
        if integer_valued and len(distinct) <= MAX_CATEGORICAL_INTEGERS:
            return "categorical"
        return "continuous"
    return "categorical" if multilabel_separator([str(v) for v in values], default=None) is None else "multilabel"


# ----------------------------------------------------------------------------------------- reading


def _read(source: Path, missing_values: Sequence[str],
          image_column: str) -> tuple[pd.DataFrame, pa.Array | None, pa.Array | None]:
    """The table as a DataFrame; for a Parquet image column of bytes, also the bytes and their names as Arrow
    arrays (the frame's column then holds only the names, so the images are never Python objects)."""
    name = source.name
    suffixes = [s.lower() for s in source.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in TABLE_SUFFIXES:
        raise UserError(
            f"table {name} has an unsupported suffix '{source.suffix}'; save it as .csv, .tsv or .parquet"
        )
    if not source.is_file():
        raise UserError(f"table file {source} does not exist; check the path")
    missing = list(missing_values)
    try:
        if suffix in (".parquet", ".pq"):
            return _read_parquet(source, missing, image_column)
        sep = "," if suffix == ".csv" else "\t"
        _check_unique_columns(_header(source, sep), name, "header")
        frame = pd.read_csv(source, sep=sep, keep_default_na=False, na_values=missing, skipinitialspace=False)
        return frame, None, None
    except UserError:
        raise
    except pd.errors.EmptyDataError as err:
        raise UserError(f"table {name} is empty; write a header line and one row per image") from err
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise UserError(
            f"cannot read table {name}: {type(err).__name__}: {err}; check that it is a valid "
            f"{'Parquet' if suffix in ('.parquet', '.pq') else 'UTF-8 ' + ('CSV' if suffix == '.csv' else 'tab-separated')} file"
        ) from err
    except Exception as err:  # pyarrow raises its own error types for corrupt files
        raise UserError(f"cannot read table {name}: {type(err).__name__}: {err}; check the file") from err


def _read_parquet(source: Path, missing: list[str],
                  image_column: str) -> tuple[pd.DataFrame, pa.Array | None, pa.Array | None]:
    import pyarrow.parquet as pq

    name = source.name
    _check_unique_columns(list(pq.read_schema(source).names), name, "schema")
    table = pq.read_table(source)
    blobs = names = None
    if image_column in table.column_names:
        column = table.column(image_column).combine_chunks()
        kind = column.type
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:  # Hugging Face datasets' Image
            blobs = column.field("bytes")
            names = column.field("path") if kind.get_field_index("path") >= 0 else None
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            blobs = column
        if blobs is not None:
            if blobs.null_count:
                empty = [int(i) + 1 for i in np.flatnonzero(blobs.is_null().to_numpy(zero_copy_only=False))]
                raise UserError(f"{name}: image column '{image_column}' has no image bytes in {_rows(empty)}; fill "
                                "them in or remove those rows")
            shown = names if names is not None else pa.array([f"row {i + 1}" for i in range(len(blobs))])
            table = table.set_column(table.column_names.index(image_column), image_column,
                                     pc.fill_null(shown.cast(pa.large_string()), ""))
            blobs = blobs.cast(pa.large_binary())
            names = shown.cast(pa.large_string())
    frame = table.to_pandas()
    return _blank_missing_tokens(frame, missing), blobs, names


def _header(source: Path, sep: str) -> list[str]:
    """The header cells of a delimited file as written (pandas renames a repeated ``a`` to ``a.1`` when it reads the
    header as names): its first record read as data, by the parser, quoting and decompression of the real read."""
    first = pd.read_csv(source, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False)
    return [str(v) for v in first.iloc[0].tolist()] if len(first) else []


def _check_unique_columns(names: Sequence[str], name: str, where: str) -> None:
    """A column name given twice (blank header cells aside) is an error naming it and its positions."""
    seen: dict[str, int] = {}
    for i, column in enumerate(names, start=1):
        if not str(column).strip():
            continue
        if str(column) in seen:
            raise UserError(
                f"{name} has the column '{column}' twice in its {where} (columns {seen[str(column)]} and {i}); "
                "rename or remove one, so that every column has its own name"
            )
        seen[str(column)] = i


def _blank_missing_tokens(frame: pd.DataFrame, missing: list[str]) -> pd.DataFrame:
    """Parquet keeps texts verbatim: turn missing-value tokens in text columns into missing values."""
    if not missing:
        return frame
    tokens = set(missing)
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
            continue
        hit = series.map(lambda v: isinstance(v, str) and v in tokens).astype(bool)
        if hit.any():
            frame[column] = series.mask(hit)
    return frame


# --------------------------------------------------------------------------------------- filtering


def _canonical_wanted(value: Any, numeric_column: bool) -> str:
    """A filter value as the class name it selects; "1" and "1.0" select 1 of a numeric column."""
    if numeric_column and isinstance(value, str):
        try:
            return category_label(float(value.strip()))
        except ValueError:
            return category_label(value)
    return category_label(value)


def _apply_filters(frame: pd.DataFrame, rows: Mapping[str, Any], name: str) -> np.ndarray:
    keep = np.ones(len(frame), dtype=bool)
    applied: list[str] = []
    for column, wanted in rows.items():
        column = str(column)
        shown = f"{column}={_show_wanted(wanted)}"
        if column not in frame.columns:
            cols = [str(c) for c in frame.columns]
            raise UserError(
                f"row filter '{shown}' names column '{column}', which {name} does not have"
                f"{_suggest(column, cols)}; available columns: {_list(cols)}"
            )
        series = frame[column]
        numeric = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
        values = wanted if isinstance(wanted, (list, tuple, set, frozenset)) else [wanted]
        targets = {_canonical_wanted(v, numeric) for v in values}
        present = ~known_mask(series)
        texts = np.array([category_label(v) for v in series.tolist()], dtype=object)
        match = np.array([t in targets for t in texts], dtype=bool) & ~present
        if not (keep & match).any():
            existing = pd.unique(texts[~present]) if (~present).any() else []
            after = f" after {', '.join(applied)}" if applied and match.any() else ""
            raise UserError(
                f"row filter '{shown}' selects no rows of {name}{after}; column '{column}' has values "
                f"{_list([str(v) for v in sorted(existing, key=str)], _SHOW_VALUES)}; fix the filter value"
            )
        keep &= match
        applied.append(shown)
    return keep


def _show_wanted(wanted: Any) -> str:
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in wanted)
    return str(wanted)


# ------------------------------------------------------------------------------------------ wording


def _list(items: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(f"'{i}'" for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _suggest(name: str, choices: Sequence[str]) -> str:
    lowered = {c.lower().strip(): c for c in choices}
    if name.lower().strip() in lowered:
        return f" (did you mean '{lowered[name.lower().strip()]}'?)"
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Paths(Sequence[Path]):
    """A read-only view: row i -> its image file as a Path (made on access, none kept)."""

    def __init__(self, images: ImageSource):
        self._images = images

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if self._images.blobs is not None:
            return Path(self._images.name(int(i)))
        return Path(self._images.files[0][int(i)].as_py())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-sequence semantics: compared by value, not hashable
