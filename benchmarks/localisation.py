"""Label-guided crops (DINO-LG) vs plain crops: where the adapted model's CLS attention goes, paired seeds, as JSON.

    python benchmarks/localisation.py [--seeds 3] [--steps 120] [--images 800] [--share 0.5]

From the shipped foundation (``metadino:synthcell-vit-tiny``), the demo's plain continued-DINOv2 recipe (its quick
head sizes) runs twice per seed on the built-in synthetic data with nucleus boxes (``generate_dataset(boxes=True)``):
``plain`` crops, and ``label_guided`` with ``crops.label_guided.share`` of the local crops centred on the box. Each
adapted teacher — and the foundation once — is scored by ``metadino eval --region-columns x0,y0,x1,y1`` on the
held-out plates (``split=test``): the share of the last block's CLS attention inside the nucleus box and the pointing
game. Reported: every run, the paired differences (guided − plain) per seed, their mean and a 95 % t-interval.
Default run: about 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _interval(values: list[float]) -> dict[str, float]:
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean}
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": round(mean, 4), "low": round(mean - half, 4), "high": round(mean + half, 4)}


def _score(model: str, table: Path, out: Path) -> dict[str, float]:
    from metadino.eval.evaluate import evaluate
    from metadino.export import load_model

    metrics = evaluate(model, lambda: load_model(model), table=table, label_column="label",
                       train_rows={"split": "train"}, test_rows={"split": "test"}, out=out, probes=("knn",),
                       region_columns=("x0", "y0", "x1", "y1"), cache_dir=None, progress=False, report=False)
    loc = metrics["localisation"]
    return {"attention_mass": loc["attention_mass"], "attention_mass_chance": loc["attention_mass_chance"],
            "pointing_game": loc["pointing_game"], "pointing_game_chance": loc["pointing_game_chance"],
            "knn_accuracy": metrics["knn"]["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--share", type=float, default=0.5)
    args = parser.parse_args()
    from metadino.config import config_from_dict
    from metadino.data.synthetic import generate_dataset
    from metadino.demo import arm_config
    from metadino.train.loop import train

    t0 = time.perf_counter()
    out: dict[str, Any] = {"benchmark": "localisation", "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
                           "images": args.images, "share": args.share, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        table = generate_dataset(folder / "data", n_images=args.images, image_size=64, seed=0, boxes=True)
        out["foundation"] = _score("metadino:synthcell-vit-tiny", table, folder / "eval_foundation")
        paired: dict[str, list[float]] = {"attention_mass": [], "pointing_game": [], "knn_accuracy": []}
        for seed in range(args.seeds):
            scores = {}
            for arm in ("plain", "label_guided"):
                cfg = arm_config("plain", table, steps=args.steps, seed=seed, quick=True)
                if arm == "label_guided":
                    cfg["crops"]["label_guided"] = {"share": args.share, "bbox_columns": ["x0", "y0", "x1", "y1"]}
                run = folder / f"{arm}{seed}"
                train(config_from_dict(cfg), run, progress=False)
                scores[arm] = _score(str(run), table, folder / f"eval_{arm}{seed}")
                out["runs"].append({"arm": arm, "seed": seed, **scores[arm]})
            for key in paired:
                paired[key].append(scores["label_guided"][key] - scores["plain"][key])
        out["guided_minus_plain"] = {key: {"per_seed": [round(v, 4) for v in values], **_interval(values)}
                                     for key, values in paired.items()}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
