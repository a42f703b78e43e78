"""`metadino eval`: frozen features of a MODEL -> probes on a labelled subset -> metrics.json + report.

Train, validation and test rows are chosen by filters on one table (e.g. ``split=train`` /
``split=ood``), so out-of-distribution evaluation is one flag. Features are extracted once per model
and selection (cached); the probes (weighted k-NN, linear, attention pooling), the leakage probes
(plain and conditional) and neighbour purity all read the same features.

Rows: the probes are scored on the test rows; plain and conditional leakage are cross-validated on the
train rows; neighbour purity is measured on the train rows (``purity``) and, separately, on the test rows
(``purity_test``; each set's own k-NN graph, so neither sees the other).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from metadino.data.reading import DEFAULT_READ, ReadOptions
from metadino.data.sources import ImageLayout
from metadino.data.table import MetadataTable, infer_column_kind, load_table
from metadino.data.targets import ColumnEncoder, Kind, class_names
from metadino.data.values import DEFAULT_SEPARATOR, category_label, known_mask, multilabel_separator
from metadino.errors import UserError
from metadino.eval.conditional import check_spec, check_target, conditional_leakage_table
from metadino.eval.features import Features, cached_extract, default_cache_dir, weights_digest
from metadino.eval.knn import knn_predict
from metadino.eval.leakage import leakage_table
from metadino.eval.linear import carve_validation, fit_linear_probe
from metadino.eval.metrics import classification_metrics, multilabel_metrics
from metadino.eval.purity import check_categorical, purity_metrics
from metadino.files import atomic_write_text, claim_output_dir
from metadino.models.backbone import Backbone
from metadino.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    import pandas as pd

PROBES = ("knn", "linear", "attnpool")
FEATURE_KINDS = ("cls", "cls+mean")
MARKER = ".metadino-eval"
ATTNPOOL_BLOCKS = 4

# () -> (backbone, its preprocessing): the caller resolves the model (``metadino.export.load_model``)
ModelLoader = Callable[[], tuple[Backbone, Preprocessing]]


@dataclass
class Split:
    name: str
    table: MetadataTable
    features: Features | None = None

    def extracted(self) -> Features:
        """The split's features (set by :func:`_extract`)."""
        if self.features is None:
            raise RuntimeError(f"the features of split '{self.name}' have not been extracted")
        return self.features

    def patch_tokens(self) -> torch.Tensor:
        """The split's patch tokens (extracted only for the attention-pooling probe)."""
        tokens = self.extracted().patch_tokens
        if tokens is None:
            raise RuntimeError(f"the features of split '{self.name}' were extracted without patch tokens")
        return tokens


