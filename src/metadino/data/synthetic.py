"""Built-in synthetic dataset: protein-localization fluorescence microscopy with batch effects.

The generator imitates an HPA-like assay, so that the demo poses the problem metadata guidance is
meant to solve: the label lives in one channel, and nuisance batch effects are strong enough that
a naive embedding groups images by plate.

**Images.** Each field of view shows 1–3 cells. Every cell has an irregular elliptical body, a
nucleus inside it (textured chromatin with darker nucleoli), microtubules radiating from near the
nucleus, and an endoplasmic-reticulum (ER) network that is densest around the nucleus. Channels are
``nucleus, microtubules, er, protein`` (``channels=4``, 16-bit channel-first TIFF) or
``nucleus, microtubules, protein`` (``channels=3``, 8-bit RGB PNG in that channel order).

**Label (informative, protein channel only).** The protein channel shows one of 8 localization
patterns: ``nucleoplasm`` (diffuse nuclear, sparing nucleoli), ``nucleoli`` (bright dots on the
nucleoli), ``cytosol`` (diffuse cytoplasm), ``plasma_membrane`` (ring at the cell edge),
``mitochondria`` (many small blobs in the cytoplasm, denser near the nucleus), ``endoplasmic_reticulum``
(the same network as the ER channel; with ``channels=3`` the ER channel is dropped but this label
stays), ``golgi`` (one compact cluster beside the nucleus) and
``vesicles`` (scattered distinct dots). Every stain also has cell-to-cell expression variation.

**Antibody (informative, high cardinality).** Each antibody targets exactly one localization, so
antibody -> label is a function, but each has its own signature: brightness, nonspecific background
staining, texture granularity, dot size and dot count. ``missing_antibody_fraction`` of the rows
(whole wells) have an empty antibody cell, as HPA rows without an antibody do; their label is kept.

**Cell line (informative).** Each line has its own morphology: cell size, elongation, nucleus size and
shape, membrane irregularity, microtubule twist and number of cells per field.

**Plate (spurious).** Each plate applies a batch effect to all its images: channel bleed-through,
optical blur, a linear illumination ramp plus vignetting, per-channel gain and background offset, and
shot + read noise. Each plate holds mostly (85 % of its wells) one cell line — so plate and cell line
are entangled — and its own skewed label mix (so plate predicts the label in-distribution, which is
exactly the shortcut that fails on new plates). A well holds one cell line and one antibody, imaged in
one or more fields.

**Continuous acquisition metadata (spurious).** ``exposure`` (ms; plate setting with per-image jitter)
scales the signal and therefore the relative noise; ``focus`` (µm defocus; plate offset plus per-image
jitter) adds blur.

**Splits.** The last ``n_heldout_plates`` plates are ``test``: their batch effects, exposures and
focus offsets are drawn from wider, shifted distributions (stronger gain and offset changes, steeper
illumination, more bleed-through, noise and blur), as a new imaging campaign would be. The other plates
are split by well into ``train`` (85 %) and ``val`` (15 %), so fields of one well never straddle splits.

The same seed gives identical files and table. ``generator.json`` in the output folder records the
parameters and the drawn factors (morphologies, antibody -> label map, plate effects).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from metadino.errors import UserError
from metadino.files import claim_output_dir

LABELS: tuple[str, ...] = (
    "nucleoplasm",
    "nucleoli",
    "cytosol",
    "plasma_membrane",
    "mitochondria",
    "endoplasmic_reticulum",
    "golgi",
    "vesicles",
)
COLUMNS: tuple[str, ...] = ("path", "label", "cell_line", "antibody", "plate", "well", "exposure", "focus", "split")
MARKER = "generator.json"
TABLE = "metadata.csv"

_DOMINANT_SHARE = 0.85  # share of a plate's wells that hold its dominant cell line
_VAL_SHARE = 0.15  # share of a non-held-out plate's wells in "val"
_REF_EXPOSURE = 80.0  # ms; exposure at which the signal has gain 1
_MAX_CELLS = 3
_MAX_DOTS = 16  # vesicle dots per cell (upper bound)
_N_NUCLEOLI = 4  # nucleoli slots per nucleus (1-4 used)
_GOLGI_BLOBS = 5


def channel_names(channels: int) -> tuple[str, ...]:
    """Channel order of the generated images."""
    return ("nucleus", "microtubules", "er", "protein") if channels == 4 else ("nucleus", "microtubules", "protein")


@dataclass(frozen=True)
class _CellLine:
    name: str
    radius: float  # mean cell radius as a fraction of the image size
    elongation: float  # major / minor axis
    nucleus_fraction: float  # nucleus radius / cell radius
    nucleus_elongation: float
    irregularity: float  # amplitude of the boundary's angular harmonics
    twist: float  # microtubule curvature (rad per pixel of radius, scaled by image size)
    mean_cells: float  # mean number of cells per field, in [1, 3]


@dataclass(frozen=True)
class _Antibody:
    name: str
    label: str
    brightness: float
    background: float  # nonspecific diffuse staining, relative to the specific signal
    granularity: float  # multiplicative texture amplitude
    texture_scale: int  # texture grid size (cells per image side)
    dot_size: float  # scale of punctate structures
    dot_count: float  # scale of the number of puncta


@dataclass(frozen=True)
class _Plate:
    name: str
    heldout: bool
    dominant_line: str
    exposure: float  # ms, plate setting
    focus_offset: float  # µm
    blur: float  # px, optical blur at perfect focus
    gain: tuple[float, ...]  # per channel (4)
    offset: tuple[float, ...]  # per channel background (4)
    crosstalk: float  # bleed-through between neighbouring channels
    ramp: float  # illumination ramp strength
    ramp_angle: float
    vignette: float
    read_noise: float
    shot_noise: float


def generate_dataset(
    out_dir: str | Path,
    *,
    n_images: int = 2000,
    image_size: int = 64,
    channels: int = 4,
    n_cell_lines: int = 4,
    n_antibodies: int = 48,
    n_plates: int = 12,
    n_heldout_plates: int = 3,
    missing_antibody_fraction: float = 0.05,
    seed: int = 0,
    progress: bool = False,
    overwrite: bool = False,
    boxes: bool = False,
) -> Path:
    """Write images + ``metadata.csv`` (+ ``generator.json``) into ``out_dir`` and return the table path.

    Args:
        out_dir: output folder; must be new or empty (or, with ``overwrite``, hold an earlier synthetic
            dataset, whose files are replaced — nothing else is ever deleted).
        n_images: number of fields of view.
        image_size: side length in pixels (>= 16).
        channels: 4 (16-bit TIFF) or 3 (8-bit RGB PNG, no ER channel).
        n_cell_lines, n_antibodies, n_plates, n_heldout_plates: cardinalities (module docstring).
        missing_antibody_fraction: share of rows (whole wells) with an empty antibody cell.
        seed: everything is a deterministic function of the arguments.
        progress: show a tqdm progress bar.
        overwrite: allow replacing an earlier synthetic dataset in ``out_dir``.
        boxes: add columns ``x0, y0, x1, y1``: the bounding box (pixels, x1/y1 exclusive) of the field's nuclei
            (nucleus mask > 0.5), for label-guided crops and the localisation score. Computed from the drawn cells
            with no further random draws: images and every other column are the same with or without it.
    """
    _check_args(n_images, image_size, channels, n_cell_lines, n_antibodies, n_plates, n_heldout_plates,
                missing_antibody_fraction)
    out = Path(out_dir).expanduser().absolute()
    _prepare_out_dir(out, overwrite)

    rng = np.random.default_rng([seed, 0])
    lines = _draw_cell_lines(rng, n_cell_lines)
    antibodies = _draw_antibodies(rng, n_antibodies)
    plates = _draw_plates(rng, n_plates, n_heldout_plates, lines)
    table = _draw_table(rng, n_images, lines, antibodies, plates, missing_antibody_fraction, channels)

    # The marker goes first so that an interrupted run can be replaced with overwrite=True.
    parameters = {
        "n_images": n_images, "image_size": image_size, "channels": channels, "n_cell_lines": n_cell_lines,
        "n_antibodies": n_antibodies, "n_plates": n_plates, "n_heldout_plates": n_heldout_plates,
        "missing_antibody_fraction": missing_antibody_fraction, "seed": seed,
    }
    marker = _marker(parameters, channels, table, lines, antibodies, plates)
    (out / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")

    ab_of_row = table.pop("_antibody_index").to_numpy()
    nuclei = _render_images(out, table, ab_of_row, lines, antibodies, plates, image_size=image_size,
                            channels=channels, seed=seed, progress=progress)
    if boxes:
        table["x0"], table["y0"], table["x1"], table["y1"] = nuclei.T

    # Table last: a folder with metadata.csv holds a complete dataset.
    table_path = out / TABLE
    table.to_csv(table_path, index=False)
    return table_path


def _marker(parameters: dict[str, Any], channels: int, table: pd.DataFrame, lines: list[_CellLine],
            antibodies: list[_Antibody], plates: list[_Plate]) -> dict[str, Any]:
    """The content of ``generator.json``: the parameters and the drawn factors."""
    return {
        "generator": "metadino.data.synthetic",
        "parameters": parameters,
        "channel_names": list(channel_names(channels)),
        "labels": [label for label in LABELS if label in set(table["label"])],
        "informative": ["label", "antibody", "cell_line"],
        "spurious": ["plate", "well", "exposure", "focus"],
        "cell_lines": [asdict(line) for line in lines],
        "antibodies": [asdict(ab) for ab in antibodies],
        "plates": [asdict(plate) for plate in plates],
    }


def _render_images(out: Path, table: pd.DataFrame, ab_of_row: np.ndarray, lines: list[_CellLine],
                   antibodies: list[_Antibody], plates: list[_Plate], *, image_size: int, channels: int, seed: int,
                   progress: bool) -> np.ndarray:
    """Render and write every row's image, in batches with their own generators (seed, 1, batch index); returns
    each row's nucleus box ``[n, 4]`` (x0, y0, x1, y1)."""
    from tqdm.auto import tqdm

    line_index = {line.name: i for i, line in enumerate(lines)}
    plate_index = {plate.name: i for i, plate in enumerate(plates)}
    label_index = {label: i for i, label in enumerate(LABELS)}
    n_images = len(table)
    batch = max(1, (1 << 18) // (image_size * image_size))  # ~64 images at 64 px; bounds memory at large sizes
    boxes = np.zeros((n_images, 4), dtype=np.int64)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for plate in plates:
        (out / "images" / plate.name).mkdir(exist_ok=True)
    with _one_blas_thread(), tqdm(total=n_images, desc="synthetic images", unit="img", disable=not progress) as bar:
        for b, start in enumerate(range(0, n_images, batch)):
            rows = table.iloc[start:start + batch]
            brng = np.random.default_rng([seed, 1, b])
            images, boxes[start:start + len(rows)] = _render(
                brng,
                image_size,
                [lines[line_index[v]] for v in rows["cell_line"]],
                [antibodies[i] for i in ab_of_row[start:start + batch]],
                [label_index[v] for v in rows["label"]],
                [plates[plate_index[v]] for v in rows["plate"]],
                rows["exposure"].to_numpy(np.float64),
                rows["focus"].to_numpy(np.float64),
            )
            _write_images(out, rows["path"].tolist(), images, channels)
            bar.update(len(rows))
    return boxes


# ---------------------------------------------------------------------------------- arguments & io


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """The matmuls here are small: threaded BLAS only adds overhead (8x slower on a busy 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it, run as is
        return contextlib.nullcontext()
    limits: contextlib.AbstractContextManager[object] = threadpool_limits(limits=1, user_api="blas")
    return limits


def _check_args(n_images: int, image_size: int, channels: int, n_cell_lines: int, n_antibodies: int,
                n_plates: int, n_heldout_plates: int, missing_antibody_fraction: float) -> None:
    problems = []
    if n_images < 1:
        problems.append(f"n_images must be >= 1 (got {n_images})")
    if image_size < 16:
        problems.append(f"image_size must be >= 16 pixels (got {image_size})")
    if channels not in (3, 4):
        problems.append(f"channels must be 3 or 4 (got {channels})")
    if n_cell_lines < 1 or n_antibodies < 1:
        problems.append("n_cell_lines and n_antibodies must be >= 1")
    if not 0 <= n_heldout_plates < n_plates:
        problems.append(f"n_heldout_plates must be in [0, n_plates) (got {n_heldout_plates} of {n_plates})")
    if not 0.0 <= missing_antibody_fraction < 1.0:
        problems.append(f"missing_antibody_fraction must be in [0, 1) (got {missing_antibody_fraction})")
    if problems:
        raise UserError("invalid synthetic dataset settings: " + "; ".join(problems))


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    earlier = claim_output_dir(
        out, MARKER, not_a_folder=f"output {out} exists and is not a folder; choose another output folder",
        not_ours=f"output folder {out} is not empty and holds no synthetic dataset; choose a new or empty folder")
    if not earlier:
        return
    if not overwrite:
        raise UserError(
            f"output folder {out} already holds a synthetic dataset; choose a new folder or pass overwrite"
        )
    # Only the generator's own files are removed.
    shutil.rmtree(out / "images", ignore_errors=True)
    for name in (TABLE, MARKER):
        (out / name).unlink(missing_ok=True)


def _write_images(out: Path, paths: list[str], images: np.ndarray, channels: int) -> None:
    """images: [B, 4, S, S] float in [0, 1] (already clipped)."""
    if channels == 4:
        import tifffile

        data16 = np.round(images * 65535.0).astype(np.uint16)
        for rel, arr in zip(paths, data16):
            tifffile.imwrite(out / rel, arr, photometric="minisblack", planarconfig="separate", metadata=None)
    else:
        from PIL import Image

        data8 = np.round(images[:, (0, 1, 3)] * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
        for rel, arr in zip(paths, data8):
            Image.fromarray(np.ascontiguousarray(arr)).save(out / rel, compress_level=1)


# --------------------------------------------------------------------------------- latent factors


def _spread(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    """n values evenly spread over [lo, hi] in random order, with a little jitter, so lines differ."""
    base = np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])
    jitter = (hi - lo) / max(n, 1) * 0.25 * rng.uniform(-1, 1, n)
    return rng.permutation(np.clip(base + jitter, lo, hi))


def _draw_cell_lines(rng: np.random.Generator, n: int) -> list[_CellLine]:
    radius = _spread(rng, 0.15, 0.24, n)
    elong = _spread(rng, 1.0, 2.1, n)
    nfrac = _spread(rng, 0.36, 0.6, n)
    nelong = _spread(rng, 1.0, 1.5, n)
    irreg = _spread(rng, 0.02, 0.14, n)
    twist = _spread(rng, -1.5, 1.5, n)
    # Smaller cells tend to be more crowded.
    mean_cells = np.clip(1.0 + 2.0 * (0.26 - radius) / 0.11 + rng.uniform(-0.3, 0.3, n), 1.0, 3.0)
    names = [f"line_{chr(65 + i)}" if i < 26 else f"line_{i + 1:02d}" for i in range(n)]
    return [
        _CellLine(names[i], float(radius[i]), float(elong[i]), float(nfrac[i]), float(nelong[i]),
                  float(irreg[i]), float(twist[i]), float(mean_cells[i]))
        for i in range(n)
    ]


def _draw_antibodies(rng: np.random.Generator, n: int) -> list[_Antibody]:
    labels = rng.permutation(np.arange(n) % len(LABELS))
    out = []
    for i in range(n):
        out.append(_Antibody(
            name=f"AB{i + 1:03d}",
            label=LABELS[labels[i]],
            brightness=float(np.exp(rng.normal(0.0, 0.45))),
            background=float(rng.uniform(0.02, 0.22)),
            granularity=float(rng.uniform(0.0, 0.5)),
            texture_scale=int(rng.choice([6, 10, 16])),
            dot_size=float(np.exp(rng.normal(0.0, 0.2))),
            dot_count=float(np.exp(rng.normal(0.0, 0.3))),
        ))
    return out


def _draw_plates(rng: np.random.Generator, n: int, n_heldout: int, lines: list[_CellLine]) -> list[_Plate]:
    # Dominant lines cycle separately over the kept and the held-out plates, so both cover the lines evenly.
    n_kept = n - n_heldout
    dominant = np.concatenate([rng.permutation(np.arange(n_kept) % len(lines)),
                               rng.permutation(np.arange(n_heldout) % len(lines))])
    plates = []
    for i in range(n):
        held = i >= n - n_heldout
        # Held-out plates: a new campaign with wider, shifted distributions of every effect.
        gain = np.exp(rng.normal(-0.35, 0.5 if held else 0.3, 4))
        plates.append(_Plate(
            name=f"P{i + 1:02d}",
            heldout=held,
            dominant_line=lines[dominant[i]].name,
            exposure=float(np.round(_REF_EXPOSURE * np.exp(rng.normal(-0.15 if held else 0.0, 0.35 if held else 0.25)), 1)),
            focus_offset=float(rng.normal(0.6, 0.5) if held else rng.normal(0.0, 0.3)),
            blur=float(rng.uniform(0.4, 1.0) if held else rng.uniform(0.0, 0.6)),
            gain=tuple(float(g) for g in gain),
            offset=tuple(float(o) for o in rng.uniform(0.0, 0.12 if held else 0.06, 4)),
            crosstalk=float(rng.uniform(0.04, 0.15) if held else rng.uniform(0.0, 0.05)),
            ramp=float(rng.uniform(0.2, 0.7) if held else rng.uniform(0.0, 0.35)),
            ramp_angle=float(rng.uniform(0, 2 * np.pi)),
            vignette=float(rng.uniform(0.2, 0.6) if held else rng.uniform(0.0, 0.35)),
            read_noise=float(rng.uniform(0.006, 0.025) if held else rng.uniform(0.003, 0.015)),
            shot_noise=float(rng.uniform(0.002, 0.008) if held else rng.uniform(0.0005, 0.004)),
        ))
    return plates


_WELLS_96 = [f"{r}{c:02d}" for r in "ABCDEFGH" for c in range(1, 13)]


def _draw_table(rng: np.random.Generator, n_images: int, lines: list[_CellLine], antibodies: list[_Antibody],
                plates: list[_Plate], missing_fraction: float, channels: int) -> pd.DataFrame:
    per_plate = np.full(len(plates), n_images // len(plates))
    per_plate[: n_images % len(plates)] += 1
    by_label: dict[str, list[int]] = {}
    for i, antibody in enumerate(antibodies):
        by_label.setdefault(antibody.label, []).append(i)
    labels = [label for label in LABELS if label in by_label]
    suffix = ".tif" if channels == 4 else ".png"

    wells = []  # (plate, well name, line, antibody index, split, n fields)
    for plate, n_p in zip(plates, per_plate):
        if n_p == 0:
            continue
        fields = max(1, math.ceil(n_p / len(_WELLS_96)))
        n_wells = math.ceil(n_p / fields)
        names = [_WELLS_96[j] for j in np.sort(rng.choice(len(_WELLS_96), n_wells, replace=False))]
        # An exact share of wells holds the dominant line, so the plate/line entanglement is guaranteed.
        other = rng.permutation(n_wells) < round((1 - _DOMINANT_SHARE) * n_wells)
        others = [line.name for line in lines if line.name != plate.dominant_line] or [plate.dominant_line]
        mix = 0.25 / len(labels) + 0.75 * rng.dirichlet(np.ones(len(labels)))  # skewed label mix per plate
        val = rng.permutation(n_wells) < round(_VAL_SHARE * n_wells)
        for w in range(n_wells):
            line = others[rng.integers(len(others))] if other[w] else plate.dominant_line
            label = labels[rng.choice(len(labels), p=mix)]
            ab = by_label[label][rng.integers(len(by_label[label]))]
            split = "test" if plate.heldout else ("val" if val[w] else "train")
            n_f = min(fields, n_p - w * fields)
            wells.append((plate, names[w], line, ab, split, n_f))

    # Missing antibodies come by whole wells, until the requested share of rows is reached.
    target = round(missing_fraction * n_images)
    no_antibody = np.zeros(len(wells), dtype=bool)
    count = 0
    for w in rng.permutation(len(wells)):
        if count >= target:
            break
        no_antibody[w] = True
        count += wells[w][5]

    records = []
    for w, (plate, well, line, ab, split, n_f) in enumerate(wells):
        for f in range(n_f):
            exposure = round(plate.exposure * float(np.exp(rng.normal(0.0, 0.08))), 1)
            focus = round(plate.focus_offset + float(rng.normal(0.0, 0.6)), 2)
            records.append({
                "path": f"images/{plate.name}/{plate.name}_{well}_f{f + 1}{suffix}",
                "label": antibodies[ab].label,
                "cell_line": line,
                "antibody": None if no_antibody[w] else antibodies[ab].name,
                "plate": plate.name,
                "well": well,
                "exposure": exposure,
                "focus": focus,
                "split": split,
                "_antibody_index": ab,
            })
    return pd.DataFrame.from_records(records, columns=[*COLUMNS, "_antibody_index"])


# ----------------------------------------------------------------------------------------- drawing


def _interp_matrix(size: int, grid: int) -> np.ndarray:
    """[size, grid] linear interpolation from a coarse grid (cell centres) to pixel centres."""
    pos = (np.arange(size) + 0.5) / size * grid - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, grid - 1)
    hi = np.clip(lo + 1, 0, grid - 1)
    frac = np.clip(pos - np.floor(pos), 0.0, 1.0)
    m = np.zeros((size, grid), dtype=np.float32)
    m[np.arange(size), lo] += 1 - frac
    m[np.arange(size), hi] += frac
    return m


def _smooth_noise(rng: np.random.Generator, n: int, size: int, grid: int) -> np.ndarray:
    """[n, size, size] smooth noise, roughly unit variance, feature size ~ size / grid."""
    grid = max(2, min(grid, size))
    m = _interp_matrix(size, grid)
    coarse = rng.standard_normal((n, grid, grid), dtype=np.float32)
    field = m @ coarse @ m.T
    noise: np.ndarray = field / (field.std(axis=(1, 2), keepdims=True) + 1e-6)
    return noise


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _dots(ys: np.ndarray, xs: np.ndarray, sigma: np.ndarray, weight: np.ndarray, size: int) -> np.ndarray:
    """Sum of isotropic Gaussian dots, as one batched matmul of separable profiles.

    Args:
        ys, xs, sigma, weight: [B, D] dot centres (px), widths (px) and weights (0 = absent).
    Returns:
        [B, S, S]
    """
    grid = np.arange(size, dtype=np.float32) + 0.5
    gy = np.exp(-0.5 * ((grid[None, None, :] - ys[..., None]) / sigma[..., None]) ** 2) * weight[..., None]
    gx = np.exp(-0.5 * ((grid[None, None, :] - xs[..., None]) / sigma[..., None]) ** 2)
    image: np.ndarray = np.matmul(gy.transpose(0, 2, 1).astype(np.float32), gx.astype(np.float32))
    return image


def _ellipse_to_image(cx: np.ndarray, cy: np.ndarray, a: np.ndarray, b: np.ndarray, theta: np.ndarray,
                      u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ellipse-local coordinates (u, v in units of the semi-axes) to image (x, y)."""
    c, s = np.cos(theta), np.sin(theta)
    return cx + a * u * c - b * v * s, cy + a * u * s + b * v * c


def _render(rng: np.random.Generator, size: int, lines: list[_CellLine], abs_: list[_Antibody],
            labels: list[int], plates: list[_Plate], exposure: np.ndarray,
            focus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Draw a batch of fields of view and apply each plate's batch effect; returns [B, 4, S, S] in [0, 1] and the
    nucleus boxes [B, 4] (from the masks: no random draw).

    The steps draw from ``rng`` in a fixed order (cells, nucleoli, chromatin, microtubules, ER, protein,
    acquisition): reordering them would change every generated image.
    """
    cells = _draw_cells(rng, size, lines)
    maps = _cell_maps(cells, size)
    nucleoli = _draw_nucleoli(rng, cells)
    nucleoli_mask = nucleoli.mask(np.ones(len(lines)), size)
    nucleus_ch = _nucleus_channel(rng, maps, nucleoli_mask, size)
    micro = _microtubules(rng, lines, maps, size)
    er_ch = _endoplasmic_reticulum(rng, cells, maps, size)
    protein = _protein_channel(rng, size, abs_, labels, cells, maps, nucleoli, nucleoli_mask, er_ch)
    clean = np.stack([nucleus_ch, micro, er_ch, protein], axis=1).astype(np.float32)  # [B, 4, S, S]
    return _acquire(rng, clean, plates, exposure, focus), _mask_boxes(np.asarray(maps.nuc > 0.5))


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """[B, S, S] bool -> [B, 4] int (x0, y0, x1, y1), x1/y1 exclusive; an empty mask gives the whole field."""
    size = masks.shape[-1]
    rows, cols = np.asarray(masks.any(axis=2)), np.asarray(masks.any(axis=1))  # [B, S] each: y and x extents
    out = np.tile(np.array([0, 0, size, size]), (len(masks), 1))
    for i in range(len(masks)):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys) and len(xs):
            out[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def _column(items: Sequence[object], name: str) -> np.ndarray:
    """[B, 1] float64 column of one attribute of each item (cell line, antibody)."""
    return np.array([getattr(item, name) for item in items])[:, None]


def _e4(x: ArrayLike) -> np.ndarray:
    """A per-cell [B, K] array as float32 [B, K, 1, 1], to broadcast over the pixels."""
    return np.asarray(x, dtype=np.float32)[:, :, None, None]


@dataclass(frozen=True)
class _Cells:
    """Geometry of the cells of a batch, [B, K] each (K = _MAX_CELLS slots; ``exists`` marks the used ones).

    Cell body: centre (cx, cy), semi-axes (a, b), orientation theta, mean radius; boundary wobble of amplitude
    ``irreg`` ([B, 1]) with two harmonic phases. Nucleus: centre (ncx, ncy), semi-axes (na, nb), ntheta, nrad.
    """

    exists: np.ndarray
    radius: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    nrad: np.ndarray
    na: np.ndarray
    nb: np.ndarray
    ntheta: np.ndarray
    ncx: np.ndarray
    ncy: np.ndarray
    irreg: np.ndarray
    phase1: np.ndarray
    phase2: np.ndarray


def _draw_cells(rng: np.random.Generator, s: int, lines: list[_CellLine]) -> _Cells:
    """1-3 cells per field with their line's morphology: the first near the centre, the others around it."""
    n, k = len(lines), _MAX_CELLS
    mean_cells = _column(lines, "mean_cells")[:, 0]
    n_cells = 1 + rng.binomial(2, (mean_cells - 1.0) / 2.0)
    exists = (np.arange(k)[None, :] < n_cells[:, None]).astype(np.float32)
    radius = _column(lines, "radius") * s * np.exp(rng.normal(0, 0.1, (n, k)))
    elong = _column(lines, "elongation") * np.exp(rng.normal(0, 0.1, (n, k)))
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    theta = rng.uniform(0, 2 * np.pi, (n, k))
    cx = np.empty((n, k))
    cy = np.empty((n, k))
    cx[:, 0] = s / 2 + rng.normal(0, 0.1 * s, n)
    cy[:, 0] = s / 2 + rng.normal(0, 0.1 * s, n)
    psi = rng.uniform(0, 2 * np.pi, n)[:, None] + np.arange(1, k)[None, :] * (2 * np.pi / 3) + rng.normal(0, 0.3, (n, k - 1))
    dist = radius[:, :1] * rng.uniform(1.5, 2.1, (n, k - 1))
    cx[:, 1:] = cx[:, :1] + dist * np.cos(psi)
    cy[:, 1:] = cy[:, :1] + dist * np.sin(psi)
    nrad = radius * _column(lines, "nucleus_fraction") * np.exp(rng.normal(0, 0.08, (n, k)))
    nel = _column(lines, "nucleus_elongation") * np.exp(rng.normal(0, 0.08, (n, k)))
    na, nb = nrad * np.sqrt(nel), nrad / np.sqrt(nel)
    ntheta = theta + rng.normal(0, 0.3, (n, k))
    # Nucleus sits off-centre along the major axis, as in spread cells.
    ncx, ncy = _ellipse_to_image(cx, cy, a, b, theta, rng.uniform(-0.2, 0.2, (n, k)), rng.uniform(-0.1, 0.1, (n, k)))
    phase1, phase2 = rng.uniform(0, 2 * np.pi, (2, n, k))
    return _Cells(exists, radius, a, b, theta, cx, cy, nrad, na, nb, ntheta, ncx, ncy,
                  _column(lines, "irregularity"), phase1, phase2)


@dataclass(frozen=True)
class _CellMaps:
    """Pixel maps of a batch: per cell [B, K, S, S] (``*_k``, rc, rn, ndx, ndy) or per field [B, S, S]."""

    rc: np.ndarray  # radial coordinate in the cell, 1 on its (irregular) edge
    cell_k: np.ndarray
    nuc_k: np.ndarray
    rn: np.ndarray  # radial coordinate in the nucleus, 1 on its edge
    ndx: np.ndarray  # x offset (px) from the nucleus centre
    ndy: np.ndarray
    cell: np.ndarray
    nuc: np.ndarray
    cyto: np.ndarray
    perinuclear: np.ndarray  # decays with the distance outside the nucleus


def _cell_maps(c: _Cells, s: int) -> _CellMaps:
    """Soft masks of cell bodies and nuclei, and the coordinates later steps need (no random draws)."""
    col = np.arange(s, dtype=np.float32) + 0.5
    X = col[None, None, None, :]
    Y = col[None, None, :, None]
    dx, dy = X - _e4(c.cx), Y - _e4(c.cy)
    ct, st = _e4(np.cos(c.theta)), _e4(np.sin(c.theta))
    u, v = (dx * ct + dy * st) / _e4(c.a), (-dx * st + dy * ct) / _e4(c.b)
    phi = np.arctan2(v, u)
    wobble = 1.0 + _e4(c.irreg) * (np.sin(3 * phi + _e4(c.phase1)) + 0.6 * np.sin(5 * phi + _e4(c.phase2)))
    rc = np.sqrt(u * u + v * v) / wobble  # 1 on the (irregular) cell edge
    edge = 0.6 / _e4(c.radius)  # soft edge width ~0.6 px
    cell_k = _sigmoid((1.0 - rc) / edge) * _e4(c.exists)
    ndx, ndy = X - _e4(c.ncx), Y - _e4(c.ncy)
    nct, nst = _e4(np.cos(c.ntheta)), _e4(np.sin(c.ntheta))
    nu, nv = (ndx * nct + ndy * nst) / _e4(c.na), (-ndx * nst + ndy * nct) / _e4(c.nb)
    rn = np.sqrt(nu * nu + nv * nv)
    nuc_k = _sigmoid((1.0 - rn) / (0.6 / _e4(c.nrad))) * cell_k
    cell = cell_k.max(axis=1)
    nuc = nuc_k.max(axis=1)
    cyto = np.clip(cell - nuc, 0.0, 1.0)
    # Distance outside the nucleus, in px (0 inside), for perinuclear gradients.
    out_nuc = np.clip(rn - 1.0, 0.0, None) * _e4(c.nrad)
    perinuclear = (np.exp(-out_nuc / _e4(0.45 * c.radius)) * cell_k).max(axis=1)
    return _CellMaps(rc, cell_k, nuc_k, rn, ndx, ndy, cell, nuc, cyto, perinuclear)


@dataclass(frozen=True)
class _Nucleoli:
    """1-4 nucleoli per nucleus: centres (px) and widths [B, K, _N_NUCLEOLI], ``present`` marks the used slots."""

    x: np.ndarray
    y: np.ndarray
    sigma: np.ndarray
    present: np.ndarray

    def mask(self, scale: np.ndarray, s: int) -> np.ndarray:
        """[B, S, S] in [0, 1], each image's nucleoli widened by its ``scale``."""
        n = self.present.shape[0]

        def flat(x: np.ndarray) -> np.ndarray:
            return x.reshape(n, -1)

        dots: np.ndarray = np.clip(_dots(flat(self.y), flat(self.x), flat(self.sigma * scale[:, None, None]),
                                         flat(self.present), s), 0, 1)
        return dots


def _draw_nucleoli(rng: np.random.Generator, c: _Cells) -> _Nucleoli:
    """Nucleoli: dark in the nucleus channel, bright for the nucleoli label."""
    n, k = c.exists.shape
    n_nucleoli = rng.integers(1, _N_NUCLEOLI + 1, (n, k))
    present = (np.arange(_N_NUCLEOLI)[None, None, :] < n_nucleoli[..., None]) * c.exists[..., None]
    rr = np.sqrt(rng.uniform(0, 1, (n, k, _N_NUCLEOLI))) * 0.55
    aa = rng.uniform(0, 2 * np.pi, (n, k, _N_NUCLEOLI))
    nlx, nly = _ellipse_to_image(c.ncx[..., None], c.ncy[..., None], c.na[..., None], c.nb[..., None],
                                 c.ntheta[..., None], rr * np.cos(aa), rr * np.sin(aa))
    nl_sigma = np.maximum(0.7, 0.13 * c.nrad[..., None] * rng.uniform(0.7, 1.3, (n, k, _N_NUCLEOLI)))
    return _Nucleoli(nlx, nly, nl_sigma, present)


# ------------------------------------------------------------------------------ reference channels


def _nucleus_channel(rng: np.random.Generator, m: _CellMaps, nucleoli_mask: np.ndarray, s: int) -> np.ndarray:
    """Textured chromatin with darker nucleoli. [B, S, S]"""
    chromatin = _smooth_noise(rng, len(m.nuc), s, max(4, s // 5))
    channel: np.ndarray = m.nuc * (0.75 + 0.15 * chromatin) * (1.0 - 0.55 * nucleoli_mask)
    return channel


def _microtubules(rng: np.random.Generator, lines: list[_CellLine], m: _CellMaps, s: int) -> np.ndarray:
    """Radial filaments from the nucleus centre. [B, S, S]

    A random angular profile per cell, sampled at (angle + twist * radius), gives filaments that fan out and bend.
    """
    n, k = m.cell_k.shape[:2]
    f32 = np.float32
    profile_len = 256
    n_fil = rng.integers(14, 26, (n, k))
    fil_angle = rng.uniform(0, 1, (n, k, 26))
    fil_on = np.arange(26)[None, None, :] < n_fil[..., None]
    grid = (np.arange(profile_len) + 0.5) / profile_len
    diff = np.abs(grid[None, None, None, :] - fil_angle[..., None])
    diff = np.minimum(diff, 1.0 - diff) * 2 * np.pi  # angular distance, rad
    width = 0.05 * rng.uniform(0.7, 1.3, (n, k, 26))[..., None]
    profile = (np.exp(-0.5 * (diff / width) ** 2) * fil_on[..., None] * rng.uniform(0.5, 1.0, (n, k, 26))[..., None]).sum(2)
    ndx, ndy = m.ndx, m.ndy
    r_mt = np.sqrt(ndx * ndx + ndy * ndy)
    twist = _e4(_column(lines, "twist") / s * rng.uniform(0.5, 1.5, (n, k)))
    ang = (np.arctan2(ndy, ndx) + twist * r_mt) / (2 * np.pi) % 1.0
    idx = np.minimum((ang * profile_len).astype(np.int64), profile_len - 1).reshape(n, k, -1)
    fil = np.take_along_axis(profile.astype(f32), idx, axis=2).reshape(n, k, s, s)
    fil_k = np.clip(fil, 0, 1.3) * m.cell_k * (1.0 - 0.6 * m.nuc_k)
    channel: np.ndarray = np.clip((0.25 * m.cell + 0.75 * fil_k.max(axis=1)), 0, 1.2)
    return channel


def _endoplasmic_reticulum(rng: np.random.Generator, c: _Cells, m: _CellMaps, s: int) -> np.ndarray:
    """A reticular network (ridges = zero crossings of band-limited noise), densest around the nucleus. [B, S, S]"""
    er_noise = _smooth_noise(rng, len(m.nuc), s, max(4, s // 6))
    reticulum = np.exp(-((er_noise / 0.45) ** 2))
    channel: np.ndarray = (0.3 + 0.7 * reticulum) * m.perinuclear * (1.0 - 0.7 * m.nuc) + 0.5 * _nuclear_rim(
        m.rn, m.cell_k, c.nrad)
    return channel


# ------------------------------------------------------------------------- protein channel (the label)


def _protein_channel(rng: np.random.Generator, s: int, abs_: list[_Antibody], labels: list[int], c: _Cells,
                     m: _CellMaps, nucleoli: _Nucleoli, nucleoli_mask: np.ndarray, er_ch: np.ndarray) -> np.ndarray:
    """The label's localization pattern with the antibody's signature and cell-to-cell expression. [B, S, S]"""
    expression = np.exp(rng.normal(0, 0.35, c.exists.shape))  # cell-to-cell variation
    expr_map = (m.cell_k * _e4(expression)).max(axis=1)
    protein = _localization(rng, s, abs_, np.asarray(labels), c, m, nucleoli, nucleoli_mask, er_ch)
    return _antibody_signature(rng, s, abs_, protein, m, expr_map)


def _localization(rng: np.random.Generator, s: int, abs_: list[_Antibody], labels_arr: np.ndarray, c: _Cells,
                  m: _CellMaps, nucleoli: _Nucleoli, nucleoli_mask: np.ndarray, er_ch: np.ndarray) -> np.ndarray:
    """Each image's localization pattern, one label at a time (in LABELS order: it fixes the draws). [B, S, S]"""
    n = len(labels_arr)
    dot_size = np.array([ab.dot_size for ab in abs_])
    dot_count = np.array([ab.dot_count for ab in abs_])
    protein = np.zeros((n, s, s), dtype=np.float32)

    def sel(label: str) -> np.ndarray:
        return np.flatnonzero(labels_arr == LABELS.index(label))

    i = sel("nucleoplasm")
    protein[i] = m.nuc[i] * (1.0 - 0.7 * nucleoli_mask[i])
    i = sel("nucleoli")
    protein[i] = 1.5 * nucleoli.mask(dot_size, s)[i] * m.nuc[i]
    i = sel("cytosol")
    protein[i] = m.cyto[i] + 0.15 * m.nuc[i]
    i = sel("plasma_membrane")
    ring = np.exp(-0.5 * ((m.rc[i] - 1.0) / (1.2 / _e4(c.radius[i]))) ** 2) * _e4(c.exists[i])
    protein[i] = ring.max(axis=1) * 0.9 + 0.12 * m.cell[i]
    i = sel("mitochondria")
    if len(i):
        # Blobs = peaks of fine noise; a larger antibody dot size lowers the threshold (bigger, merged blobs).
        threshold = (0.5 / dot_size[i])[:, None, None]
        blobs = np.clip(_smooth_noise(rng, len(i), s, max(6, s // 3)) - threshold, 0, None)
        protein[i] = np.clip(blobs * 2.0, 0, 1) * m.cyto[i] * (0.3 + 0.7 * m.perinuclear[i])
    i = sel("endoplasmic_reticulum")
    protein[i] = er_ch[i]
    i = sel("golgi")
    if len(i):
        protein[i] = _golgi(rng, s, i, dot_size, c, m)
    i = sel("vesicles")
    if len(i):
        protein[i] = _vesicles(rng, s, i, dot_size, dot_count, c)
    return protein


def _golgi(rng: np.random.Generator, s: int, i: np.ndarray, dot_size: np.ndarray, c: _Cells,
           m: _CellMaps) -> np.ndarray:
    """One compact cluster of blobs just outside the nuclear edge, for the images ``i``. [len(i), S, S]"""
    k = c.exists.shape[1]
    ang_g = rng.uniform(0, 2 * np.pi, (len(i), k))
    dist_g = 1.0 + 2.0 / np.maximum(c.nrad[i], 1.0)  # just outside the nuclear edge
    gx0, gy0 = _ellipse_to_image(c.ncx[i], c.ncy[i], c.na[i], c.nb[i], c.ntheta[i], dist_g * np.cos(ang_g),
                                 dist_g * np.sin(ang_g))
    spread_g = 0.25 * c.radius[i, :, None] * rng.uniform(0.5, 1.0, (len(i), k, _GOLGI_BLOBS))
    gx = gx0[..., None] + rng.normal(0, 1, (len(i), k, _GOLGI_BLOBS)) * spread_g * 0.6
    gy = gy0[..., None] + rng.normal(0, 1, (len(i), k, _GOLGI_BLOBS)) * spread_g * 0.6
    sig = np.maximum(0.7, 0.05 * s * dot_size[i, None, None] * rng.uniform(0.6, 1.2, (len(i), k, _GOLGI_BLOBS)))
    w = np.repeat(c.exists[i][..., None], _GOLGI_BLOBS, axis=2) * rng.uniform(0.5, 1.0, (len(i), k, _GOLGI_BLOBS))
    golgi: np.ndarray = np.clip(_dots(gy.reshape(len(i), -1), gx.reshape(len(i), -1), sig.reshape(len(i), -1),
                                      w.reshape(len(i), -1), s), 0, 1.2) * m.cell[i]
    return golgi


def _vesicles(rng: np.random.Generator, s: int, i: np.ndarray, dot_size: np.ndarray, dot_count: np.ndarray,
              c: _Cells) -> np.ndarray:
    """Scattered distinct dots inside each cell, for the images ``i``. [len(i), S, S]"""
    k = c.exists.shape[1]
    count = np.clip(np.round(rng.uniform(5, 12, (len(i), k)) * dot_count[i, None]), 3, _MAX_DOTS)
    on = (np.arange(_MAX_DOTS)[None, None, :] < count[..., None]) * c.exists[i][..., None]
    rv = np.sqrt(rng.uniform(0.15, 0.85, (len(i), k, _MAX_DOTS)))
    av = rng.uniform(0, 2 * np.pi, (len(i), k, _MAX_DOTS))
    vx, vy = _ellipse_to_image(c.cx[i, :, None], c.cy[i, :, None], c.a[i, :, None], c.b[i, :, None],
                               c.theta[i, :, None], rv * np.cos(av), rv * np.sin(av))
    sig = np.maximum(0.6, 0.025 * s * dot_size[i, None, None] * rng.uniform(0.7, 1.3, (len(i), k, _MAX_DOTS)))
    w = on * rng.uniform(0.5, 1.0, on.shape)
    vesicles: np.ndarray = np.clip(_dots(vy.reshape(len(i), -1), vx.reshape(len(i), -1), sig.reshape(len(i), -1),
                                         w.reshape(len(i), -1), s), 0, 1.2)
    return vesicles


def _antibody_signature(rng: np.random.Generator, s: int, abs_: list[_Antibody], protein: np.ndarray,
                        m: _CellMaps, expr_map: np.ndarray) -> np.ndarray:
    """Granular texture, nonspecific background and brightness of each antibody; cell-to-cell expression."""
    f32 = np.float32
    bright = np.array([ab.brightness for ab in abs_], dtype=f32)
    background = np.array([ab.background for ab in abs_], dtype=f32)
    gran = np.array([ab.granularity for ab in abs_], dtype=f32)
    scales = sorted({ab.texture_scale for ab in abs_})
    texture = np.zeros((len(abs_), s, s), dtype=f32)
    for g in scales:
        j = np.flatnonzero([ab.texture_scale == g for ab in abs_])
        texture[j] = _smooth_noise(rng, len(j), s, max(2, s * g // 64))
    protein = protein * np.clip(1.0 + gran[:, None, None] * texture, 0.0, None) * expr_map
    protein = protein + background[:, None, None] * (0.6 * m.cell + 0.4 * m.nuc) * expr_map
    return protein * bright[:, None, None]


def _nuclear_rim(rn: np.ndarray, cell_k: np.ndarray, nrad: np.ndarray) -> np.ndarray:
    """The nuclear envelope is continuous with the ER: a thin ring at the nucleus edge. [B, S, S]"""
    width = 0.8 / np.asarray(nrad, dtype=np.float32)[:, :, None, None]
    rim: np.ndarray = (np.exp(-0.5 * ((rn - 1.0) / width) ** 2) * cell_k).max(axis=1)
    return rim


def _blur_matrices(sigma: np.ndarray, size: int) -> np.ndarray:
    """[B, S, S] row operators of a 1-D Gaussian blur with per-image sigma (px) and reflected edges."""
    pos = np.arange(size, dtype=np.float64)
    radius = int(math.ceil(3 * max(float(sigma.max()), 0.1)))
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps[None, :] / np.maximum(sigma, 1e-3)[:, None]) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)  # [B, T]
    src = pos[:, None] + taps[None, :]  # [S, T] source pixel of each tap, reflected into range
    src = np.abs(src)
    src = np.where(src > size - 1, 2 * (size - 1) - src, src).clip(0, size - 1).astype(np.int64)
    out = np.zeros((len(sigma), size, size), dtype=np.float64)
    rows = np.broadcast_to(pos.astype(np.int64)[:, None], src.shape)
    for t in range(len(taps)):
        # numpy's stubs type the index of ufunc.at as integer arrays only; a tuple with a slice is valid numpy
        np.add.at(out, (slice(None), rows[:, t], src[:, t]), weights[:, t : t + 1])  # type: ignore[arg-type]
    return out.astype(np.float32)


def _acquire(rng: np.random.Generator, clean: np.ndarray, plates: list[_Plate], exposure: np.ndarray,
             focus: np.ndarray) -> np.ndarray:
    """Apply each image's plate batch effect and acquisition settings. clean: [B, 4, S, S]; returns [0, 1]."""
    n, c, s, _ = clean.shape
    f32 = np.float32

    def p(name: str) -> np.ndarray:
        return np.array([getattr(pl, name) for pl in plates], dtype=np.float64)

    # Bleed-through into neighbouring channels (filter overlap).
    xt = p("crosstalk").astype(f32)[:, None, None, None]
    img = clean.copy()
    img[:, 1:] += xt * clean[:, :-1]
    img[:, :-1] += xt * clean[:, 1:]

    # Optical blur (plate blur + defocus): a separable Gaussian as G @ img @ G^T, edges reflected.
    # Blur is specified for 64 px fields and scales with the image size (same optics, finer sampling).
    blur = _blur_matrices((p("blur") + 0.35 * np.abs(focus)) * (s / 64.0), s)[:, None]  # [B, 1, S, S]
    img = blur @ img @ blur.transpose(0, 1, 3, 2)

    # Illumination: linear ramp and vignetting, the same for every field of a plate.
    coords = (np.arange(s, dtype=f32) + 0.5) / s - 0.5
    ang = p("ramp_angle")[:, None, None]
    ramp = 1.0 + p("ramp")[:, None, None] * (coords[None, None, :] * np.cos(ang) + coords[None, :, None] * np.sin(ang))
    rho2 = (coords[None, None, :] ** 2 + coords[None, :, None] ** 2) * 2.0
    field = (ramp * (1.0 - p("vignette")[:, None, None] * rho2)).astype(f32)[:, None]

    gain = np.array([pl.gain for pl in plates], dtype=f32)[:, :, None, None] * (exposure / _REF_EXPOSURE).astype(f32)[:, None, None, None]
    offset = np.array([pl.offset for pl in plates], dtype=f32)[:, :, None, None]
    signal = np.clip(img * field * gain, 0.0, None)
    shot = np.sqrt(signal * p("shot_noise").astype(f32)[:, None, None, None]) * rng.standard_normal(signal.shape, dtype=f32)
    read = p("read_noise").astype(f32)[:, None, None, None] * rng.standard_normal(signal.shape, dtype=f32)
    acquired: np.ndarray = np.clip(signal + offset * field + shot + read, 0.0, 1.0).astype(f32)
    return acquired
