"""The compass's outputs: per-arm scores, paired effects, the audit's dependence beside each factor, entanglement
warnings, the suggested block; ``compass.md``, ``compass.json`` and ``compass.png`` (FINO's per-factor plot)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metadino.audit.stats import Association, describe, determines
from metadino.compass.plan import ROLES, Plan
from metadino.compass.suggest import Effect, Suggestion, guidance_yaml, paired_effect, suggest
from metadino.config import Config, config_to_dict
from metadino.files import atomic_write_text


@dataclass
class Dependence:
    """What the audit measured between the candidates and with the label (training rows)."""

    label: dict[str, Association]  # column -> its association with the label (a = column)
    pairs: dict[tuple[str, str], Association]  # (a, b), both orders, between candidates
    determines: dict[str, list[str]]  # column -> candidates it nearly determines
    determines_label: dict[str, bool]

    def label_text(self, column: str) -> str:
        assoc = self.label.get(column)
        if assoc is None:
            return "–"
        if assoc.measure == "cramers_v":
            return f"U {assoc.u_b_given_a or 0.0:.2f}"
        return f"η {assoc.value:.2f}" if assoc.measure == "correlation_ratio" else f"|ρ| {assoc.value:.2f}"

    def strongest(self, column: str) -> str:
        links = [(b, s) for (a, b), s in self.pairs.items() if a == column]
        if not links:
            return "–"
        b, s = max(links, key=lambda x: x[1].value)
        name = {"cramers_v": "V", "correlation_ratio": "η", "spearman": "|ρ|"}[s.measure]
        return f"{b} ({name} {s.value:.2f})"


def dependence(plan: Plan) -> Dependence:
    audit, columns = plan.audit, set(plan.columns)
    label = {s.a: s for s in audit.label_associations if s.b == plan.label_column and s.a in columns}
    pairs: dict[tuple[str, str], Association] = {}
    for s in audit.associations:
        if s.a in columns and s.b in columns:
            pairs[(s.a, s.b)] = s
            pairs[(s.b, s.a)] = s.oriented(s.b)
    det = {c: [b for (a, b), s in pairs.items() if a == c and determines(s, c)] for c in plan.columns}
    return Dependence(label, pairs, det, {c: c in label and determines(label[c], c) for c in plan.columns})


def warnings_for(plan: Plan, dep: Dependence, suggestion: Suggestion) -> list[str]:
    """Suppressing a factor that nearly determines an encouraged (kept) or audit-informative column, or the label."""
    encouraged = {g.column for g in suggestion.guides if g.role == "encouraged"}
    informative = {c for c, col in plan.audit.columns.items() if col.role == "informative"}
    out = []
    for column in plan.columns:
        for b in dep.determines[column]:
            if b in encouraged or b in informative:
                what = "kept as encouraged" if b in encouraged else "informative in the audit"
                out.append(f"suppressing '{column}' also removes '{b}' ({what}): {describe(dep.pairs[(column, b)], column)}"
                           f"; never suppress '{column}' alone — condition it (given: [{b}]) or leave it")
        if dep.determines_label[column]:
            out.append(f"'{column}' is task-relevant: it nearly determines the label '{plan.label_column}' "
                       f"({describe(dep.label[column], column)}); suppressing it removes label information, and the "
                       f"validation rows cannot show a shortcut through it unless they hold unseen values of "
                       f"'{column}'")
    return out


@dataclass
class Results:
    scores: dict[str, dict[str, dict[int, float]]]  # arm -> metric -> seed -> score
    effects: dict[str, dict[tuple[str, str], Effect | None]]  # metric -> (column, role) -> effect
    failed: dict[str, str] = field(default_factory=dict)  # trial -> error


def collect(plan: Plan, records: Mapping[str, Mapping[str, Any]]) -> Results:
    """Scores of the finished trials (trial name -> record) and every arm's paired effects, for every metric."""
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for trial in plan.trials:
        record = records.get(trial.name)
        if record is None:
            continue
        for metric, value in record["scores"].items():
            scores.setdefault(trial.arm, {}).setdefault(metric, {})[trial.seed] = float(value)
    effects: dict[str, dict[tuple[str, str], Effect | None]] = {}
    none = scores.get("none", {})
    for metric in plan.metrics:
        effects[metric] = {}
        for trial in plan.trials:
            if trial.column is None or trial.role is None or trial.seed != plan.seeds[0]:
                continue
            arm = scores.get(trial.arm, {}).get(metric, {})
            effects[metric][(trial.column, trial.role)] = paired_effect(arm, none.get(metric, {}))
    return Results(scores, effects)


