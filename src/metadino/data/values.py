"""How a metadata cell is read: missing or not, its class name, its multi-label tokens.

One rule each, used by training (``metadino.data.targets``, whose classes are saved in ``vocab.json``),
evaluation and the table audit alike, so that a class has the same name wherever it is counted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, overload

import numpy as np
import pandas as pd

MULTILABEL_SEPARATORS: tuple[str, ...] = ("|", ";")
MULTILABEL_MIN_FRACTION = 0.25
DEFAULT_SEPARATOR = "|"  # the guide config's default


def is_missing(value: Any) -> bool:
    """Missing: None, ``pd.NA``, ``pd.NaT``, a NaN float (Python or NumPy), a NaT datetime, a blank string."""
    if isinstance(value, str):
        return value.strip() == ""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    if isinstance(value, (np.datetime64, np.timedelta64)):
        return bool(np.isnat(value))
    return False


def known_mask(values: Iterable[Any]) -> np.ndarray:
    """[N] bool, True where a cell is not :func:`is_missing`."""
    if isinstance(values, pd.Series) and (
        pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_datetime64_any_dtype(values.dtype)
    ):
        mask: np.ndarray = values.notna().to_numpy()
        return mask  # no strings in these dtypes: NaN/NA/NaT is the whole rule, vectorised
    return np.asarray([not is_missing(v) for v in values], dtype=bool)


def category_label(value: Any) -> str:
    """Class name of a known cell: integer-valued numbers lose their ``.0`` (3, 3.0 and "3" are one class),
    text is stripped of surrounding whitespace."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def split_labels(cell: Any, separator: str = DEFAULT_SEPARATOR) -> list[str]:
    """Labels of a known multi-label cell: split on `separator`, each stripped, blanks dropped (``"a| b|"`` ->
    ``["a", "b"]``)."""
    return [t for t in (p.strip() for p in str(cell).split(separator)) if t]


@overload
def multilabel_separator(cells: Sequence[Any], default: str = ...) -> str: ...
@overload
def multilabel_separator(cells: Sequence[Any], default: None) -> str | None: ...
def multilabel_separator(cells: Sequence[Any], default: str | None = DEFAULT_SEPARATOR) -> str | None:
    """The separator of multi-label cells, or `default` when the cells are not multi-label.

    The first of ``("|", ";")`` that at least 25 % of the known cells contain **and** whose labels are shared
    between cells (no more distinct labels than distinct cells: free text that merely contains the separator
    has more distinct pieces than cells).
    """
    texts = [str(v) for v in cells if not is_missing(v)]
    if not texts:
        return default
    distinct = set(texts)
    for sep in MULTILABEL_SEPARATORS:
        if sum(sep in t for t in texts) < MULTILABEL_MIN_FRACTION * len(texts):
            continue
        if len({label for t in distinct for label in split_labels(t, sep)}) <= len(distinct):
            return sep
    return default


__all__ = [
    "DEFAULT_SEPARATOR", "MULTILABEL_MIN_FRACTION", "MULTILABEL_SEPARATORS", "category_label", "is_missing",
    "known_mask", "multilabel_separator", "split_labels",
]
