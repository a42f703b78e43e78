"""`metadino show`: what a model looks at, side by side for several models (e.g. the foundation and its adaptation).

For n images of a table, each model gets the images exactly as ``eval`` and ``embed`` prepare them (its own
:class:`Preprocessing` through :class:`~metadino.data.dataset.EvalDataset`) and shows

- the last block's CLS -> patch attention, averaged over the heads (each head renormalised over the patches first, so
  what CLS gives itself and the registers is left out), drawn on the patch grid (no smoothing);
- the first three principal components of its patch tokens (last block, after the final norm) as red, green and
  blue: PCA fitted over all patches of the shown images, per model, each component scaled to its 1st-99th percentile
  over those patches — the picture DINO users look at first (parts of the same kind get the same colour).

A second figure holds every head's map. The input column is the evaluation view of the first model before
normalisation, composited to RGB: 1 channel grey; 3 channels as R, G, B; any other count one fixed colour per channel
in order (:data:`CHANNEL_COLOURS`: blue, green, red, yellow, magenta, cyan, orange, purple, then again), added up and
divided per pixel by its largest component where that exceeds 1 (the hue is kept, nothing clips to white); or, with
``rgb_channels``, the chosen channels as R, G, B. Each channel is scaled to its 1st-99.5th percentile in the image
first, so a dim stain stays visible. Every attention map is drawn on its own colour scale (0 to its maximum).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from metadino.data.crops import eval_view
from metadino.data.dataset import EvalDataset, load_checked_image
from metadino.data.photometric.presets import Photometric
from metadino.data.table import MetadataTable
from metadino.errors import UserError
from metadino.files import atomic_write
from metadino.models.attention import cls_attention
from metadino.models.backbone import Backbone
from metadino.models.preprocessing import Preprocessing

__all__ = ["CHANNEL_COLOURS", "ModelPanels", "ShowPanels", "check_show_out", "composite_rgb", "heads_path",
           "patch_pca_rgb", "pick_rows", "plot_heads", "plot_show", "show_panels", "write_show"]

CHANNEL_COLOURS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("blue", (0.0, 0.0, 1.0)), ("green", (0.0, 1.0, 0.0)), ("red", (1.0, 0.0, 0.0)), ("yellow", (1.0, 1.0, 0.0)),
    ("magenta", (1.0, 0.0, 1.0)), ("cyan", (0.0, 1.0, 1.0)), ("orange", (1.0, 0.5, 0.0)), ("purple", (0.5, 0.0, 1.0)),
)
MAX_IMAGES = 64
_CHUNK = 8  # images per forward pass (an HF model holds every block's attention during the call)


@dataclass
class ModelPanels:
    """One model's panels for the shown images: ``heads`` [n, heads, h, w] (each summing to 1), ``mean`` [n, h, w]
    (their mean), ``pca`` [n, h, w, 3] in [0, 1], and the PCA's explained-variance shares of the three components."""

    name: str
    heads: np.ndarray
    mean: np.ndarray
    pca: np.ndarray
    explained: list[float]
    image_size: int


@dataclass
class ShowPanels:
    """The input composites [n, S, S, 3], a caption per image, and each model's panels."""

    images: np.ndarray
    captions: list[str]
    models: list[ModelPanels]
    title: str | None = None


def pick_rows(n_rows: int, n: int) -> list[int]:
    """`n` row positions spread evenly over a selection of `n_rows` (first and last included), or all of them."""
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}.")
    if n > MAX_IMAGES:
        raise UserError(f"--n {n} is more than a figure can show readably; give at most {MAX_IMAGES}.")
    if n_rows == 0:
        raise UserError("the row selection is empty; widen --rows.")
    if n >= n_rows:
        return list(range(n_rows))
    return sorted({int(round(i)) for i in np.linspace(0, n_rows - 1, n)})


