"""Neighbour purity: what an embedding's cosine k-NN graph groups together.

The graph is leave-one-out (:func:`metadino.eval.knn.knn_neighbours`: each row's k nearest *other* rows by
cosine similarity; k defaults to 20). Two yardsticks read it:

- **k-NN accuracy** of a metadata column: each row's value is predicted by an unweighted majority vote of its
  k neighbours (ties go to the class of the nearest tied neighbour); plain and balanced accuracy, chance
  ``1 / n_classes`` for the balanced one. Unlike the k-NN probe of `metadino eval`, which votes train rows for
  test rows, this asks how pure each row's own neighbourhood is.
- **same-group share among same-label neighbours**: for each row, among its k neighbours that share its label,
  the share that also share its group (e.g. plate). Averaged over the rows with at least one same-label
  neighbour, next to the share expected by chance: for each of those rows, the fraction of all *other* rows
  with its label that also have its group. A share well above chance means the embedding groups images by
  acquisition batch inside a class — the entangled factor FINO (arXiv 2606.05107) says to measure before
  suppressing anything.

k-NN accuracy takes categorical columns (integer ids such as plate numbers included); continuous and
multi-label columns are refused. Cells are compared as category labels (3, 3.0 and "3" are one value; for the
same-group share a multi-label cell is one value, its label set). Rows with a missing value in a column (label or group for the share) are left out of the graph
for that yardstick and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score

from metadino.data.table import infer_column_kind
from metadino.data.values import category_label, is_missing, known_mask
from metadino.errors import UserError
from metadino.eval.knn import knn_neighbours

DEFAULT_K = 20


@dataclass
class KnnPurity:
    """Leave-one-out k-NN majority-vote accuracy of one column.

    Attributes:
        column: the column.
        accuracy, balanced_accuracy: of the votes over the known rows.
        chance: ``1 / n_classes``, the balanced accuracy of a vote that knows nothing.
        n_rows: rows with a known value (the graph's rows); n_missing: rows left out.
        n_classes: distinct known values.
        k: neighbours per row (``min(k, n_rows - 1)``).
    """

    column: str
    accuracy: float
    balanced_accuracy: float
    chance: float
    n_rows: int
    n_missing: int
    n_classes: int
    k: int


@dataclass
class SameGroupShare:
    """Share of same-label neighbours that also share the group, next to its chance level.

    Attributes:
        label_column, group_column: the columns.
        value: mean over queries of (same-label-and-group neighbours / same-label neighbours).
        chance: mean over the same queries of (other rows with the label and group / other rows with the label).
        n_queries: rows with at least one same-label neighbour (the rows averaged over).
        n_rows: rows with a known label and group (the graph's rows); n_missing: rows left out.
        k: neighbours per row.
    """

    label_column: str
    group_column: str
    value: float
    chance: float
    n_queries: int
    n_rows: int
    n_missing: int
    k: int


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, int]:
    labels = np.asarray([category_label(v) for v in values], dtype=object)
    names, codes = np.unique(labels, return_inverse=True)
    return codes.astype(np.int64), len(names)


Graphs = dict[bytes, np.ndarray]


def _graph(features: np.ndarray | torch.Tensor, rows: np.ndarray, k: int, device: str, graphs: Graphs | None) -> np.ndarray:
    """The k-NN graph of `rows`; with `graphs`, built once per row selection (columns without missing cells
    share one graph: it costs N² x D)."""
    key = rows.tobytes()
    if graphs is not None and key in graphs:
        return graphs[key]
    x = torch.as_tensor(np.asarray(features)[rows] if isinstance(features, np.ndarray) else features[torch.from_numpy(rows)])
    graph = knn_neighbours(x, k=k, device=device).numpy()
    if graphs is not None:
        graphs[key] = graph
    return graph


def _check(features: np.ndarray | torch.Tensor, n: int, k: int) -> None:
    if features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"features must be [N, D] with N = {n} rows, got shape {tuple(features.shape)}")
    if k < 1:
        raise UserError(f"neighbour purity needs k >= 1, got {k}")


def majority_vote(neighbour_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """[N] the most frequent class of each row of `neighbour_labels` [N, k] (nearest first); a tie goes to the
    class of the nearest tied neighbour."""
    n = neighbour_labels.shape[0]
    counts = np.zeros((n, n_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), neighbour_labels.shape[1]), neighbour_labels.ravel()), 1)
    tied = counts == counts.max(axis=1, keepdims=True)
    first = tied[np.arange(n)[:, None], neighbour_labels].argmax(axis=1)
    votes: np.ndarray = neighbour_labels[np.arange(n), first]
    return votes


def check_categorical(values: pd.Series, column: str) -> list[Any]:
    """The known cells of a column fit for k-NN accuracy: categorical, or integer ids (plate 1..40 reads as
    continuous to ``infer_column_kind`` but is a category here).

    Raises:
        UserError: non-integer numbers, a multi-label column, or fewer than two distinct known values.
    """
    cells = [v for v in values if not is_missing(v)]
    kind = infer_column_kind(pd.Series(cells, dtype=object))
    if kind == "continuous" and not all(float(v).is_integer() for v in cells):
        raise UserError(f"k-NN accuracy needs a categorical column; '{column}' holds continuous numbers — leave it out")
    if kind == "multilabel":
        raise UserError(f"k-NN accuracy needs a categorical column; '{column}' is multi-label — leave it out")
    if kind == "constant":
        raise UserError(f"column '{column}' has fewer than two distinct known values ({len(cells)} rows); "
                        f"its k-NN accuracy is undefined, leave it out")
    return cells


def knn_accuracy(
    features: np.ndarray | torch.Tensor,
    values: pd.Series,
    *,
    column: str,
    k: int = DEFAULT_K,
    device: str = "cpu",
    graphs: Graphs | None = None,
) -> KnnPurity:
    """Leave-one-out k-NN majority-vote accuracy of `values` on the cosine graph of `features` (module docstring).

    Args:
        features: [N, D] embeddings, row i belongs to ``values.iloc[i]``.
        values: [N] a categorical column; missing cells are left out (with their rows, from the graph).
        column: its name, for messages.
        k: neighbours per row.
        graphs: memo of k-NN graphs of these `features` and `k`, shared between calls.

    Raises:
        UserError: see :func:`check_categorical`, naming the column.
    """
    _check(features, len(values), k)
    known = known_mask(values)
    cells = check_categorical(values[known], column)
    y, n_classes = _codes(cells)
    idx = _graph(features, np.flatnonzero(known), k, device, graphs)
    pred = majority_vote(y[idx], n_classes)
    return KnnPurity(column=column, accuracy=float((pred == y).mean()),
                     balanced_accuracy=float(balanced_accuracy_score(y, pred)), chance=1.0 / n_classes,
                     n_rows=len(y), n_missing=int((~known).sum()), n_classes=n_classes, k=idx.shape[1])


def same_group_share(
    features: np.ndarray | torch.Tensor,
    labels: pd.Series,
    groups: pd.Series,
    *,
    label_column: str,
    group_column: str,
    k: int = DEFAULT_K,
    device: str = "cpu",
    graphs: Graphs | None = None,
) -> SameGroupShare:
    """Mean share of same-`groups` rows among each row's same-`labels` neighbours, and its chance level
    (module docstring).

    Raises:
        UserError: no row has a neighbour with its label (e.g. every label value occurs once), naming the columns.
    """
    _check(features, len(labels), k)
    if len(groups) != len(labels):
        raise ValueError(f"'{label_column}' has {len(labels)} rows but '{group_column}' has {len(groups)}")
    known = known_mask(labels) & known_mask(groups)
    rows = np.flatnonzero(known)
    lab, _ = _codes([labels.iloc[i] for i in rows])
    grp, n_groups = _codes([groups.iloc[i] for i in rows])
    idx = _graph(features, rows, k, device, graphs)
    same_label = lab[idx] == lab[:, None]
    hits = same_label.sum(axis=1)
    queries = hits > 0
    if not queries.any():
        raise UserError(f"no row has a neighbour with the same '{label_column}' among its {idx.shape[1]} nearest "
                        f"({len(rows)} rows with a known '{label_column}' and '{group_column}'); the same-"
                        f"'{group_column}' share is undefined here")
    same_both = (same_label & (grp[idx] == grp[:, None])).sum(axis=1)
    pair = lab * n_groups + grp
    n_pair = np.bincount(pair)[pair]  # rows with this row's label and group, itself included
    n_label = np.bincount(lab)[lab]
    chance = (n_pair[queries] - 1) / (n_label[queries] - 1)
    return SameGroupShare(label_column=label_column, group_column=group_column,
                          value=float(np.mean(same_both[queries] / hits[queries])), chance=float(np.mean(chance)),
                          n_queries=int(queries.sum()), n_rows=len(rows), n_missing=int((~known).sum()),
                          k=idx.shape[1])


def purity_metrics(
    features: np.ndarray | torch.Tensor,
    frame: pd.DataFrame,
    columns: Sequence[str] = (),
    *,
    label_column: str | None = None,
    group_column: str | None = None,
    k: int = DEFAULT_K,
    device: str = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """The metrics.json block of neighbour purity on one set of rows.

    ``{"k": k, "knn/<column>": {accuracy, balanced_accuracy, chance, n_rows, n_missing, n_classes, k}, ...,
    "same_group_share": v, "same_group_share_chance": c, "same_group": {label_column, group_column, n_queries,
    n_rows, n_missing}, "notes": [...]}``; the same-group entries only when both columns are given.
    With ``strict=False`` a yardstick that cannot be measured on these rows becomes a note instead of a UserError.
    """
    out: dict[str, Any] = {"k": k}
    notes: list[str] = []
    graphs: Graphs = {}
    for column in columns:
        try:
            res = knn_accuracy(features, frame[column], column=column, k=k, device=device, graphs=graphs)
        except UserError as err:
            if strict:
                raise
            notes.append(f"knn/{column}: {err}")
            continue
        out[f"knn/{column}"] = {key: v for key, v in asdict(res).items() if key != "column"}
    if label_column is not None and group_column is not None:
        try:
            share = same_group_share(features, frame[label_column], frame[group_column], label_column=label_column,
                                     group_column=group_column, k=k, device=device, graphs=graphs)
        except UserError as err:
            if strict:
                raise
            notes.append(f"same_group_share: {err}")
        else:
            out["same_group_share"] = share.value
            out["same_group_share_chance"] = share.chance
            out["same_group"] = {"label_column": label_column, "group_column": group_column,
                                 "n_queries": share.n_queries, "n_rows": share.n_rows, "n_missing": share.n_missing}
    if notes:
        out["notes"] = notes
    return out


__all__ = ["DEFAULT_K", "KnnPurity", "SameGroupShare", "check_categorical", "knn_accuracy", "majority_vote", "purity_metrics",
           "same_group_share"]
