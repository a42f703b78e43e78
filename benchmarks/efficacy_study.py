"""Efficacy study: the demo's arms over paired seeds, mean ± sd per arm and 95 % intervals of paired differences.

    python benchmarks/efficacy_study.py --out runs/study --seeds 0 1 2 3 4          # ≈ 11 min per seed, 2 CPU cores
    python benchmarks/efficacy_study.py --out runs/study --seeds 0 1 2 3 4 --report # tables + plot from what ran

Each seed draws its own target domain (the demo's data at that seed) and trains every arm from the shipped
foundation on the same data stream; differences are paired by seed. Seeds already in ``--out`` are skipped, so
an interrupted study resumes. The primary metric is named before any run: k-NN accuracy on held-out plates.
Besides the demo's four arms, ``fino_plate_paper`` runs FINO + plate with the paper's settings (EMA gradient
balancing μ 0.99, λ ramp from unfreeze, prototype τ 0.023 and momentum 0.99, λ_meta 0.03 for every guide with no
hidden /10) against the released code's (``fino_plate``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

PAIRS = [("fino", "plain"), ("fino_plate", "plain"), ("fino_plate", "fino"), ("plain", "frozen"),
         ("fino_plate_paper", "fino_plate")]


def fino_plate_paper_config(table: Path, *, steps: int, seed: int, quick: bool) -> dict:
    from metadino.demo import arm_config

    cfg = copy.deepcopy(arm_config("fino_plate", table, steps=steps, seed=seed, quick=quick))
    g = cfg["guidance"]
    g["balance_momentum"] = 0.99
    g["lambda"] = {"start": "unfreeze"}
    g["spurious_weight_divisor"] = 1.0
    for guide in g["guides"]:
        guide["weight"] = 0.03
        if guide["head"] == "prototypical":
            guide.update(temperature=0.023, momentum=0.99)
    return cfg


def interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95 % t-interval of paired differences."""
    from scipy.stats import t

    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def report(out: Path, seeds: list[int]) -> str:
    from metadino.demo import ROWS

    summaries = {s: json.loads((out / f"seed{s}" / "summary.json").read_text())
                 for s in seeds if (out / f"seed{s}" / "summary.json").is_file()}
    if not summaries:
        raise SystemExit(f"no finished seed in {out}")
    arms = list(next(iter(summaries.values()))["metrics"])
    keys = [(label, f"{a}/{b}", better) for label, (a, b), better in ROWS]
    stats: dict = {"seeds": sorted(summaries), "arms": {}, "pairs": {}}
    lines = [f"Seeds {', '.join(map(str, sorted(summaries)))} (n = {len(summaries)}); mean ± sd per arm.", "",
             "| metric | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for label, key, _ in keys:
        cells = []
        for arm in arms:
            vals = [summaries[s]["metrics"][arm][key] for s in summaries]
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1))
            stats["arms"].setdefault(arm, {})[key] = {"mean": mean, "sd": sd, "values": vals}
            cells.append(f"{mean:.3f} ± {sd:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    pairs = [(a, b) for a, b in PAIRS if a in arms and b in arms]
    lines += ["", "Paired differences (mean [95 % t-interval]):", "",
              "| metric | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |", "|---|" + "---|" * len(pairs)]
    for label, key, _ in keys:
        cells = []
        for a, b in pairs:
            diffs = [summaries[s]["metrics"][a][key] - summaries[s]["metrics"][b][key] for s in summaries]
            mean, lo, hi = interval(diffs)
            stats["pairs"].setdefault(f"{a}-{b}", {})[key] = {"mean": mean, "lo": lo, "hi": hi, "diffs": diffs}
            cells.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    seconds = [summaries[s]["total_seconds"] for s in summaries]
    lines += ["", f"Wall time per seed {min(seconds) / 60:.1f}–{max(seconds) / 60:.1f} min; peak RSS "
              f"{max(summaries[s]['peak_rss_mb'] for s in summaries):.0f} MB."]
    text = "\n".join(lines) + "\n"
    (out / "study.md").write_text(text)
    (out / "study.json").write_text(json.dumps(stats, indent=1) + "\n")
    plot(out / "study.png", stats, arms)
    return text


def plot(path: Path, stats: dict, arms: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [("knn/accuracy", "k-NN accuracy, held-out plates (primary)"),
             ("linear/accuracy", "linear accuracy, held-out plates"),
             ("purity_test/same_group_share", "same-plate share of same-label neighbours (lower is better)"),
             ("conditional_leakage/plate|cell_line", "plate leakage beyond cell line (lower is better)")]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6))
    for ax, (key, title) in zip(axes, shown):
        for i, arm in enumerate(arms):
            vals = stats["arms"][arm][key]["values"]
            ax.scatter([i] * len(vals), vals, s=14, alpha=0.6)
            ax.errorbar(i, stats["arms"][arm][key]["mean"], yerr=stats["arms"][arm][key]["sd"], fmt="_k", capsize=4)
        for s in range(len(stats["seeds"])):  # paired lines per seed
            ax.plot(range(len(arms)), [stats["arms"][arm][key]["values"][s] for arm in arms], color="0.8", lw=0.6, zorder=0)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None, help="training steps per arm (default: the demo's)")
    parser.add_argument("--arms", nargs="+", default=None, help="default: the demo's arms + fino_plate_paper")
    parser.add_argument("--report", action="store_true", help="only aggregate what has run")
    args = parser.parse_args(argv)
    from metadino.demo import ARMS, run_demo

    arms = tuple(args.arms) if args.arms else (*ARMS, "fino_plate_paper")
    unknown = [a for a in arms if a not in (*ARMS, "fino_plate_paper")]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join((*ARMS, 'fino_plate_paper'))}")
    if not args.report:
        for seed in args.seeds:
            if (args.out / f"seed{seed}" / "summary.json").is_file():
                continue
            run_demo(args.out / f"seed{seed}", steps=args.steps, seed=seed, arms=arms,
                     configs={"fino_plate_paper": fino_plate_paper_config})
    print(report(args.out, args.seeds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
