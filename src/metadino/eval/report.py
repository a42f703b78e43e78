"""The Markdown report of `metadino eval`: metric tables plus plots people would rather look at.

Tables: the probes, plain and conditional leakage, neighbour purity. Plots (PNG in DIR/plots/): PCA of
the embeddings coloured by the label and by each leakage column, the confusion matrix of a probe on the
test rows, and — when MODEL is a run directory — the training curves from its metrics.jsonl.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from metadino.config import read_yaml
from metadino.errors import UserError
from metadino.files import atomic_write, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

PROBE_TITLES = {"knn": "weighted k-NN", "linear": "linear (logistic regression)", "attnpool": "attention pooling"}
METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_f1", "multilabel_f1", "auroc", "worst_group_accuracy")
MAX_POINTS = 3000  # PCA scatter: enough to see structure, small enough to stay readable
MAX_LEGEND = 12


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    """A figure as PNG, atomically (a crash leaves the earlier plot or none, never half of one)."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def metrics_table(metrics: dict[str, Any]) -> str:
    probes = [p for p in PROBE_TITLES if p in metrics]
    names = [m for m in METRIC_NAMES if any(m in metrics[p] for p in probes)]
    lines = ["| probe | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for p in probes:
        lines.append(f"| {PROBE_TITLES[p]} | " + " | ".join(_fmt(metrics[p].get(m)) for m in names) + " |")
    return "\n".join(lines)


def leakage_table_md(details: dict[str, Any]) -> str:
    lines = ["| column | metric | value | chance | rows |", "|---|---|---|---|---|"]
    for col, d in details.items():
        lines.append(f"| {col} | {d['metric']} | {_fmt(d['value'])} | {_fmt(d['chance'])} | {d['n_rows']} |")
    return "\n".join(lines)


def conditional_table_md(details: dict[str, Any]) -> str:
    """Conditional leakage: value = with embedding − given only (both cross-validated on the same rows)."""
    lines = ["| column | given | metric | value | given only | with embedding | chance | rows | missing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in details.values():
        lines.append(f"| {d['column']} | {', '.join(d['given'])} | {d['metric']} | {_fmt(d['value'])} | "
                     f"{_fmt(d['given_only'])} | {_fmt(d['with_embedding'])} | {_fmt(d['chance'])} | {d['n_rows']} | "
                     f"{d['n_missing']} |")
    return "\n".join(lines)


def purity_table_md(*blocks: dict[str, Any]) -> str:
    """Neighbour purity of one or more row sets (``metrics["purity"]``, ``metrics["purity_test"]``)."""
    lines = ["| measure | rows | value | balanced | chance | n |", "|---|---|---|---|---|---|"]
    for block in blocks:
        if not block:
            continue
        rows = block.get("rows", "")
        for key, d in block.items():
            if key.startswith("knn/"):
                lines.append(f"| k-NN accuracy of {key[4:]} | {rows} | {_fmt(d['accuracy'])} | "
                             f"{_fmt(d['balanced_accuracy'])} | {_fmt(d['chance'])} | {d['n_rows']} |")
        if "same_group_share" in block:
            g = block["same_group"]
            lines.append(f"| same-{g['group_column']} share among same-{g['label_column']} neighbours | {rows} | "
                         f"{_fmt(block['same_group_share'])} | – | {_fmt(block['same_group_share_chance'])} | "
                         f"{g['n_queries']} |")
    return "\n".join(lines)


def localisation_table_md(loc: dict[str, Any]) -> str:
    """One line per measure of ``metrics["localisation"]``: value, chance, best head, rows."""
    lines = ["| measure | rows | value | chance | best head | n | without region | cut off by the crop |",
             "|---|---|---|---|---|---|---|---|"]
    for key, name in (("attention_mass", "attention mass inside the region"), ("pointing_game", "pointing game")):
        heads = loc.get("per_head", {}).get(key) or []
        best = f"{max(heads):.3f} (head {int(np.argmax(heads))})" if heads else "–"
        lines.append(f"| {name} ({loc['region']}) | {loc['rows']} | {_fmt(loc[key])} | {_fmt(loc[key + '_chance'])} | "
                     f"{best} | {loc['n_rows']} | {loc['n_without_region']} | {loc['n_outside_view']} |")
    return "\n".join(lines)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components [N, 2] (deterministic sign: largest loading positive)."""
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    xy: np.ndarray = x @ (comps * signs[:, None]).T
    return xy


def _scatter(ax: Axes, xy: np.ndarray, values: pd.Series, title: str) -> None:
    import pandas as pd

    from metadino.data.values import category_label, known_mask

    values = pd.Series(values).reset_index(drop=True)
    numeric = pd.api.types.is_numeric_dtype(values) and values.nunique() > MAX_LEGEND
    if numeric:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=values.to_numpy(dtype=float), s=4, cmap="viridis")
        ax.figure.colorbar(sc, ax=ax, fraction=0.046)
    else:
        shown = pd.Series([category_label(v) if k else "(missing)" for v, k in zip(values, known_mask(values))],
                          dtype=object)
        top = shown.value_counts().index[:MAX_LEGEND]
        shown = shown.where(shown.isin(top), "(other)")
        for name in sorted(shown.unique()):
            hit = (shown == name).to_numpy()
            ax.scatter(xy[hit, 0], xy[hit, 1], s=4, label=name)
        ax.legend(fontsize=6, markerscale=2, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_pca(path: Path, x: np.ndarray, frame: pd.DataFrame, columns: Sequence[str], seed: int = 0) -> Path:
    plt = _pyplot()
    if len(x) > MAX_POINTS:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), MAX_POINTS, replace=False))
        x, frame = x[keep], frame.iloc[keep]
    xy = pca_2d(x.astype(np.float64))
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 4), squeeze=False)
    for ax, col in zip(axes[0], columns):
        _scatter(ax, xy, frame[col], f"PCA coloured by {col}")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_confusion(path: Path, y_true: np.ndarray, pred: np.ndarray, classes: Sequence[str], title: str) -> Path:
    plt = _pyplot()
    n = len(classes)
    cm = np.zeros((n, n), dtype=int)
    np.add.at(cm, (y_true, pred), 1)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(3 + 0.4 * n, 14)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6, color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def read_metrics_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill is skipped, not fatal
    return rows


def _dino_out_dim(run_dir: Path) -> int | None:
    """K of a run directory's DINO head, from its config.yaml (None when unreadable)."""
    try:
        return int(read_yaml(run_dir / "config.yaml")["ssl"]["head"]["out_dim"])
    except (UserError, KeyError, TypeError, ValueError):
        return None


def plot_training_curves(path: Path, rows: list[dict[str, Any]], dino_out_dim: int | None = None) -> Path | None:
    """SSL terms (with ln K, the DINO term of uniform targets, as a dashed line) and guide losses."""
    keys = [k for k in ("total", "dino", "ibot", "koleo", "sigreg") if any(k in r for r in rows)]
    guide_keys = sorted({k for r in rows for k in r if k.startswith("guide/") and k.endswith("/loss")})
    if not rows or not keys:
        return None
    plt = _pyplot()
    panels = 2 if guide_keys else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    for ax, group in zip(axes[0], [keys, guide_keys][:panels]):
        for k in group:
            pts = [(r["step"], r[k]) for r in rows if k in r and r[k] is not None]
            if pts:
                ax.plot(*zip(*pts), label=k, lw=1)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    if dino_out_dim and "dino" in keys:
        axes[0][0].axhline(math.log(dino_out_dim), color="grey", ls="--", lw=0.8,
                           label=f"ln K = {math.log(dino_out_dim):.2f} (uniform DINO targets)")
        axes[0][0].legend(fontsize=7)
    axes[0][0].set_title("SSL loss terms", fontsize=9)
    if guide_keys:
        axes[0][1].set_title("guide losses", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def write_report(
    out: Path,
    metrics: dict[str, Any],
    *,
    splits: Sequence[Any],
    feature: str,
    label_column: str,
    leakage_columns: Sequence[str],
    y_test: np.ndarray,
    predictions: dict[str, np.ndarray],
    model: str,
    title: str | None = None,
    show: Any = None,
) -> Path:
    """DIR/report.md and DIR/plots/; `show` (:class:`metadino.eval.show.ShowPanels`) adds the attention / PCA panel."""
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    info = metrics["info"]
    lines = [f"# {title or 'metadino eval'}", "", f"- model: `{model}`", f"- table: `{info['table']}`",
             f"- label: `{label_column}` ({len(info['classes'])} classes{', multi-label' if info['multilabel'] else ''}); "
             f"features: {feature}",
             "- rows: " + ", ".join(f"{k} {v}" for k, v in info["rows"].items())]
    if info["train_test_overlap_rows"]:
        lines.append(f"- **warning**: {info['train_test_overlap_rows']} rows are in both the train and the test selection.")
    lines += ["", "## Probes (test rows)", "", metrics_table(metrics), ""]
    for probe in PROBE_TITLES:
        groups = metrics.get(probe, {}).get("per_group_accuracy")
        if groups:
            worst = min(groups, key=groups.get)
            lines.append(f"- {PROBE_TITLES[probe]}: per-{info['group_column']} accuracy "
                         + ", ".join(f"{g} {v:.3f}" for g, v in groups.items()) + f" (worst: {worst})")
    if metrics.get("leakage_details"):
        lines += ["", "## Leakage (linear probe on the embedding, cross-validated on the train rows)", "",
                  "Informative columns should be decodable; spurious ones (plate, scanner, ...) should be near chance.", "",
                  leakage_table_md(metrics["leakage_details"])]
    if metrics.get("conditional_leakage"):
        details = metrics["conditional_leakage"]
        lines += ["", "## Conditional leakage (embedding ⊕ given columns vs the given columns alone, train rows)", "",
                  "How much better each column is decoded with the embedding than from the given columns alone "
                  "(FINO: measure dependence first, never suppress an entangled factor alone); ≈ 0: the embedding "
                  "knows nothing about it beyond the given columns.", "", conditional_table_md(details)]
        lines += [f"- {d['note']}" for d in details.values() if d.get("note")]
    if metrics.get("purity") or metrics.get("purity_test"):
        blocks = [metrics.get("purity", {}), metrics.get("purity_test", {})]
        k = next((b["k"] for b in blocks if b), None)
        lines += ["", f"## Neighbour purity (cosine k-NN graph of each row set, k = {k}, the row itself excluded)", "",
                  "k-NN accuracy: majority vote of a row's neighbours (balanced: chance 1 / classes). Same-group share: "
                  "among a row's neighbours with its label, the share from its group — above chance means the "
                  "embedding groups by acquisition batch inside a class.", "", purity_table_md(*blocks)]
        lines += [f"- {b['rows']} rows: {n}" for b in blocks if b for n in b.get("notes", [])]

    if metrics.get("localisation"):
        lines += ["", "## Localisation (last block's CLS attention vs the annotated regions)", "",
                  "Attention mass: the share of the CLS -> patch attention (mean of the heads) inside the region; "
                  "pointing game: the share of images whose attention maximum touches the region; chance: a uniform "
                  "map.", "", localisation_table_md(metrics["localisation"])]
    lines += ["", "## Plots", ""]
    frames = [s.table.frame for s in splits]
    import pandas as pd

    x = np.concatenate([s.features.embedding(feature).numpy() for s in splits])
    frame = pd.concat(frames, ignore_index=True)
    columns = [label_column, *[c for c in leakage_columns if c != label_column]][:6]
    plot_pca(plots / "pca.png", x, frame, columns)
    lines += ["![PCA of the embeddings](plots/pca.png)", ""]
    shown_probe = next((p for p in ("linear", "attnpool", "knn") if p in predictions), None)
    if shown_probe and not info["multilabel"]:
        pred = predictions[shown_probe].argmax(axis=1)
        plot_confusion(plots / "confusion.png", y_test, pred, info["classes"], f"{PROBE_TITLES[shown_probe]} on the test rows")
        lines += [f"![confusion matrix ({shown_probe})](plots/confusion.png)", ""]
    if show is not None:
        from metadino.eval.show import plot_heads, plot_show

        plot_show(show, plots / "show.png")
        plot_heads(show, plots / "show_heads.png")
        lines += ["![CLS attention and patch PCA](plots/show.png)", "",
                  "![CLS attention per head](plots/show_heads.png)", ""]
    run_metrics = Path(model) / "metrics.jsonl"
    if run_metrics.is_file():
        if plot_training_curves(plots / "training.png", read_metrics_jsonl(run_metrics), _dino_out_dim(Path(model))):
            lines += ["![training curves](plots/training.png)", ""]
    return atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