def _mean_sd(values: Sequence[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _setting_keys(base: Config) -> dict[str, Any]:
    """The base config's guidance keys other than the guides that differ from the defaults."""
    default = config_to_dict(Config())["guidance"]
    mine = config_to_dict(base)["guidance"]
    return {k: v for k, v in mine.items() if k != "guides" and v != default.get(k)}


def build_report(plan: Plan, records: Mapping[str, Mapping[str, Any]], *, config_name: str,
                 failed: Mapping[str, str], seconds: float | None) -> dict[str, Any]:
    """Write OUT/compass.md, compass.json and compass.png; returns the JSON content."""
    results = collect(plan, records)
    results.failed = dict(failed)
    dep = dependence(plan)
    primary = results.effects[plan.metric]
    suggestion = suggest(plan.columns, primary, plan.guides, dep.determines)
    warnings = warnings_for(plan, dep, suggestion)
    rows = ", ".join(f"{k}={'|'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in plan.val_rows.items())
    header = [f"measured by `metadino compass` on {config_name}: {plan.steps} steps, seeds "
              f"{', '.join(map(str, plan.seeds))}, {plan.metric} on the validation rows ({rows})",
              "a role is kept only when its paired effect's 95 % interval is above zero; review before training"]
    block = guidance_yaml(suggestion, settings=_setting_keys(plan.base), header=header)
    none = results.scores.get("none", {}).get(plan.metric, {})
    lines = [f"# metadino compass: {config_name}", "",
             f"{len(plan.columns)} candidate(s) × encouraged / suppressed + no guide, {plan.steps} steps, seeds "
             f"{', '.join(map(str, plan.seeds))} (trial seed s = train.seed s in every arm). Probes fitted on "
             f"{_rows(plan.train_rows)}, scored on {_rows(plan.val_rows)}; label `{plan.label_column}`"
             + (f", groups `{plan.group_column}`" if plan.group_column else "") + f". Primary: **{plan.metric}**.", "",
             f"No guide (shared): {plan.metric} {_mean_sd(list(none.values()))}", "",
             "| factor | U(label\\|factor) | strongest link | encouraged Δ [95 % CI] | suppressed Δ [95 % CI] | "
             "suggestion |", "|---|---|---|---|---|---|"]
    chosen = {g.column: g for g in suggestion.guides}
    for column in plan.columns:
        cells = []
        for role in ROLES:
            e = primary.get((column, role))
            cells.append("–" if e is None else e.text())
        g = chosen.get(column)
        verdict = "not guided" if g is None else (g.role + ("" if g.measured else
                                                            f" given {', '.join(g.guide['given'])} (not measured)"))
        flag = " ⚠" if any(w.startswith(f"suppressing '{column}'") or w.startswith(f"'{column}' is task")
                          for w in warnings) else ""
        lines.append(f"| {column}{flag} | {dep.label_text(column)} | {dep.strongest(column)} | {cells[0]} | "
                     f"{cells[1]} | {verdict} |")
    lines += ["", "Δ: paired difference arm − no guide, seed by seed; 95 % t-interval over the seeds (with 2 seeds "
              "t = 12.7: only very consistent effects clear zero). U(label|factor): how much the factor determines "
              "the label (uncertainty coefficient; η for a number); strongest link: the candidate it is most "
              "associated with (Cramér's V; η / |ρ| with numbers), from the `inspect` audit of the training rows.", ""]
    if warnings:
        lines += ["**Warnings**", "", *[f"- ⚠ {w}" for w in warnings], ""]
    lines += ["**Suggested block**", "", "```yaml", block.rstrip(), "```", ""]
    if suggestion.notes:
        lines += [*[f"- {n}" for n in suggestion.notes], ""]
    lines += _all_metrics_table(plan, results)
    lines += _association_table(plan, dep)
    if results.failed:
        lines += ["**Failed trials**", "", *[f"- {k}: {' '.join(v.split())}" for k, v in results.failed.items()], ""]
    missing = [t.name for t in plan.trials if t.name not in records and t.name not in results.failed]
    if missing:
        lines += [f"Not run yet: {', '.join(missing)}.", ""]
    timing = _timing(records, seconds)
    lines += [timing, "", "Trials: `trials/<column>-<role>-seed<s>` and `trials/none-seed<s>` (run directories; "
              "`report/metrics.json` and `compass-trial.json` in each). Figure: `compass.png`.", ""]
    text = "\n".join(lines)
    plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.out / "compass.md", text)
    atomic_write_text(plan.out / "guidance.yaml", block)
    data = {
        "config": config_name, "label_column": plan.label_column, "train_rows": plan.train_rows,
        "val_rows": plan.val_rows, "group_column": plan.group_column, "steps": plan.steps, "seeds": plan.seeds,
        "metric": plan.metric, "columns": plan.columns,
        "scores": {arm: {m: {str(s): v for s, v in by.items()} for m, by in ms.items()}
                   for arm, ms in results.scores.items()},
        "effects": {m: {f"{c}-{r}": (None if e is None else e.to_dict()) for (c, r), e in es.items()}
                    for m, es in results.effects.items()},
        "dependence": {c: {"label": dep.label_text(c), "strongest": dep.strongest(c), "determines": dep.determines[c],
                           "determines_label": dep.determines_label[c]} for c in plan.columns},
        "warnings": warnings,
        "suggestion": {"guides": [{"column": g.column, "role": g.role, "guide": g.guide, "why": g.why,
                                   "measured": g.measured} for g in suggestion.guides],
                       "not_guided": dict(suggestion.not_guided), "notes": suggestion.notes, "yaml": block},
        "failed": results.failed, "timing": timing,
        "trials": {name: {k: r[k] for k in ("train_seconds", "trained_steps", "eval_seconds", "device") if k in r}
                   for name, r in records.items()},
    }
    atomic_write_text(plan.out / "compass.json", json.dumps(data, indent=1) + "\n")
    plot(plan, results, dep, plan.out / "compass.png")
    return data


def _rows(rows: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={'|'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in rows.items())


def _timing(records: Mapping[str, Mapping[str, Any]], seconds: float | None) -> str:
    train = sum(float(r.get("train_seconds", 0.0)) for r in records.values())
    evaluate = sum(float(r.get("eval_seconds", 0.0)) for r in records.values())
    steps = sum(int(r.get("trained_steps", 0)) for r in records.values())
    text = f"Time: {train:.0f} s training ({steps} steps" + (f", {train / steps:.2f} s per step" if steps else "")
    text += f") + {evaluate:.0f} s evaluation over {len(records)} trial(s)"
    return text + (f"; this invocation {seconds:.0f} s wall." if seconds is not None else ".")


def _all_metrics_table(plan: Plan, results: Results) -> list[str]:
    arms = ["none", *[f"{t.arm}" for t in plan.trials if t.column is not None and t.seed == plan.seeds[0]]]
    lines = ["**Every metric, mean ± sd over the seeds (validation rows)**", "",
             "| arm | " + " | ".join(plan.metrics) + " |", "|---|" + "---|" * len(plan.metrics)]
    for arm in arms:
        by = results.scores.get(arm, {})
        lines.append(f"| {arm} | " + " | ".join(_mean_sd(list(by.get(m, {}).values())) for m in plan.metrics) + " |")
    return [*lines, ""]


def _association_table(plan: Plan, dep: Dependence) -> list[str]:
    cols = plan.columns
    lines = ["**Association between candidates** (Cramér's V; η / |ρ| where a column is a number; row determines "
             "column when marked *)", "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for a in cols:
        cells = []
        for b in cols:
            s = dep.pairs.get((a, b))
            cells.append("–" if a == b or s is None else f"{s.value:.2f}" + ("*" if b in dep.determines[a] else ""))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def plot(plan: Plan, results: Results, dep: Dependence, path: Path) -> None:
    """FINO's per-factor plot: for each factor, arrows from the no-guide score to encouraged and to suppressed,
    every seed as a dot and the seed spread (± sd) as a bar; one panel per shown metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = list(dict.fromkeys([plan.metric, "knn/accuracy", "linear/accuracy",
                                *(["knn/worst_group_accuracy"] if plan.group_column else [])]))[:3]
    n = len(plan.columns)
    fig, axes = plt.subplots(1, len(shown), figsize=(4.6 * len(shown), 1.0 + 0.75 * n), squeeze=False)
    colours = {"encouraged": "tab:green", "suppressed": "tab:red"}
    for ax, metric in zip(axes[0], shown):
        none = list(results.scores.get("none", {}).get(metric, {}).values())
        if none:
            m = statistics.mean(none)
            sd = statistics.stdev(none) if len(none) > 1 else 0.0
            ax.axvline(m, color="0.3", lw=1, ls="--", label="no guide")
            ax.axvspan(m - sd, m + sd, color="0.85", zorder=0)
        for i, column in enumerate(plan.columns):
            y0 = n - 1 - i
            for role, dy in (("encouraged", 0.17), ("suppressed", -0.17)):
                arm = next(t.arm for t in plan.trials if t.column == column and t.role == role)
                values = list(results.scores.get(arm, {}).get(metric, {}).values())
                if not values:
                    continue
                mean = statistics.mean(values)
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                y = y0 + dy
                if none:
                    ax.annotate("", xy=(mean, y), xytext=(statistics.mean(none), y),
                                arrowprops={"arrowstyle": "->", "color": colours[role], "lw": 1.6})
                ax.errorbar(mean, y, xerr=sd, fmt="none", ecolor=colours[role], capsize=3, lw=1)
                ax.scatter(values, [y] * len(values), s=12, color=colours[role], alpha=0.6, zorder=3,
                           label=role if i == 0 else None)
        ax.set_yticks(range(n), [f"{c}\n{dep.label_text(c)}" for c in reversed(plan.columns)], fontsize=8)
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_xlabel(metric + " (validation rows)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        if not math.isnan(ax.get_xlim()[0]):
            ax.grid(axis="x", color="0.92")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"metadino compass: {plan.steps} steps, {len(plan.seeds)} seed(s); labels: factor, U(label|factor)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["Dependence", "Results", "build_report", "collect", "dependence", "plot", "warnings_for"]
