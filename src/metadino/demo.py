"""`metadino demo`: adapt the shipped foundation to a new microscopy domain four ways and compare them on
held-out plates.

The foundation (``metadino:synthcell-vit-tiny``) was pretrained with plain DINOv2 on a *source* domain (seed 1000);
the demo generates a *target* domain (seed ``--seed``: other cell lines, antibodies and plate effects) and runs,
from the same weights, on the same data stream, for the same steps:

- ``frozen``: the foundation as shipped (no training);
- ``plain``: continued DINOv2 (DINO + iBOT + KoLeo) with the two-stage schedule (heads first, then the backbone);
- ``fino``: FINO's HPA recipe — the plain arm plus an antibody prototype-bank guide, SIGReg instead of KoLeo,
  nothing suppressed (the paper found suppressing the plate alone harmful: plate and cell line are entangled);
- ``fino_plate``: FINO plus the plate pushed out by gradient reversal *given the cell line* (ours: the adversary
  sees the cell line, so only plate information beyond it is removed).

Then k-NN / linear accuracy and worst-plate accuracy on held-out plates, leakage, conditional plate leakage
beyond the cell line and the same-plate share among same-label neighbours. The primary metric of the efficacy
study (README) is the k-NN accuracy on held-out plates. Everything runs on CPU in about ten minutes.

The demo writes into its own folder and marks it, so a rerun may clear what an earlier demo wrote but never a
folder it did not create.
"""

from __future__ import annotations

import copy
import json
import resource
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any, TypedDict

from metadino.config import config_from_dict, read_yaml
from metadino.data.synthetic import generate_dataset
from metadino.errors import UserError
from metadino.eval.evaluate import evaluate
from metadino.export import load_model
from metadino.files import claim_output_dir
from metadino.train.loop import train

MARKER = ".metadino-demo"
FOUNDATION = "metadino:synthcell-vit-tiny"
class DemoData(TypedDict):
    """The size of the demo's target domain (arguments of :func:`~metadino.data.synthetic.generate_dataset`)."""

    n_images: int
    image_size: int
    channels: int


DEMO_DATA: DemoData = {"n_images": 2000, "image_size": 64, "channels": 4}  # the target domain; its seed is --seed
STEPS = 120
LEAKAGE_COLUMNS = ("plate", "cell_line", "antibody")
CONDITIONAL = {"plate": ["cell_line"]}  # plate beyond what the cell line explains
ARMS = ("frozen", "plain", "fino", "fino_plate")
TITLES = {
    "frozen": "the foundation, frozen (no training)",
    "plain": "plain continued DINOv2, two-stage",
    "fino": "FINO HPA recipe: antibody prototypes + SIGReg",
    "fino_plate": "FINO + plate suppressed given the cell line",
}
PRIMARY = ("knn", "accuracy")


