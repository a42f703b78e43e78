"""Training data pipeline rate per core (decode + multi-crop + photometric + iBOT masks), printed as JSON.

    python benchmarks/pipeline_rate.py [--repeats 7] [--images 48] [--baseline-src /tmp/pipeline_base/src]

What one loader worker does per image, on one thread (``torch.set_num_threads(1)``): decode a 512 x 512
16-bit TIFF (fixed synthetic images written to a temp dir), then the ViT-S/16 recipe: 2 x 224 px global +
8 x 96 px local crops, patch 16, iBOT masks, with the ``microscopy`` (4 channels) and ``natural`` (RGB)
photometric presets. Rate = images / second on one core.

``--baseline-src`` points at the ``src/`` of another checkout (e.g. ``git worktree add --detach
/tmp/pipeline_base d3b9de9``); each repeat then runs the current code and the baseline in alternating
child processes on the same files, so both see the same machine load, and the JSON gives both medians and
their ratio. On a shared machine, trust the ratio more than the absolute rates (``spread`` = max/min of
the repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
PRESETS = {"microscopy": 4, "natural": 3}
SIZE = 512


def write_images(folder: Path, n: int, channels: int) -> list[Path]:
    """Smooth structure plus noise, uint16, planar [C, H, W] (RGB files as [H, W, 3])."""
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    paths = []
    for i in range(n):
        base = np.stack([np.sin(6.28 * (c + 1) * (xx + rng.random()) * (yy + rng.random())) for c in range(channels)])
        img = np.clip(0.5 + 0.3 * base + 0.05 * rng.standard_normal(base.shape), 0, 1)
        arr = (img * 65535).astype(np.uint16)
        path = folder / f"c{channels}_{i:03d}.tif"
        if channels == 3:
            tifffile.imwrite(path, np.moveaxis(arr, 0, -1), photometric="rgb")
        else:
            tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="separate")
        paths.append(path)
    return paths


def worker(src: str, preset: str, files: list[str], n: int, warmup: int) -> dict:
    """Child process: time ``n`` images of ``preset`` with the metadino found under ``src``."""
    sys.path.insert(0, src)
    import torch

    torch.set_num_threads(1)
    import metadino
    from metadino.data.crops import MultiCropAugmentation
    from metadino.data.images import load_image
    from metadino.data.photometric import build_photometric

    if not Path(metadino.__file__).resolve().is_relative_to(Path(src).resolve()):
        raise RuntimeError(f"imported {metadino.__file__}, not the code under {src}")
    aug = MultiCropAugmentation(global_size=224, local_size=96, n_local=8, patch_size=16,
                                photometric=build_photometric(preset, in_chans=PRESETS[preset]))

    def one(i: int) -> None:
        image = load_image(files[i % len(files)])
        aug(image, seed=0, epoch=0, index=i)

    for i in range(warmup):
        one(i)
    t0 = time.perf_counter()
    for i in range(n):
        one(warmup + i)
    return {"images_per_s": n / (time.perf_counter() - t0)}


def run_child(src: Path, preset: str, files: list[Path], n: int, warmup: int) -> float:
    cmd = [sys.executable, __file__, "--worker", str(src), "--preset", preset, "--n", str(n),
           "--warmup", str(warmup), "--files", *map(str, files)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return float(json.loads(out.strip().splitlines()[-1])["images_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--images", type=int, default=48, help="images timed per repeat and preset")
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--baseline-src", type=Path, default=None, help="src/ of the code to compare against")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--files", nargs="*", default=[], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.preset, args.files, args.n, args.warmup)))
        return

    variants = {"current": SRC} | ({"baseline": args.baseline_src} if args.baseline_src else {})
    result: dict = {"threads": 1, "image": f"{SIZE}x{SIZE} uint16 TIFF", "crops": "2x224 + 8x96, patch 16",
                    "repeats": args.repeats, "images_per_repeat": args.images, "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            files = write_images(Path(tmp), 8, PRESETS[preset])
            rates: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.repeats):
                for name, src in variants.items():  # alternate, so both see the same load
                    rates[name].append(run_child(src, preset, files, args.images, args.warmup))
            entry: dict = {}
            for name, r in rates.items():
                entry[name] = {"images_per_s": round(statistics.median(r), 1),
                               "spread": round(max(r) / min(r), 2), "runs": [round(x, 1) for x in r]}
            if "baseline" in rates:
                ratios = [c / b for c, b in zip(rates["current"], rates["baseline"], strict=True)]
                entry["speedup_median"] = round(statistics.median(ratios), 2)
                entry["speedup_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
            result["presets"][preset] = entry
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
