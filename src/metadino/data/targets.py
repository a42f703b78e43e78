"""Metadata columns -> tensors for guide heads, each with a validity mask.

Encodings are built once from the training table and saved with the run (``vocab.json``, read back by
:func:`load_vocab`). Cells are read by :mod:`metadino.data.values`, the rules evaluation and the audit use
too, so a class has the same name everywhere. A missing cell (empty, NaN, a declared missing token) or
a category unseen when the vocabulary was built is *invalid*: it is masked out of that guide's loss
and prototype update, never imputed as class 0.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from metadino.data.table import MAX_CATEGORICAL_INTEGERS, MetadataTable, infer_column_kind
from metadino.data.values import DEFAULT_SEPARATOR, category_label, is_missing, known_mask, split_labels
from metadino.errors import UserError
from metadino.files import atomic_write_text

Kind = Literal["categorical", "multilabel", "continuous"]

FLOAT32_MAX = float(np.finfo(np.float32).max)  # a continuous value beyond it overflows the float32 target
NEARLY_ALL_DISTINCT = 0.9  # a float column with distinct values in this share of its rows is no set of classes
_SHOW = 5


def is_usable_number(value: float) -> bool:
    """Finite and representable in float32 (``1e308`` is not: it becomes inf)."""
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


@dataclass
class ColumnEncoder:
    """How one metadata column becomes a target tensor."""

    column: str
    kind: Kind
    classes: list[str] = field(default_factory=list)
    separator: str = DEFAULT_SEPARATOR
    minimum: float | None = None
    maximum: float | None = None

    @property
    def n_outputs(self) -> int:
        return 1 if self.kind == "continuous" else len(self.classes)

    def encode(self, series: pd.Series) -> tuple[torch.Tensor, torch.Tensor]:
        """All rows at once -> (values, valid). categorical: int64 [N]; multilabel: float [N, C]; continuous: float [N]."""
        n = len(series)
        valid = torch.zeros(n, dtype=torch.bool)
        if self.kind == "continuous":
            values = torch.zeros(n, dtype=torch.float32)
            for i, v in enumerate(series.tolist()):
                # non-finite or float32-overflowing values are invalid (build_encoder refuses them in the table)
                if not is_missing(v) and is_usable_number(float(v)):
                    values[i] = float(v)
                    valid[i] = True
            return values, valid
        index = {c: i for i, c in enumerate(self.classes)}
        if self.kind == "categorical":
            values = torch.zeros(n, dtype=torch.long)
            for i, v in enumerate(series.tolist()):
                j = None if is_missing(v) else index.get(category_label(v))
                if j is not None:
                    values[i] = j
                    valid[i] = True
            return values, valid
        values = torch.zeros(n, len(self.classes), dtype=torch.float32)
        for i, v in enumerate(series.tolist()):
            if is_missing(v):
                continue
            hits = [index[t] for t in split_labels(v, self.separator) if t in index]
            if hits:
                values[i, hits] = 1.0
                valid[i] = True
        return values, valid

    def one_hot(self, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Conditioning input for `given:` columns: one-hot / multi-hot / [0,1]-scaled value, zeros if invalid."""
        if self.kind == "categorical":
            out = torch.nn.functional.one_hot(values, len(self.classes)).float()
        elif self.kind == "multilabel":
            out = values.float()
        else:
            lo, hi = self.minimum or 0.0, self.maximum if self.maximum is not None else 1.0
            out = ((values.float() - lo) / (hi - lo + 1e-8)).unsqueeze(-1)
        return out * valid.unsqueeze(-1).to(out.dtype)

    @property
    def condition_dim(self) -> int:
        return self.n_outputs


