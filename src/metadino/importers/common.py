"""What every importer shares: the result a converter returns, reading the dataset's own files, datetime parts, and
writing the table, its ``data:`` snippet and the summary (:func:`run_import`).

A converter only reads; :func:`run_import` checks every output path before any file is written, refuses to write over
a file the converter read (the user's source stays untouched), checks the image files the table names, and writes
each output atomically (a crash leaves the old file or none).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from metadino.errors import UserError
from metadino.files import atomic_write, atomic_write_text, check_output_file

TABLE_OUT_SUFFIXES = (".csv", ".parquet")
AUDIT_MAX_ROWS = 20_000  # the audit's pairwise associations grow with rows x columns²: a sample says as much
_SHOW = 5


@dataclass
class Imported:
    """A converter's result: the table and how metadino should read it.

    Attributes:
        layout: the layout name (``wilds-fmow``...), for messages.
        frame: the table to write, one row per image (or per stacked-array item).
        source_name: the file whose rows the table rows come from (messages say "<source_name> row N").
        source_rows: per table row, its "row N" in ``source_name`` (1-based data rows, the header not counted).
        root: the folder relative image paths start from (``data.root``).
        data: the ``data:`` keys besides ``table`` and ``root`` (``image_column``, or ``image_template`` +
            ``channels``, or ``index_column``), in the order they are written.
        files: per table row, the image files it names (relative to ``root`` unless absolute), for the file check.
        labels: the dataset's task label column(s), given to the audit as labels.
        audit_image_column: the column the audit treats as the row's identifier (the image column, or the id that
            a path template is built from).
        split_column: the column holding the dataset's split, if any (the snippet suggests ``rows`` on it).
        train_split: the split value the snippet suggests training on.
        sources: every file the converter read (outputs may never replace one of them).
        arrays: extra outputs to write (MedMNIST's stacked ``.npy`` files): path -> array.
        notes: lines for the summary (rows dropped and why, remote paths...).
    """

    layout: str
    frame: pd.DataFrame
    source_name: str
    source_rows: list[int]
    root: Path
    data: dict[str, Any]
    files: list[list[str]]
    labels: list[str]
    audit_image_column: str
    split_column: str | None = None
    train_split: str = "train"
    sources: list[Path] = field(default_factory=list)
    arrays: dict[Path, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Converter = Callable[[Path, Path | None, Path], Imported]
"""``convert(source, images, out_dir)``: `images` is the ``--images`` folder or None, `out_dir` the table's folder."""


# ------------------------------------------------------------------------------------------ reading


def find_file(folder: Path, names: Sequence[str], what: str) -> Path:
    """The first of `names` that exists in `folder` (the dataset may ship a file plain or gzipped)."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder} has no {what} ({' or '.join(names)}); pass the dataset folder as it was unpacked")


def source_folder(source: Path, marker: str, layout: str) -> Path:
    """The dataset folder: `source` itself, or the folder of `source` when it names the marker file."""
    if source.is_file() and source.name == marker:
        return source.parent
    if not source.exists():
        raise UserError(f"{layout} source {source} does not exist; pass the dataset folder (the one holding {marker})")
    if not source.is_dir():
        raise UserError(f"{layout} source {source} is not a folder; pass the dataset folder holding {marker}")
    return source


def read_csv(path: Path, required: Sequence[str], *, dtype: dict[str, Any] | type | None = None) -> pd.DataFrame:
    """A CSV of the dataset (plain or compressed, as pandas infers from the suffix), cells as written: missing cells
    are NaN, nothing else is read as missing (a category ``None`` stays a category). The `required` columns must
    be there."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the dataset folder as it was unpacked")
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=dtype)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path.name} is empty; the dataset file is incomplete, download it again") from None
    except (OSError, ValueError, UnicodeDecodeError, EOFError, pd.errors.ParserError) as err:
        raise UserError(f"cannot read {path.name}: {type(err).__name__}: {err}; download the file again") from None
    frame.columns = [str(c) for c in frame.columns]
    check_columns(frame, required, path.name)
    return frame


def check_columns(frame: pd.DataFrame, required: Sequence[str], name: str) -> None:
    """Every `required` column exists in `frame`, or one sentence naming the missing ones and the file."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(
            f"{name} has no column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
            f"(its columns: {', '.join(repr(c) for c in list(frame.columns)[:30])}); is it the file this layout "
            f"ships?"
        )


def check_no_missing(frame: pd.DataFrame, columns: Sequence[str], name: str, rows: Sequence[int]) -> None:
    """Columns an image path is built from must be filled in every row."""
    for column in columns:
        empty = [rows[int(i)] for i in np.flatnonzero(frame[column].isna().to_numpy())]
        if empty:
            raise UserError(f"{name}: column '{column}' is empty in {rows_text(empty)}; the image path is built from "
                            f"it — fill it in or remove those rows")


def rows_text(rows: Sequence[int]) -> str:
    """'row 4' / 'rows 3, 7, 9 (3 rows)' / 'rows 1, 2, 3, 4, 5 and 7 more (12 rows)'."""
    rows = list(rows)
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(str(r) for r in rows[:_SHOW])
    more = f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
    return f"rows {shown}{more} ({len(rows)} rows)"


def int_text(value: Any) -> str:
    """A number cell as written in a path: 3.0 -> '3' (a CSV column with a gap is read as floats)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