def _scale(x: np.ndarray) -> np.ndarray:
    """[C, H, W] -> each channel scaled to its 1st-99.5th percentile, clipped to [0, 1]."""
    c = x.shape[0]
    x = x.astype(np.float64)
    lo = np.percentile(x.reshape(c, -1), 1.0, axis=1)[:, None, None]
    hi = np.percentile(x.reshape(c, -1), 99.5, axis=1)[:, None, None]
    return np.asarray(np.clip((x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0))


def composite_rgb(image: np.ndarray, rgb_channels: Sequence[int] | None = None) -> np.ndarray:
    """[C, H, W] -> [H, W, 3] in [0, 1] (module docstring: grey, RGB, one colour per channel, or the channels
    `rgb_channels` (1 to 3 indices) as R, G, B, the missing ones black)."""
    c = image.shape[0]
    if rgb_channels is not None:
        picked = list(rgb_channels)
        if not 1 <= len(picked) <= 3 or any(not 0 <= i < c for i in picked):
            raise UserError(f"--rgb-channels needs 1 to 3 channel indices between 0 and {c - 1}, got "
                            f"{','.join(map(str, picked))}.")
        out = np.zeros((*image.shape[1:], 3))
        out[..., :len(picked)] = _scale(image[picked]).transpose(1, 2, 0)
        return out
    x = _scale(image)
    if c == 1:
        return np.repeat(x[0][..., None], 3, axis=2)
    if c == 3:
        return x.transpose(1, 2, 0)
    colours = np.array([CHANNEL_COLOURS[i % len(CHANNEL_COLOURS)][1] for i in range(c)])  # [C, 3]
    rgb = np.einsum("chw,ck->hwk", x, colours)
    return np.asarray(rgb / np.maximum(rgb.max(axis=2, keepdims=True), 1.0))


def patch_pca_rgb(patches: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """[n, h, w, D] patch tokens -> ([n, h, w, 3] in [0, 1], explained-variance shares): the first three principal
    components over all n*h*w patches (sign: largest loading positive), each scaled to its 1st-99th percentile."""
    n, h, w, d = patches.shape
    x = patches.reshape(-1, d).astype(np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    k = min(3, vt.shape[0])
    comps = vt[:k]
    comps = comps * np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])[:, None]
    y = x @ comps.T
    lo, hi = np.percentile(y, 1.0, axis=0), np.percentile(y, 99.0, axis=0)
    y = np.clip((y - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    if k < 3:
        y = np.concatenate([y, np.zeros((len(y), 3 - k))], axis=1)
    var = s ** 2
    explained = [float(v) for v in (var[:k] / var.sum() if var.sum() > 0 else np.zeros(k))]
    return y.reshape(n, h, w, 3), explained


@torch.no_grad()
def _model_panels(name: str, backbone: Backbone, pre: Preprocessing, table: MetadataTable,
                  device: torch.device) -> ModelPanels:
    dataset = EvalDataset(table, image_size=pre.image_size, in_chans=pre.in_chans, photometric=pre.transform())
    backbone = backbone.to(device).eval()
    heads, patches = [], []
    for start in range(0, len(dataset), _CHUNK):
        images = torch.stack([dataset[i] for i in range(start, min(start + _CHUNK, len(dataset)))]).to(device)
        heads.append(cls_attention(backbone, images).patch_distribution(mean_heads=False).cpu().numpy())
        patches.append(backbone(images).patches.float().cpu().numpy())
    g = pre.image_size // backbone.patch_size
    maps = np.concatenate(heads)
    pca, explained = patch_pca_rgb(np.concatenate(patches).reshape(len(dataset), g, g, -1))
    return ModelPanels(name, maps, maps.mean(axis=1), pca, explained, pre.image_size)


def show_panels(models: Sequence[tuple[str, Backbone, Preprocessing]], table: MetadataTable, *, n: int = 8,
                device: torch.device | str = "cpu", label_column: str | None = None, title: str | None = None,
                rgb_channels: Sequence[int] | None = None) -> ShowPanels:
    """The panels of `n` rows of `table` (:func:`pick_rows`) for each (name, backbone, preprocessing)."""
    if not models:
        raise ValueError("show_panels needs at least one model")
    if label_column is not None and label_column not in table.frame.columns:
        raise UserError(f"--label-column: the table has no column '{label_column}'; available columns: "
                        f"{', '.join(map(str, table.frame.columns))}.")
    rows = pick_rows(len(table), n)
    shown = table.subset(rows)
    device = torch.device(device)
    first = models[0][2]
    plain = Photometric(first.in_chans)  # the evaluation view before normalisation
    images = np.stack([
        composite_rgb(eval_view(load_checked_image(shown, i, first.in_chans), first.image_size, plain).numpy(),
                      rgb_channels)
        for i in range(len(shown))])
    captions = []
    for i in range(len(shown)):
        text = f"row {shown.row_numbers[i]}"
        if label_column is not None:
            text += f"\n{shown.frame[label_column].iloc[i]}"
        captions.append(text)
    return ShowPanels(images, captions, [_model_panels(name, bb, pre, shown, device) for name, bb, pre in models],
                      title)


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _short(name: str, width: int = 30) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _off(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def plot_show(panels: ShowPanels, path: Path) -> Path:
    """Rows = images; columns: input, then per model its mean CLS attention and its patch PCA."""
    plt = _pyplot()
    n, m = len(panels.images), len(panels.models)
    cols = 1 + 2 * m
    fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.6), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(panels.images[i], interpolation="nearest")
        axes[i][0].set_ylabel(panels.captions[i], fontsize=7)
        for j, mp in enumerate(panels.models):
            axes[i][1 + 2 * j].imshow(mp.mean[i], cmap="inferno", interpolation="nearest")
            axes[i][2 + 2 * j].imshow(mp.pca[i], interpolation="nearest")
        for ax in axes[i]:
            _off(ax)
    axes[0][0].set_title(f"input ({panels.images.shape[1]} px)", fontsize=8)
    for j, mp in enumerate(panels.models):
        heads = mp.heads.shape[1]
        axes[0][1 + 2 * j].set_title(f"{_short(mp.name)}\nCLS attention, mean of {heads} heads", fontsize=7)
        pcs = ", ".join(f"{100 * e:.0f}" for e in mp.explained)
        axes[0][2 + 2 * j].set_title(f"{_short(mp.name)}\npatch PCA 1-3 as RGB ({pcs} %)", fontsize=7)
    if panels.title:
        fig.suptitle(panels.title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_heads(panels: ShowPanels, path: Path) -> Path:
    """Rows = images; columns: input, then every head's CLS attention map of each model."""
    plt = _pyplot()
    n = len(panels.images)
    cols = 1 + sum(mp.heads.shape[1] for mp in panels.models)
    fig, axes = plt.subplots(n, cols, figsize=(1.5 * cols, 1.5 * n + 0.6), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(panels.images[i], interpolation="nearest")
        axes[i][0].set_ylabel(panels.captions[i], fontsize=7)
        c = 1
        for mp in panels.models:
            for h in range(mp.heads.shape[1]):
                axes[i][c].imshow(mp.heads[i, h], cmap="inferno", interpolation="nearest")
                if i == 0:
                    axes[0][c].set_title(f"{_short(mp.name, 18)}\nhead {h}", fontsize=6)
                c += 1
        for ax in axes[i]:
            _off(ax)
    axes[0][0].set_title("input", fontsize=7)
    fig.suptitle((panels.title + ": " if panels.title else "") + "CLS attention of the last block, per head", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def heads_path(out: Path) -> Path:
    """Where the per-head figure of ``--out FIG.png`` goes: ``FIG.heads.png`` beside it."""
    return out.with_name(f"{out.stem}.heads{out.suffix or '.png'}")


def check_show_out(out: Path, *, overwrite: bool) -> tuple[Path, Path]:
    """The two figures ``--out FIG.png`` writes (FIG.png, FIG.heads.png), checked before any compute."""
    from metadino.files import check_output_file

    if out.suffix.lower() != ".png":
        raise UserError(f"--out '{out}' must end in .png.")
    heads = heads_path(out)
    check_output_file(out, overwrite=overwrite)
    check_output_file(heads, overwrite=overwrite, flag="--out (its per-head figure)")
    return out, heads


def write_show(models: Sequence[tuple[str, Backbone, Preprocessing]], table: MetadataTable, out: Path, *,
               overwrite: bool = False, n: int = 8, device: torch.device | str = "cpu",
               label_column: str | None = None, title: str | None = None,
               rgb_channels: Sequence[int] | None = None) -> tuple[Path, Path]:
    """Compute the panels and write FIG.png and FIG.heads.png (atomically; existing files only with `overwrite`)."""
    main, heads = check_show_out(out, overwrite=overwrite)
    panels = show_panels(models, table, n=n, device=device, label_column=label_column, title=title,
                         rgb_channels=rgb_channels)
    main.parent.mkdir(parents=True, exist_ok=True)
    return plot_show(panels, main), plot_heads(panels, heads)