def _numeric(series: pd.Series, table: MetadataTable, column: str) -> pd.Series:
    numbers = pd.to_numeric(series.where(known_mask(series)), errors="coerce")
    bad = [i for i, (raw, num) in enumerate(zip(series.tolist(), numbers.tolist())) if not is_missing(raw) and pd.isna(num)]
    if bad:
        rows = ", ".join(str(table.row_numbers[i]) for i in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UserError(
            f"{table.source.name}: column '{column}' is used as a continuous target but has non-numeric values "
            f"in row(s) {rows}{more}, e.g. {series.iloc[bad[0]]!r}; fix them or use a classification guide."
        )
    return numbers


def _rows_of(table: MetadataTable, positions: list[int]) -> str:
    rows = ", ".join(str(table.row_numbers[i]) for i in positions[:_SHOW])
    return rows + (f" (and {len(positions) - _SHOW} more)" if len(positions) > _SHOW else "")


def _check_finite(numbers: pd.Series, table: MetadataTable, column: str, purpose: str) -> None:
    """inf, -inf and values overflowing float32 (e.g. 1e308) are an error naming the column and rows."""
    bad = [i for i, v in enumerate(numbers.tolist()) if not pd.isna(v) and not is_usable_number(float(v))]
    if bad:
        raise UserError(
            f"{table.source.name}: column '{column}' (needed by {purpose}) is used as a continuous value but holds "
            f"infinite or too large numbers (beyond ±{FLOAT32_MAX:.3g}, the float32 range) in row(s) "
            f"{_rows_of(table, bad)}, e.g. {table.frame[column].iloc[bad[0]]!r}; fix them, or leave the cells empty "
            "to mark them missing."
        )


def _check_float_classes(series: pd.Series, table: MetadataTable, column: str, purpose: str) -> None:
    """A float column as classes (see :func:`build_encoder`): refused when nearly every value is distinct, warned
    when it has many distinct values."""
    known = series[known_mask(series)]
    if pd.api.types.is_bool_dtype(known.dtype) or not pd.api.types.is_numeric_dtype(known.dtype) or len(known) == 0:
        return
    numbers = known.to_numpy(dtype=np.float64)
    finite = numbers[np.isfinite(numbers)]
    if np.all(finite == np.round(finite)):
        return  # integer-valued: ids, wells, levels
    n, distinct = len(numbers), len(pd.unique(numbers))
    if distinct >= NEARLY_ALL_DISTINCT * n:
        raise UserError(
            f"{table.source.name}: column '{column}' (needed by {purpose}) holds fractional numbers with {distinct} "
            f"distinct values in {n} rows; as classes (the default classification head) nearly every row would be "
            "its own class. Set head: regression for this guide, or bin the column into a few classes."
        )
    if distinct > MAX_CATEGORICAL_INTEGERS:
        warnings.warn(
            f"{table.source.name}: column '{column}' (needed by {purpose}) holds fractional numbers and becomes "
            f"{distinct} classes, one per distinct value; if it is a measurement, set head: regression for this guide.",
            UserWarning, stacklevel=3,
        )


def build_encoder(
    table: MetadataTable, column: str, *, kind: Kind | None = None, separator: str = DEFAULT_SEPARATOR, purpose: str = "guide"
) -> ColumnEncoder:
    """Infer (or check) the kind of `column` and build its encoder from the table's rows.

    Args:
        kind: what the consumer needs; None infers it from the column (for `given:` columns).
        purpose: wording for messages, e.g. "guide 'plate'".

    A continuous column must hold finite numbers within the float32 range: ``inf``, ``-inf`` or ``1e308`` in any
    selected row is a UserError naming the column and rows (a regression target or conditioning input never holds
    them). A column of fractional numbers (numeric, at least one value not an integer) encoded as classes gets one
    class per distinct value, so: it is refused, with the fix (``head: regression``), when its distinct values number
    at least :data:`NEARLY_ALL_DISTINCT` (90 %) of its known rows; it is warned about when it has more than
    ``MAX_CATEGORICAL_INTEGERS`` (20) distinct values; a few levels (doses 0.1 / 0.5 / 1.0) pass silently.
    """
    if column not in table.frame.columns:
        raise UserError(f"{table.source.name} has no column '{column}' (needed by {purpose}); columns: {', '.join(map(str, table.frame.columns))}.")
    series = table.frame[column]
    inferred = infer_column_kind(series)
    if inferred == "constant":
        raise UserError(
            f"{table.source.name}: column '{column}' (needed by {purpose}) has fewer than two distinct values in the selected rows; "
            "it cannot guide anything."
        )
    kind = kind or ("multilabel" if inferred == "multilabel" else "continuous" if inferred == "continuous" else "categorical")
    if kind == "continuous":
        numbers = _numeric(series, table, column)  # text cells are an error naming their rows
        _check_finite(numbers, table, column, purpose)
        return ColumnEncoder(column, "continuous", minimum=float(numbers.min()), maximum=float(numbers.max()))
    if kind == "categorical":
        _check_float_classes(series, table, column, purpose)
    return ColumnEncoder(column, kind, classes=class_names(series, kind, separator), separator=separator)


def class_names(series: pd.Series, kind: Kind, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """Sorted classes of a categorical column (category labels) or a multilabel one (labels of its cells)."""
    present = [v for v in series.tolist() if not is_missing(v)]
    if kind == "multilabel":
        return sorted({t for v in present for t in split_labels(v, separator)})
    return sorted({category_label(v) for v in present})


@dataclass
class TableTargets:
    """Encoded targets of every guided or conditioning column, indexed like the table's rows."""

    encoders: dict[str, ColumnEncoder]
    values: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]

    @classmethod
    def from_table(cls, table: MetadataTable, encoders: dict[str, ColumnEncoder]) -> TableTargets:
        values, valid = {}, {}
        for name, enc in encoders.items():
            values[name], valid[name] = enc.encode(table.frame[enc.column])
        return cls(encoders, values, valid)

    def row(self, index: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {k: (self.values[k][index], self.valid[k][index]) for k in self.encoders}


def save_vocab(path: str | Path, encoders: dict[str, ColumnEncoder]) -> None:
    """Write the encoders as JSON, atomically (a crash leaves the earlier file or none, never half of one)."""
    atomic_write_text(Path(path), json.dumps({k: asdict(v) for k, v in encoders.items()}, indent=2) + "\n")


def load_vocab(path: str | Path) -> dict[str, ColumnEncoder]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"vocabulary file '{path}' cannot be read: {e}.") from None
    return {k: ColumnEncoder(**v) for k, v in data.items()}