@dataclass
class Labels:
    """The label column, encoded as training encodes a guide column (:class:`ColumnEncoder`, same class names)."""

    encoder: ColumnEncoder

    @property
    def classes(self) -> list[str]:
        return self.encoder.classes

    @property
    def multilabel(self) -> bool:
        return self.encoder.kind == "multilabel"

    @property
    def separator(self) -> str:
        return self.encoder.separator

    def encode(self, series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(targets, labelled-row mask): class ids [N] (-1 where unlabelled) or multi-hot [N, C]."""
        values, valid = self.encoder.encode(series)
        known = valid.numpy()
        if self.multilabel:
            return values.numpy().astype(int), known
        return np.where(known, values.numpy(), -1).astype(int), known


def build_labels(label_column: str, splits: Sequence[Split]) -> Labels:
    """Classes of the label column over all evaluated rows; rejects continuous and single-class labels."""
    import pandas as pd

    values = pd.concat([s.table.frame[label_column] for s in splits], ignore_index=True)
    kind = infer_column_kind(values)
    if kind == "continuous":
        raise UserError(
            f"label column '{label_column}' holds continuous numbers; eval needs classes (use a categorical column, "
            "or list it under --leakage-columns to get R²)."
        )
    label_kind: Kind = "multilabel" if kind == "multilabel" else "categorical"
    separator = multilabel_separator(values.tolist()) if label_kind == "multilabel" else DEFAULT_SEPARATOR
    train = splits[0].table.frame[label_column]
    seen = class_names(train, label_kind, separator)
    if len(seen) < 2:
        raise UserError(
            f"label column '{label_column}' has {len(seen)} class(es) in the train rows ({len(train)} rows); "
            "a probe needs at least two: widen --train-rows."
        )
    return Labels(ColumnEncoder(label_column, label_kind, classes=class_names(values, label_kind, separator),
                                separator=separator))


def _load_split(name: str, table: str | Path, rows: Mapping[str, Any], image_column: str, root: str | None,
                required: Sequence[str], layout: ImageLayout | None, read: ReadOptions) -> Split:
    if not rows:
        raise UserError(f"--{name}-rows is required, e.g. --{name}-rows split={name}.")
    return Split(name, load_table(table, image_column=image_column, root=root, rows=rows, required_columns=required,
                                  layout=layout, read=read))


def _prepare_out(out: Path) -> None:
    """Write only into an empty folder or one an earlier eval made (never over a user's files)."""
    claim_output_dir(out, MARKER, not_a_folder=f"--out '{out}' is a file; give a folder for metrics.json and report.md.",
                     not_ours=f"--out '{out}' is not empty and was not written by metadino eval; choose another folder.")
    (out / MARKER).write_text("written by metadino eval; rerunning eval with this --out replaces its files\n")


def _knn_probs(train_x: torch.Tensor, train_y: np.ndarray, test_x: torch.Tensor, labels: Labels, k: int,
               temperature: float, device: str | torch.device = "cpu") -> np.ndarray:
    """k-NN class probabilities of the test rows; the similarity search runs on `device` (a GPU searches 1M training
    rows in a fraction of the CPU's 13 s), the votes on the CPU."""
    train_x, test_x = train_x.to(device), test_x.to(device)
    if labels.multilabel:
        # multi-hot votes: each label's score is the similarity-weighted share of neighbours that carry it
        from metadino.eval.knn import knn_multilabel_scores

        return knn_multilabel_scores(train_x, torch.as_tensor(train_y, dtype=torch.float32), test_x, k=k, temperature=temperature).numpy()
    scores = knn_predict(train_x, torch.as_tensor(train_y), test_x, n_classes=len(labels.classes), k=k, temperature=temperature)
    return (scores / scores.sum(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def _metrics(y: np.ndarray, probs: np.ndarray, labels: Labels, groups: np.ndarray | None,
             group_names: Sequence[str] | None) -> dict[str, Any]:
    if labels.multilabel:
        return multilabel_metrics(y, probs)
    return classification_metrics(y, probs, groups=groups, group_names=group_names)


def _groups(group_column: str | None, split: Split) -> tuple[np.ndarray | None, list[str] | None]:
    if group_column is None:
        return None, None
    column = split.table.frame[group_column]
    # the training encoders' class names (data/values.py); missing cells form one "(missing)" group
    values = [category_label(v) if known else "(missing)" for v, known in zip(column.tolist(), known_mask(column))]
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[v] for v in values]), names


def evaluate(
    model: str, load: ModelLoader, *,
    table: str | Path, label_column: str, train_rows: Mapping[str, Any], test_rows: Mapping[str, Any], out: str | Path,
    val_rows: Mapping[str, Any] | None = None, group_column: str | None = None,
    probes: Sequence[str] = ("knn", "linear"), leakage_columns: Sequence[str] = (),
    conditional_leakage: Mapping[str, Sequence[str]] | None = None, purity_columns: Sequence[str] = (),
    region_columns: Sequence[str] = (), mask_column: str | None = None, show: int = 0,
    image_column: str = "path", root: str | None = None, feature: str = "cls", k: int = 20, temperature: float = 0.07,
    leakage_folds: int = 5, batch_size: int = 64, device: str | torch.device = "cpu", cache_dir: Path | None | str = "default",
    num_workers: int = 0, layout: ImageLayout | None = None, read: ReadOptions = DEFAULT_READ,
    seed: int = 0, progress: bool = True, report: bool = True, title: str | None = None, precision: str = "fp32",
) -> dict[str, Any]:
    """Evaluate the backbone that `load` returns (with its preprocessing) on a labelled subset; write
    DIR/metrics.json (and DIR/report.md). Returns the metrics. `model` names it in the metrics and the report;
    `load` is called only once the request has been checked, so a bad request fails before any model is loaded.

    `conditional_leakage` maps a target column to the columns it is conditioned on (``{"plate": ["cell_line"]}``:
    plate beyond cell line, :mod:`metadino.eval.conditional`). `purity_columns` get their leave-one-out k-NN
    accuracy on the embedding's own k-NN graph (`k` neighbours); with `group_column`, the same-group share among
    same-label neighbours (label: `label_column`) is reported too (:mod:`metadino.eval.purity`). `layout` and `read`
    say how the table names and decodes its images (channel files, stack items, tiles; ``data.read``), as in training.
    `precision` (fp32, bf16, fp16) is the feature extraction's (autocast; attention maps stay fp32).

    `region_columns` (four box columns x0, y0, x1, y1) or `mask_column` name each test row's annotated region (as
    ``crops.label_guided``): the last block's CLS attention is scored against it (``metrics["localisation"]``,
    :mod:`metadino.eval.localisation`). `show` > 0 puts the attention / PCA panel of that many test images into the
    report (:mod:`metadino.eval.show`).
    """
    t0 = time.perf_counter()
    probes = _check_probes(probes, feature, k, temperature)
    region_columns = _check_region_options(region_columns, mask_column, show)
    required = [label_column, *([group_column] if group_column else []), *leakage_columns, *region_columns,
                *([mask_column] if mask_column else [])]
    rows = {"train": train_rows, **({"val": val_rows} if val_rows else {}), "test": test_rows}
    splits = [_load_split(name, table, r, image_column, root, required, layout, read) for name, r in rows.items()]
    by_name = {s.name: s for s in splits}
    labels = build_labels(label_column, splits)
    train_frame = by_name["train"].table.frame
    _check_leakage_columns(leakage_columns, train_frame)  # fail before any compute, not after feature extraction
    conditional_leakage = _check_conditional(conditional_leakage or {}, train_frame)
    purity_columns = _check_purity(purity_columns, train_frame)
    regions = None
    if region_columns or mask_column:
        from metadino.data.regions import load_regions

        regions = load_regions(by_name["test"].table, bbox_columns=region_columns, mask_column=mask_column, root=root)

    backbone, pre = load()
    out = Path(out)
    _prepare_out(out)
    _extract(splits, backbone, pre, cache_dir=cache_dir, attnpool="attnpool" in probes, batch_size=batch_size,
             device=device, progress=progress, num_workers=num_workers, precision=precision)
    # rows without a label are not evaluated (they still count for leakage of other columns)
    data = {s.name: (s, *labels.encode(s.table.frame[label_column])) for s in splits}
    results, predictions, y_test = _run_probes(probes, data, labels, feature=feature, group_column=group_column, k=k,
                                               temperature=temperature, seed=seed, device=device, progress=progress)
    train, test = by_name["train"], by_name["test"]
    x_train = train.extracted().embedding(feature).numpy()
    leakage_details = _leakage(x_train, train.table.frame, leakage_columns, folds=leakage_folds, seed=seed, progress=progress)
    metrics = {
        **results,
        "leakage": {c: d["value"] for c, d in leakage_details.items()},
        "leakage_details": leakage_details,
        "conditional_leakage": _conditional(x_train, train.table.frame, conditional_leakage, folds=leakage_folds,
                                            seed=seed, progress=progress),
        **_purity(train, test, feature, purity_columns, label_column, group_column, k, device),
        "localisation": {} if regions is None else _localisation(backbone, test, regions, pre, batch_size=batch_size,
                                                                 device=device, num_workers=num_workers,
                                                                 progress=progress),
        "info": {
            "model": model, "table": str(Path(table)), "label_column": label_column, "classes": labels.classes,
            "multilabel": labels.multilabel, "feature": feature,
            "rows": {name: int(known.sum()) for name, (_, _, known) in data.items()},
            "rows_without_label": {name: int((~known).sum()) for name, (_, _, known) in data.items()},
            "train_test_overlap_rows": len(set(train.table.row_numbers) & set(test.table.row_numbers)),
            "group_column": group_column, "preprocessing": pre.to_dict(), "seconds": round(time.perf_counter() - t0, 1),
        },
    }
    if metrics["info"]["train_test_overlap_rows"]:
        print(f"warning: {metrics['info']['train_test_overlap_rows']} rows are in both the train and the test "
              "selection; the test metrics are optimistic. Make --train-rows and --test-rows disjoint.", file=sys.stderr)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if report:
        from metadino.eval.report import write_report

        shown = None
        if show:
            from metadino.eval.show import show_panels

            shown = show_panels([(model, backbone, pre)], by_name["test"].table, n=show, device=device,
                                title=f"{show} test images")
        write_report(out, metrics, splits=splits, feature=feature, label_column=label_column,
                     leakage_columns=leakage_columns, y_test=y_test, predictions=predictions, model=model, title=title,
                     show=shown)
    return metrics


def _check_region_options(region_columns: Sequence[str], mask_column: str | None, show: int) -> list[str]:
    columns = list(region_columns)
    if columns and mask_column:
        raise UserError("give --region-columns (a box) or --mask-column (a mask), not both.")
    if columns and (len(columns) != 4 or len(set(columns)) != 4):
        raise UserError(f"--region-columns needs four different columns x0,y0,x1,y1 (pixels of the original image), "
                        f"got {','.join(columns)}.")
    if show < 0:
        raise UserError(f"--show must be >= 0 (the number of test images shown), got {show}.")
    return columns


def _localisation(backbone: Backbone, test: Split, regions: Any, pre: Preprocessing, *, batch_size: int,
                  device: str | torch.device, num_workers: int, progress: bool) -> dict[str, Any]:
    from metadino.eval.localisation import localisation_metrics

    return localisation_metrics(backbone, test.table, regions, pre, batch_size=batch_size, device=device,
                                num_workers=num_workers, progress=progress, rows=test.name)


def _check_leakage_columns(columns: Sequence[str], frame: Any) -> None:
    for column in columns:
        if infer_column_kind(frame[column]) == "constant":
            raise UserError(f"--leakage-columns: '{column}' has fewer than two distinct values in the train rows; "
                            "leakage of a constant column is undefined, drop it.")


def _check_probes(probes: Sequence[str], feature: str, k: int, temperature: float) -> list[str]:
    probes = list(dict.fromkeys(probes))
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise UserError(f"--probes: unknown probe(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PROBES)}.")
    if feature not in FEATURE_KINDS:
        raise UserError(f"--feature must be one of {', '.join(FEATURE_KINDS)}, got '{feature}'.")
    if k < 1 or temperature <= 0:
        raise UserError(f"--k must be >= 1 and --temperature > 0 (got k={k}, temperature={temperature}).")
    return probes


def _extract(splits: Sequence[Split], backbone: Backbone, pre: Preprocessing, *, cache_dir: Path | None | str,
             attnpool: bool, batch_size: int, device: str | torch.device, progress: bool, num_workers: int = 0,
             precision: str = "fp32") -> None:
    """Features of every split (cached by weights, rows and preprocessing); patch tokens only for attention pooling."""
    digest = weights_digest(backbone)
    cache = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir is not None else None)
    patch_blocks = min(ATTNPOOL_BLOCKS, backbone.depth) if attnpool else 0
    for s in splits:
        s.features = cached_extract(backbone, s.table, pre, cache_dir=cache, model_digest=digest, patch_blocks=patch_blocks,
                                    batch_size=batch_size, device=device, progress=progress, desc=f"features ({s.name})",
                                    num_workers=num_workers, precision=precision)


def _run_probes(probes: Sequence[str], data: dict[str, tuple[Split, np.ndarray, np.ndarray]], labels: Labels, *,
                feature: str, group_column: str | None, k: int, temperature: float, seed: int,
                device: str | torch.device, progress: bool) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """Each probe trained on the labelled train rows and scored on the labelled test rows: (results, test-row
    probabilities per probe, test targets)."""
    train, y_train, known_train = data["train"]
    test, y_test, known_test = data["test"]
    x_train = train.extracted().embedding(feature)[torch.from_numpy(known_train.copy())]
    x_test = test.extracted().embedding(feature)[torch.from_numpy(known_test.copy())]
    y_train, y_test = y_train[known_train], y_test[known_test]
    groups, group_names = _groups(group_column, test)
    if groups is not None:
        groups = groups[known_test]
    val = x_val = y_val = None
    if "val" in data:
        val, y_val, known_val = data["val"]
        x_val, y_val = val.extracted().embedding(feature)[torch.from_numpy(known_val.copy())], y_val[known_val]
    results: dict[str, Any] = {}
    predictions: dict[str, np.ndarray] = {}
    for probe in probes:
        if probe == "knn":
            probs = _knn_probs(x_train, y_train, x_test, labels, k, temperature, device)
            results["knn"] = {**_metrics(y_test, probs, labels, groups, group_names), "k": k, "temperature": temperature}
        elif probe == "linear":
            lin = fit_linear_probe(x_train.numpy(), y_train, None if x_val is None else x_val.numpy(), y_val,
                                   multilabel=labels.multilabel, seed=seed)
            probs = lin.predict_proba(x_test.numpy(), None if labels.multilabel else len(labels.classes))
            results["linear"] = {**_metrics(y_test, probs, labels, groups, group_names), "C": lin.C,
                                 "validation": "carved from train rows" if lin.carved_validation else "val rows"}
        else:
            probs, info = _attnpool(train, known_train, y_train, val, data, test, known_test, labels,
                                    group_column, seed, device, progress)
            results["attnpool"] = {**_metrics(y_test, probs, labels, groups, group_names), **info}
        predictions[probe] = probs
    return results, predictions, y_test


def _leakage(x: np.ndarray, frame: Any, columns: Sequence[str], *, folds: int, seed: int, progress: bool) -> dict[str, dict[str, Any]]:
    if not columns:
        return {}
    lk = leakage_table(x, frame, columns, folds=folds, seed=seed, progress=progress)
    return {c: {"metric": v.metric, "value": v.value, "chance": v.chance, "n_rows": v.n_rows, "n_classes": v.n_classes}
            for c, v in lk.items()}


def _conditional(x: np.ndarray, frame: Any, specs: Mapping[str, Sequence[str]], *, folds: int, seed: int,
                 progress: bool) -> dict[str, dict[str, Any]]:
    if not specs:
        return {}
    ck = conditional_leakage_table(x, frame, specs, folds=folds, seed=seed, progress=progress)
    return {key: {"column": v.column, "given": list(v.given), "metric": v.metric, "value": v.value,
                  "given_only": v.given_only, "with_embedding": v.with_embedding, "chance": v.chance,
                  "n_rows": v.n_rows, "n_missing": v.n_missing, "n_classes": v.n_classes, "folds": v.folds,
                  "note": v.note} for key, v in ck.items()}


def _purity(train: Split, test: Split, feature: str, columns: Sequence[str], label_column: str,
            group_column: str | None, k: int, device: str | torch.device) -> dict[str, dict[str, Any]]:
    purity: dict[str, dict[str, Any]] = {"purity": {}, "purity_test": {}}
    if columns or group_column:
        for key, part in (("purity", train), ("purity_test", test)):
            # lenient: the columns were checked on the train rows; what the test rows cannot support becomes a note
            purity[key] = {"rows": part.name, **purity_metrics(
                part.extracted().embedding(feature), part.table.frame, columns, label_column=label_column,
                group_column=group_column, k=k, device=str(device), strict=False)}
    return purity


def _check_conditional(specs: Mapping[str, Sequence[str]], frame: pd.DataFrame) -> dict[str, list[str]]:
    """`specs` with duplicates removed, checked by the component; its UserErrors name --conditional-leakage."""
    available = [str(c) for c in frame.columns]
    checked: dict[str, list[str]] = {}
    for target, given in specs.items():
        try:
            checked[target] = list(check_spec(target, [given] if isinstance(given, str) else given, available))
            check_target(frame[target], target, " in the train rows")
        except UserError as err:
            raise UserError(f"--conditional-leakage: {err}.") from None
    return checked


def _check_purity(columns: Sequence[str], frame: pd.DataFrame) -> list[str]:
    """`columns` without duplicates; one-sentence UserErrors naming --purity-columns and the column."""
    available = [str(c) for c in frame.columns]
    columns = list(dict.fromkeys(columns))
    for column in columns:
        if column not in available:
            raise UserError(f"--purity-columns: unknown column '{column}'; available columns: {', '.join(available)}.")
        try:
            check_categorical(frame[column], column)
        except UserError as err:
            raise UserError(f"--purity-columns (train rows): {err}.") from None
    return columns


def _attnpool(train: Split, known_train: np.ndarray, y_train: np.ndarray, val: Split | None,
              data: dict[str, tuple[Split, np.ndarray, np.ndarray]], test: Split, known_test: np.ndarray,
              labels: Labels, group_column: str | None, seed: int, device: str | torch.device,
              progress: bool) -> tuple[np.ndarray, dict[str, Any]]:
    from metadino.eval.attnpool import predict_attention_pool, train_attention_pool

    tokens = train.patch_tokens()[torch.from_numpy(known_train.copy())]
    if val is None:
        fit_idx, val_idx = carve_validation(y_train, 0.2, seed)
        tr_tokens, tr_y = tokens[torch.as_tensor(fit_idx)], y_train[fit_idx]
        va_tokens, va_y = tokens[torch.as_tensor(val_idx)], y_train[val_idx]
        val_groups = _groups(group_column, train)[0]
        val_groups = None if val_groups is None else val_groups[known_train][val_idx]
    else:
        _, y_val, known_val = data["val"]
        tr_tokens, tr_y = tokens, y_train
        va_tokens, va_y = val.patch_tokens()[torch.from_numpy(known_val.copy())], y_val[known_val]
        val_groups = _groups(group_column, val)[0]
        val_groups = None if val_groups is None else val_groups[known_val]
    if labels.multilabel:
        select = "multilabel_f1"
    elif val_groups is not None and len(np.unique(val_groups)) > 1:
        select = "worst_group_accuracy"
    else:
        select = "accuracy"
    target_dtype = torch.float32 if labels.multilabel else torch.int64

    def as_target(y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(y, dtype=target_dtype)

    try:
        result = train_attention_pool(
            tr_tokens, as_target(tr_y), va_tokens, as_target(va_y), n_outputs=len(labels.classes),
            multilabel=labels.multilabel, val_groups=None if val_groups is None else torch.as_tensor(val_groups),
            select=select, seed=seed, device=device, progress=progress,
        )
    except ValueError as e:  # e.g. a validation split too small to hold a row
        raise UserError(f"the attention-pooling probe cannot be trained on these rows: {e}.") from None
    logits = predict_attention_pool(result.classifier, test.patch_tokens()[torch.from_numpy(known_test.copy())], device=device)
    probs = torch.sigmoid(logits) if labels.multilabel else torch.softmax(logits, dim=1)
    return probs.numpy(), {"lr": result.lr, "selection": select, "val_score": result.val_score}
