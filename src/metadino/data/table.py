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
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metadino.data.images import IMAGE_SUFFIXES
from metadino.data.values import category_label, is_missing, known_mask, multilabel_separator
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
        frame: the selected rows, index reset to ``0..n-1``, all original columns, missing values kept.
        paths: resolved absolute image path per selected row.
        row_numbers: each selected row's "row N" in the user's file (module docstring).
        image_column: the column that holds the image paths.
    """

    source: Path
    frame: pd.DataFrame
    paths: list[Path]
    row_numbers: list[int]
    image_column: str

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> MetadataTable:
        """The rows at `indices` (positions ``0..n-1`` of this selection, kept in the given order); each keeps its
        "row N" and path, so messages and :meth:`fingerprint` follow the rows that remain."""
        idx = [int(i) for i in indices]
        frame = self.frame.iloc[idx].reset_index(drop=True)
        return MetadataTable(source=self.source, frame=frame, paths=[self.paths[i] for i in idx],
                             row_numbers=[self.row_numbers[i] for i in idx], image_column=self.image_column)

    def fingerprint(self) -> str:
        """Short sha256 over the selection's content, for run provenance (resume) and the feature cache.

        It covers the column names and dtypes, every cell of the selected rows (pandas' vectorised hash, about a
        second per million rows), their "row N" numbers and image paths. Not the file's mtime or size: a table
        rewritten with identical content keeps its fingerprint; any changed cell, column or selection changes it.
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
        for path in self.paths:
            h.update(str(path).encode() + b"\0")
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
    image_column: str,
    root: str | Path | None = None,
    rows: Mapping[str, Any] | None = None,
    required_columns: Sequence[str] = (),
    missing_values: Sequence[str] = DEFAULT_MISSING_VALUES,
    check_files: bool = True,
) -> MetadataTable:
    """Read a metadata table, select rows and validate it before any compute.

    Args:
        path: ``.csv`` (comma), ``.tsv``/``.txt``/``.tab`` (tab) — optionally compressed, e.g. ``.csv.gz`` —
            or ``.parquet``/``.pq``.
        image_column: column holding image paths.
        root: folder that relative image paths are resolved against; defaults to the table's folder.
        rows: filter ``{column: value or list of values}``; all filters must hold (AND). Values are
            compared as class names (:func:`metadino.data.values.category_label`: integer-valued numbers
            without ``.0``, text stripped), so ``{"split": "1"}`` matches an integer column.
        required_columns: columns that must exist (e.g. guide columns named in a config).
        missing_values: cell texts read as missing.
        check_files: check that every selected image file exists.

    Raises:
        UserError: on any problem with the table, naming the file, column and rows.
    """
    source = Path(path).expanduser().absolute()
    name = source.name
    frame = _read(source, missing_values)
    if len(frame) == 0:
        raise UserError(f"{name} has no data rows; add one row per image below the header")
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if image_column not in frame.columns:
        raise UserError(
            f"{name} has no image column '{image_column}'{_suggest(image_column, columns)}; "
            f"available columns: {_list(columns)}; pass the column that holds the image paths"
        )
    for column in required_columns:
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
    frame = frame.reset_index(drop=True)
    row_list = [int(r) for r in row_numbers]

    root_dir = source.parent if root is None else Path(root).expanduser().absolute()
    if root is not None and not root_dir.is_dir():
        raise UserError(f"image root folder {root_dir} (given for {name}) does not exist; pass an existing folder")
    paths = _resolve_paths(frame[image_column], row_list, root_dir, name, image_column)
    _check_paths(paths, row_list, name, image_column, check_files)
    return MetadataTable(source=source, frame=frame, paths=paths, row_numbers=row_list, image_column=image_column)


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


def _read(source: Path, missing_values: Sequence[str]) -> pd.DataFrame:
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
            import pyarrow.parquet as pq

            _check_unique_columns(list(pq.read_schema(source).names), name, "schema")
            frame = pd.read_parquet(source)
            return _blank_missing_tokens(frame, missing)
        sep = "," if suffix == ".csv" else "\t"
        _check_unique_columns(_header(source, sep), name, "header")
        return pd.read_csv(source, sep=sep, keep_default_na=False, na_values=missing, skipinitialspace=False)
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


# ------------------------------------------------------------------------------------------- paths


def _resolve_paths(
    cells: pd.Series, row_numbers: list[int], root: Path, name: str, column: str
) -> list[Path]:
    empty: list[int] = []
    paths: list[Path] = []
    for cell, row in zip(cells.tolist(), row_numbers):
        text = "" if is_missing(cell) else str(cell).strip()
        if not text:
            empty.append(row)
            paths.append(Path())
            continue
        p = Path(text).expanduser()
        # normpath, not resolve(): keeps the user's symlinks and costs no file-system calls.
        paths.append(Path(os.path.normpath(p if p.is_absolute() else root / p)))
    if empty:
        raise UserError(
            f"{name}: column '{column}' is empty in {_rows(empty)}; fill in the image path or remove those rows"
        )
    return paths


def _check_paths(paths: list[Path], row_numbers: list[int], name: str, column: str, check_files: bool) -> None:
    bad_suffix = [r for p, r in zip(paths, row_numbers) if p.suffix.lower() not in IMAGE_SUFFIXES]
    if bad_suffix:
        example = paths[row_numbers.index(bad_suffix[0])].name
        raise UserError(
            f"{name}: column '{column}' names files with an unsupported image type in {_rows(bad_suffix)} "
            f"(e.g. '{example}'); supported: {', '.join(IMAGE_SUFFIXES)} — convert the images or fix the paths"
        )
    first_row: dict[Path, int] = {}
    duplicates: list[tuple[int, int, Path]] = []
    for p, r in zip(paths, row_numbers):
        if p in first_row:
            duplicates.append((first_row[p], r, p))
        else:
            first_row[p] = r
    if duplicates:
        a, b, p = duplicates[0]
        dup_rows = sorted({r for d in duplicates for r in d[:2]})
        raise UserError(
            f"{name}: column '{column}' repeats image paths in {_rows(dup_rows)} (e.g. row {a} and row {b} "
            f"both point to {p}); keep one row per image"
        )
    if check_files:
        missing = [r for p, r in zip(paths, row_numbers) if not os.path.isfile(p)]
        if missing:
            missing_path = paths[row_numbers.index(missing[0])]
            raise UserError(
                f"{name}: image files named in column '{column}' do not exist in {_rows(missing)} "
                f"(e.g. {missing_path}); fix the paths, pass the right root folder, or remove those rows"
            )


# ------------------------------------------------------------------------------------------ wording


def _rows(numbers: Sequence[int]) -> str:
    """'row 4' / 'rows 3, 7, 9, 12, 15 and 4 more (9 rows)' (row numbering in the module docstring)."""
    numbers = sorted(numbers)
    if len(numbers) == 1:
        return f"row {numbers[0]}"
    shown = ", ".join(str(n) for n in numbers[:_SHOW_ROWS])
    if len(numbers) <= _SHOW_ROWS:
        return f"rows {shown} ({len(numbers)} rows)"
    return f"rows {shown} and {len(numbers) - _SHOW_ROWS} more ({len(numbers)} rows)"


def _list(items: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(f"'{i}'" for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _suggest(name: str, choices: Sequence[str]) -> str:
    lowered = {c.lower().strip(): c for c in choices}
    if name.lower().strip() in lowered:
        return f" (did you mean '{lowered[name.lower().strip()]}'?)"
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
