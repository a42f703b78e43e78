"""`metadino demo`: built-in data -> short DINOv2 adaptation -> before/after k-NN on held-out plates.

Everything runs on CPU in minutes. The demo writes into its own folder and marks it, so a rerun
may clear what an earlier demo wrote but never a folder it did not create.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from metadino.config import config_from_dict
from metadino.data.synthetic import generate_dataset
from metadino.data.table import load_table
from metadino.embed import extract_features
from metadino.errors import UserError
from metadino.eval.knn import knn_predict
from metadino.export import load_model, preprocessing_from_config
from metadino.train.factory import build_backbone_from_config
from metadino.train.loop import train

MARKER = ".metadino-demo"


def demo_config(table: Path, *, steps: int, seed: int, quick: bool) -> dict:
    """The demo's run config: a small ViT on 4-channel 64 px images, microscopy augmentations."""
    return {
        "data": {"table": str(table), "rows": {"split": "train"}},
        "model": {"backbone": "builtin:vit-tiny", "in_chans": 4, "patch_size": 8, "depth": 2 if quick else 6,
                  "drop_path_rate": 0.0 if quick else 0.1},
        "ssl": {
            "method": "dinov2",
            "head": {"out_dim": 256 if quick else 2048, "hidden_dim": 256 if quick else 512, "bottleneck_dim": 64 if quick else 128},
            "ibot": {"head": {"out_dim": 256 if quick else 2048, "hidden_dim": 256 if quick else 512, "bottleneck_dim": 64 if quick else 128}},
            "ema_momentum": 0.99,
        },
        "crops": {"global_size": 48, "local_size": 24, "n_local": 2 if quick else 4, "global_scale": [0.4, 1.0],
                  "local_scale": [0.1, 0.4], "vflip": True, "photometric": "microscopy"},
        "optim": {"lr": 5e-4, "min_lr": 1e-5, "warmup_steps": max(steps // 10, 1), "layer_decay": 1.0, "patch_embed_lr_mult": 1.0},
        "train": {"steps": steps, "batch_size": 16 if quick else 48, "seed": seed, "num_workers": 0 if quick else 2,
                  "checkpoint_every": steps, "log_every": max(steps // 20, 1)},
    }


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"'{out}' exists and was not made by metadino demo; choose another --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by metadino demo; safe to delete\n")


def _knn_accuracy(backbone, table_train, table_test, pre, label: str) -> float:
    classes = sorted(set(table_train.frame[label].astype(str)) | set(table_test.frame[label].astype(str)))
    index = {c: i for i, c in enumerate(classes)}
    y_train = torch.tensor([index[v] for v in table_train.frame[label].astype(str)])
    y_test = torch.tensor([index[v] for v in table_test.frame[label].astype(str)])
    f_train = extract_features(backbone, table_train, pre, progress=False)
    f_test = extract_features(backbone, table_test, pre, progress=False)
    pred = knn_predict(f_train, y_train, f_test, n_classes=len(classes)).argmax(1)
    return float((pred == y_test).float().mean())


def run_demo(out: str | Path, *, steps: int | None = None, seed: int = 0, quick: bool = False) -> dict:
    out = Path(out)
    steps = steps if steps is not None else (6 if quick else 300)
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}.")
    _prepare_out(out)
    t0 = time.perf_counter()
    print(f"[1/3] generating the built-in microscopy-like dataset in {out / 'data'} ...")
    table_path = generate_dataset(out / "data", n_images=240 if quick else 2000, image_size=64, channels=4, seed=seed)
    cfg = config_from_dict(demo_config(table_path, steps=steps, seed=seed, quick=quick))
    print(f"[2/3] DINOv2 adaptation of a {cfg.model.depth}-block ViT for {steps} steps on CPU ...")
    result = train(cfg, out / "run", progress=not quick)

    print("[3/3] k-NN probe of the localisation label: train plates -> held-out plates ...")
    train_rows = load_table(table_path, image_column="path", rows={"split": "train"})
    test_rows = load_table(table_path, image_column="path", rows={"split": "test"})
    torch.manual_seed(seed)  # the same initial weights the run started from
    initial = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size).eval()
    pre = preprocessing_from_config(cfg, initial)
    adapted, _ = load_model(str(out / "run"))
    summary = {
        "steps": steps,
        "train_seconds": round(result.seconds, 1),
        "loss_first": result.first_loss,
        "loss_last": result.last_loss,
        "knn_heldout_plates_initial": _knn_accuracy(initial, train_rows, test_rows, pre, "label"),
        "knn_heldout_plates_adapted": _knn_accuracy(adapted, train_rows, test_rows, pre, "label"),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(f"  SSL loss            {summary['loss_first']:.3f} -> {summary['loss_last']:.3f} over {steps} steps ({summary['train_seconds']} s)")
    print("  k-NN accuracy on held-out plates (protein localisation):")
    print(f"    initial backbone  {summary['knn_heldout_plates_initial']:.3f}")
    print(f"    after adaptation  {summary['knn_heldout_plates_adapted']:.3f}")
    print(f"  run: {out / 'run'}   exported backbone: {out / 'run' / 'backbone'}   summary: {out / 'summary.json'}")
    return summary
