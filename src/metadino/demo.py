"""`metadino demo`: built-in data -> the same initial model trained twice (plain DINOv2, metadata-guided)
-> both evaluated on held-out plates -> a side-by-side table and a report per arm.

Everything runs on CPU in minutes. The demo writes into its own folder and marks it, so a rerun may
clear what an earlier demo wrote but never a folder it did not create.

The guided arm is the FINO recipe scaled to the demo: antibody prototypes and a cell-line classifier
pull biology into the CLS token, the plate is pushed out by gradient reversal *given the cell line*
(plates are entangled with cell lines in this data), SIGReg regularises the head bottleneck, and the
two-stage schedule trains the heads alone before the backbone moves.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

from metadino.config import config_from_dict
from metadino.data.synthetic import generate_dataset
from metadino.errors import UserError
from metadino.eval.evaluate import evaluate
from metadino.train.loop import train

MARKER = ".metadino-demo"
LEAKAGE_COLUMNS = ("plate", "cell_line", "antibody")
ARMS = ("plain", "guided")


def demo_config(table: Path, *, steps: int, seed: int, quick: bool) -> dict:
    """The plain arm: a small ViT on 4-channel 64 px images, DINOv2 (DINO + iBOT + KoLeo), microscopy crops."""
    head = {"out_dim": 256 if quick else 2048, "hidden_dim": 256 if quick else 512, "bottleneck_dim": 64 if quick else 128}
    return {
        "data": {"table": str(table), "rows": {"split": "train"}},
        # LayerScale 1.0 instead of DINOv2's 1e-5: a 200-step from-scratch run learns far more (README, "The demo")
        "model": {"backbone": "builtin:vit-tiny", "in_chans": 4, "patch_size": 8, "depth": 2 if quick else 6,
                  "drop_path_rate": 0.0 if quick else 0.1, "layerscale_init": 1.0},
        "ssl": {"method": "dinov2", "head": dict(head), "ibot": {"head": dict(head)}, "ema_momentum": 0.99},
        "crops": {"global_size": 48, "local_size": 24, "n_local": 2 if quick else 4, "global_scale": [0.4, 1.0],
                  "local_scale": [0.1, 0.4], "vflip": True, "photometric": "microscopy"},
        "optim": {"lr": 5e-4, "min_lr": 1e-5, "warmup_steps": max(steps // 10, 1), "layer_decay": 1.0, "patch_embed_lr_mult": 1.0},
        "train": {"steps": steps, "batch_size": 16 if quick else 48, "seed": seed, "num_workers": 0 if quick else 2,
                  "checkpoint_every": steps, "log_every": max(steps // 20, 1)},
    }


def guided_config(table: Path, *, steps: int, seed: int, quick: bool) -> dict:
    """The guided arm: the plain arm plus metadata guides, SIGReg and the two-stage schedule.

    Scaled for a 200-step from-scratch run (README, "The demo"): guide weights 1.0 instead of the reference's
    0.1, the plate adversary at 5.0 (0.5 after the reference's /10 rule for spurious guides), prototype EMA
    0.9 instead of 0.999, no balancing (it shrank the one guide that learned early, cell line, toward the
    weak ones), and KoLeo kept next to SIGReg (SIGReg alone collapsed the CLS in this regime).
    """
    cfg = copy.deepcopy(demo_config(table, steps=steps, seed=seed, quick=quick))
    cfg["ssl"]["sigreg"] = {"weight": 0.05, "koleo_too": True}
    cfg["guidance"] = {
        "balance": False,
        "guides": [
            {"column": "antibody", "role": "informative", "head": "prototypical", "weight": 1.0, "momentum": 0.9},
            {"column": "cell_line", "role": "informative", "head": "classification", "weight": 1.0},
            {"column": "plate", "role": "spurious", "head": "classification", "weight": 5.0, "given": ["cell_line"]},
        ],
    }
    cfg["stages"] = {"heads_only_steps": max(steps // 10, 1), "ramp_steps": max(steps // 20, 1)}
    return cfg


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"'{out}' exists and was not made by metadino demo; choose another --out.")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by metadino demo; safe to delete\n")


def _evaluate(model: str, table: Path, out: Path, seed: int, title: str) -> dict:
    return evaluate(
        model, table=table, label_column="label", train_rows={"split": "train"}, test_rows={"split": "test"},
        group_column="plate", probes=("knn", "linear"), leakage_columns=LEAKAGE_COLUMNS, out=out, cache_dir=None,
        seed=seed, progress=False, title=title,
    )


ROWS = [
    # (label, metric path, better)
    ("k-NN accuracy, held-out plates", ("knn", "accuracy"), "higher"),
    ("k-NN worst-plate accuracy", ("knn", "worst_group_accuracy"), "higher"),
    ("linear accuracy, held-out plates", ("linear", "accuracy"), "higher"),
    ("linear worst-plate accuracy", ("linear", "worst_group_accuracy"), "higher"),
    ("leakage: plate (spurious)", ("leakage", "plate"), "lower"),
    ("leakage: cell line (informative)", ("leakage", "cell_line"), "higher"),
    ("leakage: antibody (informative)", ("leakage", "antibody"), "higher"),
]


def comparison_table(results: dict[str, dict]) -> str:
    arms = list(results)
    lines = ["| metric | " + " | ".join(arms) + " | guided - plain |", "|---|" + "---|" * (len(arms) + 1)]
    for label, (a, b), better in ROWS:
        vals = [results[arm][a][b] for arm in arms]
        delta = results["guided"][a][b] - results["plain"][a][b]
        lines.append(f"| {label} ({better} is better) | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {delta:+.3f} |")
    return "\n".join(lines)


def run_demo(out: str | Path, *, steps: int | None = None, seed: int = 0, quick: bool = False) -> dict:
    out = Path(out)
    steps = steps if steps is not None else (6 if quick else 200)
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}.")
    _prepare_out(out)
    t0 = time.perf_counter()
    print(f"[1/4] generating the built-in microscopy-like dataset in {out / 'data'} ...")
    table = generate_dataset(out / "data", n_images=240 if quick else 2000, image_size=64, channels=4, seed=seed)
    configs = {
        "plain": demo_config(table, steps=steps, seed=seed, quick=quick),
        "guided": guided_config(table, steps=steps, seed=seed, quick=quick),
    }
    runs: dict[str, dict] = {}
    for i, arm in enumerate(ARMS):
        cfg = config_from_dict(configs[arm])
        what = "plain DINOv2" if arm == "plain" else "DINOv2 + metadata guides (antibody, cell line; plate suppressed)"
        print(f"[{i + 2}/4] {what}: {cfg.model.depth}-block ViT, {steps} steps, same initial weights (seed {seed}) ...")
        result = train(cfg, out / arm, progress=not quick)
        runs[arm] = {"train_seconds": round(result.seconds, 1), "loss_first": result.first_loss, "loss_last": result.last_loss}

    print("[4/4] evaluating both on the held-out plates (k-NN, linear, worst plate, leakage) ...")
    results = {arm: _evaluate(str(out / arm), table, out / arm / "report", seed, f"metadino demo: {arm} arm") for arm in ARMS}
    table_md = comparison_table(results)
    summary = {
        "steps": steps,
        "seed": seed,
        "runs": runs,
        "metrics": {arm: {f"{a}/{b}": results[arm][a][b] for _, (a, b), _ in ROWS} for arm in ARMS},
    }
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "comparison.md").write_text(
        f"# metadino demo: plain vs metadata-guided ({steps} steps, seed {seed})\n\n{table_md}\n\n"
        "Leakage: how well a cross-validated linear probe decodes the column from the embedding of the train "
        "plates (balanced accuracy). Reports: plain/report/report.md, guided/report/report.md.\n"
    )
    print()
    print(table_md)
    print()
    print(f"  {out / 'comparison.md'}  |  reports: {out / 'plain' / 'report'}, {out / 'guided' / 'report'}"
          f"  |  {summary['total_seconds']:.0f} s in total")
    return summary