# The arms' configs are package files (configs/demo*.yaml in the repository link to them); the demo overrides only
# the table, the seed, the step counts and, for --quick, the sizes below.
CONFIG_FILES = {"plain": "demo.yaml", "fino": "demo_fino.yaml", "fino_plate": "demo_fino_plate.yaml"}
QUICK = {
    "model": {"drop_path_rate": 0.0},
    "ssl": {"head": {"out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64},
            "ibot": {"head": {"out_dim": 256, "hidden_dim": 256, "bottleneck_dim": 64}}},
    "crops": {"n_local": 2},
    "train": {"batch_size": 16, "num_workers": 0},
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def arm_config(arm: str, table: Path, *, steps: int, seed: int, quick: bool) -> dict[str, Any]:
    """The shipped config of `arm` (plain: continued DINOv2 from the foundation, two-stage; fino: + antibody
    prototype bank and SIGReg; fino_plate: + plate adversary given the cell line) on `table`, for `steps` and `seed`."""
    shipped = read_yaml(Path(str(resources.files("metadino.configs") / CONFIG_FILES[arm])))
    run = {"data": {"table": str(table)}, "optim": {"warmup_steps": max(steps // 10, 1)},
           "train": {"steps": steps, "seed": seed, "checkpoint_every": steps, "log_every": max(steps // 20, 1)}}
    return _merge(_merge(shipped, run), QUICK if quick else {})


# (table, *, steps, seed, quick) -> the arm's plain config
ConfigBuilder = Callable[..., dict[str, Any]]
CONFIGS: dict[str, ConfigBuilder] = {arm: partial(arm_config, arm) for arm in CONFIG_FILES}  # the study adds arms


def _prepare_out(out: Path) -> None:
    if claim_output_dir(out, MARKER, not_a_folder=f"'{out}' is a file; choose another --out for the demo.",
                        not_ours=f"'{out}' exists and was not made by metadino demo; choose another --out."):
        shutil.rmtree(out)  # an earlier demo's output, all of it ours
        out.mkdir()
    (out / MARKER).write_text("written by metadino demo; safe to delete\n")


def evaluate_arm(model: str, table: Path, out: Path, seed: int, title: str) -> dict[str, Any]:
    return evaluate(
        model, partial(load_model, model), table=table, label_column="label", train_rows={"split": "train"}, test_rows={"split": "test"},
        group_column="plate", probes=("knn", "linear"), leakage_columns=LEAKAGE_COLUMNS, conditional_leakage=CONDITIONAL,
        out=out, cache_dir=None, seed=seed, progress=False, title=title,
    )


ROWS = [
    # (label, metric path, better)
    ("k-NN accuracy, held-out plates (primary)", ("knn", "accuracy"), "higher"),
    ("k-NN worst-plate accuracy", ("knn", "worst_group_accuracy"), "higher"),
    ("linear accuracy, held-out plates", ("linear", "accuracy"), "higher"),
    ("linear worst-plate accuracy", ("linear", "worst_group_accuracy"), "higher"),
    ("same-plate share of same-label neighbours, held-out plates", ("purity_test", "same_group_share"), "lower"),
    ("leakage: plate beyond cell line", ("conditional_leakage", "plate|cell_line"), "lower"),
    ("leakage: plate (spurious)", ("leakage", "plate"), "lower"),
    ("leakage: cell line", ("leakage", "cell_line"), "neither"),
    ("leakage: antibody (informative)", ("leakage", "antibody"), "higher"),
]


def metric(result: dict[str, Any], path: tuple[str, str]) -> float:
    value = result[path[0]][path[1]]
    return float(value["value"] if isinstance(value, dict) else value)


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    arms = list(results)
    deltas = [a for a in ("fino", "fino_plate") if a in results and "plain" in results]
    head = "| metric | " + " | ".join(arms) + "".join(f" | {a} - plain" for a in deltas) + " |"
    lines = [head, "|---|" + "---|" * (len(arms) + len(deltas))]
    for label, path, better in ROWS:
        vals = [metric(results[arm], path) for arm in arms]
        cells = [f"{v:.3f}" for v in vals] + [f"{metric(results[a], path) - metric(results['plain'], path):+.3f}" for a in deltas]
        hint = f" ({better} is better)" if better != "neither" else ""
        lines.append(f"| {label}{hint} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
    return round(max(kb, children) * scale, 1)


def run_demo(out: str | Path, *, steps: int | None = None, seed: int = 0, quick: bool = False,
             arms: tuple[str, ...] = ARMS, configs: dict[str, ConfigBuilder] | None = None) -> dict[str, Any]:
    """Run the demo into `out`; `arms` and `configs` (arm -> config builder) let the efficacy study add arms."""
    out = Path(out)
    steps = steps if steps is not None else (6 if quick else STEPS)
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}.")
    builders: dict[str, ConfigBuilder] = {**CONFIGS, **(configs or {})}
    _prepare_out(out)
    t0 = time.perf_counter()
    n = len(arms) + 1
    print(f"[1/{n}] generating the target domain (seed {seed}) in {out / 'data'}; starting point: {FOUNDATION} ...")
    data: DemoData = {**DEMO_DATA, "n_images": 240} if quick else DEMO_DATA
    table = generate_dataset(out / "data", seed=seed, **data)
    runs: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for i, arm in enumerate(arms):
        print(f"[{i + 2}/{n}] {arm}: {TITLES.get(arm, arm)}" + ("" if arm == "frozen" else f", {steps} steps") + " ...")
        model = FOUNDATION
        if arm != "frozen":
            cfg = config_from_dict(builders[arm](table, steps=steps, seed=seed, quick=quick))
            result = train(cfg, out / arm, progress=not quick)
            runs[arm] = {"train_seconds": round(result.seconds, 1), "loss_first": result.first_loss,
                         "loss_last": result.last_loss}
            model = str(out / arm)
        results[arm] = evaluate_arm(model, table, out / arm / "report", seed, f"metadino demo: {arm} arm")
    table_md = comparison_table(results)
    summary = {
        "steps": steps,
        "seed": seed,
        "foundation": FOUNDATION,
        "runs": runs,
        "metrics": {arm: {f"{a}/{b}": metric(results[arm], (a, b)) for _, (a, b), _ in ROWS} for arm in arms},
        "primary": "/".join(PRIMARY),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": _peak_rss_mb(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "comparison.md").write_text(
        f"# metadino demo: adapting {FOUNDATION} ({steps} steps, seed {seed})\n\n{table_md}\n\n"
        "Held-out plates: split test, never trained on. Leakage: how well a cross-validated linear probe decodes the "
        "column from the embedding of the train plates (balanced accuracy); plate beyond cell line: that score "
        "minus the one of the cell line alone. One seed is noise-sized: README, 'Efficacy study', has paired "
        "seeds. Reports: <arm>/report/report.md.\n"
    )
    print()
    print(table_md)
    print()
    print(f"  {out / 'comparison.md'}  |  reports: {out}/<arm>/report  |  {summary['total_seconds']:.0f} s in total, "
          f"peak memory {summary['peak_rss_mb']:.0f} MB")
    return summary