# -------------------------------------------------------------------------------------- date and time


def add_time_parts(frame: pd.DataFrame, column: str, *, name: str, rows: Sequence[int], strict: bool,
                   notes: list[str], parsed: pd.Series | None = None) -> None:
    """Add ``year``, ``month`` and ``hour`` (hour of day, 0-23) from a datetime column.

    Timestamps with a zone are taken in UTC; naive ones (camera-trap clocks) as written. With `strict`, a cell that
    is not a date is an error naming the row; otherwise it gets empty parts and a note (camera-trap datasets carry
    some broken clocks). `parsed` may give the datetimes already parsed (MIMIC's date and time columns).
    """
    when = _parse_datetimes(frame[column]) if parsed is None else parsed
    bad = [rows[int(i)] for i in np.flatnonzero((when.isna() & frame[column].notna()).to_numpy())]
    if bad and strict:
        example = frame[column].iloc[rows.index(bad[0])]
        raise UserError(f"{name}: column '{column}' is not a date and time in {rows_text(bad)} (e.g. '{example}'); "
                        f"fix those cells or remove the rows")
    if bad:
        notes.append(f"'{column}' is not a date and time in {name} {rows_text(bad)}: year/month/hour left empty")
    frame["year"] = when.dt.year.astype("Int64")
    frame["month"] = when.dt.month.astype("Int64")
    frame["hour"] = when.dt.hour.astype("Int64")


def _parse_datetimes(values: pd.Series) -> pd.Series:
    """ISO 8601 first (fast, and what most datasets write), then each remaining cell on its own (EXIF
    ``2013:10:04 13:31:53``, other orders); unparseable cells become NaT."""
    text = values.astype("string").str.strip()
    when = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    left = when.isna() & text.notna()
    if left.any():
        exif = text[left].str.replace(r"^(\d{4}):(\d{2}):(\d{2})", r"\1-\2-\3", regex=True)
        when[left] = pd.to_datetime(exif, errors="coerce", utc=True, format="mixed")
    return when


# ------------------------------------------------------------------------------------------- writing


def snippet_path(out: Path) -> Path:
    """``meta.csv`` -> ``meta.data.yaml`` beside it."""
    return out.with_name(out.stem + ".data.yaml")


def check_outputs(out: Path, imported: Imported | None, *, overwrite: bool) -> None:
    """Every output may be written: a known table suffix, no existing file without `overwrite`, never a source."""
    if out.suffix.lower() not in TABLE_OUT_SUFFIXES:
        raise UserError(f"--out '{out}' must end in .csv or .parquet (the table metadino reads)")
    outputs = [(out, "--out"), (snippet_path(out), "the data: snippet")]
    if imported is not None:
        outputs += [(p, "the stacked images") for p in imported.arrays]
    for path, flag in outputs:
        check_output_file(path, overwrite=overwrite, flag=flag)
    if imported is not None:
        read = {os.path.normcase(os.path.abspath(p)) for p in imported.sources}
        for path, _ in outputs:
            if os.path.normcase(os.path.abspath(path)) in read:
                raise UserError(f"{path} is a file of the {imported.layout} dataset being read; write the table "
                                f"elsewhere, the dataset's own files are never replaced")


def missing_files(imported: Imported) -> str | None:
    """A sentence naming the rows whose image files do not exist, or None. Remote paths (``s3://``...) are not
    checked (a note says so)."""
    missing: list[int] = []
    example = ""
    remote = 0
    for row, files in zip(imported.source_rows, imported.files):
        for f in files:
            if "://" in f:
                remote += 1
                continue
            p = Path(f) if os.path.isabs(f) else imported.root / f
            if not os.path.isfile(p):
                missing.append(row)
                example = example or str(p)
                break
    if remote:
        imported.notes.append(f"{remote} image paths are URLs and were not checked; download the images and point "
                              f"the path columns (or data.root) at the local copies before training")
    if not missing:
        return None
    return (f"image files named by {imported.source_name} do not exist for {rows_text(missing)} (e.g. {example}); "
            f"pass --images with the folder that holds them, or --no-check-files to write the table anyway")


