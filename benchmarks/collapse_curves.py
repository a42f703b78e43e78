"""Does continued SSL from released weights erode them? Held-out k-NN against the step, from saved checkpoints.

    python benchmarks/collapse_curves.py --out runs/collapse            # ≈ 20 min on 2 CPU cores
    python benchmarks/collapse_curves.py --out runs/collapse --report   # plot + JSON from what ran

From the shipped foundation, on the demo's target domain (seed 0), plain continued DINOv2 runs
``--steps`` steps (longer than the demo) with a checkpoint every ``--every`` steps, in three variants:
without the two-stage schedule (fresh heads and backbone train from step 1), with it (heads alone for 10 %,
then a 5 % LR ramp), and with it plus DINOv3's Gram anchoring (patch-feature Gram matrices held to those of the
starting model). Each checkpoint's EMA teacher is probed frozen: k-NN accuracy of the label on held-out
plates (fit on the train split) — the measure users report falling when DINOv2 is continued naively
(facebookresearch/dinov2#204).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ARMS = {
    "no two-stage": {"stages": {"heads_only_steps": 0, "ramp_steps": 0}},
    "two-stage": {},
    "two-stage + Gram anchoring": {"ssl": {"gram": {"weight": 1.0}}},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def arm_config(table: Path, arm: str, *, steps: int, every: int, seed: int) -> dict:
    from metadino.demo import arm_config

    cfg = _merge(arm_config("plain", table, steps=steps, seed=seed, quick=False), ARMS[arm])
    cfg["train"].update(checkpoint_every=every, keep_checkpoints=10_000)
    return cfg


def _teacher(state: dict):
    from metadino.config import config_from_dict
    from metadino.models.backbone import load_backbone_state
    from metadino.train.factory import build_backbone_from_config

    cfg = config_from_dict(state["config"])
    backbone = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size)
    prefix = "teacher.backbone."
    load_backbone_state(backbone, {k[len(prefix):]: v for k, v in state["task"].items() if k.startswith(prefix)},
                        source=f"step {state['step']}")
    return backbone.eval()


def knn_accuracy(backbone, pre: dict, tables: dict, classes: list[str]) -> float:
    import numpy as np
    import torch

    from metadino.eval.features import extract
    from metadino.eval.knn import knn_predict

    ys = {s: torch.as_tensor(np.array([classes.index(v) for v in t.frame["label"]])) for s, t in tables.items()}
    f = {s: extract(backbone, t, pre, progress=False).cls for s, t in tables.items()}
    pred = knn_predict(f["train"], ys["train"], f["test"], n_classes=len(classes)).argmax(1)
    return float((pred == ys["test"]).float().mean())


def run(out: Path, *, steps: int, every: int, seed: int, arms: list[str]) -> None:
    from metadino.config import config_from_dict
    from metadino.data.synthetic import generate_dataset
    from metadino.data.table import load_table
    from metadino.demo import DEMO_DATA, FOUNDATION
    from metadino.export import load_model
    from metadino.train.checkpoint import list_checkpoints, load_checkpoint_file
    from metadino.train.loop import train

    table = out / "data" / "metadata.csv"
    if not table.is_file():
        generate_dataset(out / "data", seed=seed, overwrite=True, **DEMO_DATA)
    tables = {s: load_table(table, image_column="path", rows={"split": s}) for s in ("train", "test")}
    classes = sorted(set(tables["train"].frame["label"]))
    curves_path = out / "curves.json"
    curves = json.loads(curves_path.read_text()) if curves_path.is_file() else {}
    foundation, pre = load_model(FOUNDATION)
    start = knn_accuracy(foundation, pre, tables, classes)
    for arm in arms:
        if arm in curves and curves[arm]["steps"][-1] == steps:
            continue
        run_dir = out / arm.replace(" ", "_").replace("+", "plus")
        cfg = config_from_dict(arm_config(table, arm, steps=steps, every=every, seed=seed))
        done = run_dir.exists() and bool(list_checkpoints(run_dir))
        if not (done and (run_dir / "backbone").is_dir()):
            train(cfg, run_dir, resume=done, progress=True)
        points = {0: start}
        for path in list_checkpoints(run_dir):
            state = load_checkpoint_file(path)
            points[int(state["step"])] = knn_accuracy(_teacher(state), pre, tables, classes)
            print(f"{arm}: step {state['step']}: k-NN {points[int(state['step'])]:.3f}", file=sys.stderr)
        curves[arm] = {"steps": sorted(points), "knn": [points[s] for s in sorted(points)]}
        curves_path.write_text(json.dumps(curves, indent=1) + "\n")
        for path in list_checkpoints(run_dir)[1:]:  # newest first: keep the newest (resume); the rest are measured
            path.unlink()


def plot(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = json.loads((out / "curves.json").read_text())
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for arm, c in curves.items():
        ax.plot(c["steps"], c["knn"], marker="o", ms=3, label=arm)
    ax.axhline(next(iter(curves.values()))["knn"][0], color="0.5", ls="--", lw=0.8, label="foundation, frozen")
    ax.set_xlabel("step of continued SSL (batch 48)")
    ax.set_ylabel("k-NN accuracy, held-out plates")
    ax.set_title("continued DINOv2 from metadino:synthcell-vit-tiny", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "collapse_curves.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/collapse"))
    parser.add_argument("--steps", type=int, default=360)
    parser.add_argument("--every", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if not args.report:
        run(args.out, steps=args.steps, every=args.every, seed=args.seed, arms=args.arms)
    plot(args.out)
    print(json.dumps(json.loads((args.out / "curves.json").read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