def write_outputs(out: Path, imported: Imported) -> Path:
    """Write the stacked arrays, the table and the snippet (each atomically); returns the snippet's path."""
    try:
        return _write_outputs(out, imported)
    except OSError as err:  # a read-only folder, a full disk: one sentence, and no half-written file behind
        raise UserError(f"cannot write {err.filename or out}: {err.strerror or err}; choose another --out") from None


def _uniform_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns whose cells mix numbers and text (a JSON ``location`` that is 3 here and "A3" there) as text, which
    Parquet requires and which keeps 3 and "3" one class."""
    frame = frame.copy()
    for column in frame.columns:
        series = frame[column]
        if series.dtype == object:
            kinds = {type(v) for v in series.dropna()}
            if len(kinds) > 1:
                frame[column] = series.map(lambda v: v if pd.isna(v) else str(v))
    return frame


def _write_outputs(out: Path, imported: Imported) -> Path:
    for path, array in imported.arrays.items():
        path.parent.mkdir(parents=True, exist_ok=True)

        def save(tmp: Path, array: np.ndarray = array) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the temporary name
                np.save(f, array)

        atomic_write(path, save)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = _uniform_columns(imported.frame)
    if out.suffix.lower() == ".parquet":
        atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False, na_rep=""))
    snippet = snippet_path(out)
    atomic_write_text(snippet, snippet_text(out, imported))
    return snippet


def snippet_text(out: Path, imported: Imported) -> str:
    """The ``data:`` block to paste into a config: absolute paths, so it works wherever the config lives."""
    data: dict[str, Any] = {"table": str(out.absolute()), "root": str(imported.root.absolute()), **imported.data}
    lines = [f"# written by `metadino import {imported.layout}`: paste this data: block into a training config."]
    split = imported.split_column
    if split is not None and split in imported.frame.columns:
        values = sorted({str(v) for v in imported.frame[split].dropna()})
        if imported.train_split in values:
            data["rows"] = {split: imported.train_split}
            lines.append(f"# rows: train on the '{imported.train_split}' split (column '{split}' holds "
                         f"{', '.join(values)}); evaluate on the others.")
    block: str = yaml.safe_dump({"data": data}, sort_keys=False, allow_unicode=True)
    return "\n".join(lines) + "\n" + block


# ------------------------------------------------------------------------------------------- summary


def audit_imported(out: Path, imported: Imported) -> Any:
    """The table audit of :mod:`metadino.audit` on the written table (a fixed sample of at most
    :data:`AUDIT_MAX_ROWS` rows), with the dataset's label column(s) as labels. A label with one class in these rows
    is audited as an ordinary column rather than refused."""
    import pyarrow as pa

    from metadino.audit import audit_table
    from metadino.data.sources import ImageSource
    from metadino.data.table import MetadataTable

    frame = imported.frame
    if len(frame) > AUDIT_MAX_ROWS:
        frame = frame.sample(n=AUDIT_MAX_ROWS, random_state=0).sort_index()
    frame = frame.reset_index(drop=True)
    images = ImageSource(files=[pa.array([""] * len(frame), type=pa.large_string())])  # the audit reads no images
    table = MetadataTable(source=out.absolute(), frame=frame, images=images,
                          row_numbers=list(range(1, len(frame) + 1)), image_column=imported.audit_image_column)
    labels = [c for c in imported.labels if c in frame.columns and frame[c].nunique(dropna=True) >= 2]
    return audit_table(table, labels=labels)


def summary_text(out: Path, snippet: Path, imported: Imported, audit: Any) -> str:
    """Rows and columns written, and which columns look informative or spurious (with the audit's reasons)."""
    frame = imported.frame
    lines = [
        f"metadino import {imported.layout}: wrote {len(frame)} rows to {out}",
        f"  data: block for a config in {snippet}",
        f"  columns ({len(frame.columns)}): {', '.join(str(c) for c in frame.columns)}",
    ]
    if len(frame) > AUDIT_MAX_ROWS:
        lines.append(f"  (roles below from an audit of {AUDIT_MAX_ROWS} sampled rows)")
    for role in ("informative", "spurious"):
        cols = [c for c in audit.columns.values() if c.role == role]
        shown = "; ".join(f"{c.name} ({c.reason})" for c in cols) if cols else "none found"
        lines.append(f"  looks {role}: {shown}")
    others = [c for c in audit.columns.values() if c.role not in ("informative", "spurious")]
    if others:
        lines.append("  other columns: " + ", ".join(f"{c.name} ({c.role})" for c in others))
    for e in audit.entanglements:
        lines.append(f"  entangled: {e.message}")
    for note in [*imported.notes, *audit.notes]:
        lines.append(f"  note: {note}")
    column = "" if imported.audit_image_column == "path" else f" --image-column {imported.audit_image_column}"
    lines.append(f"  next: metadino inspect --table {out}{column} for the full audit and a suggested guidance: block")
    return "\n".join(lines)
