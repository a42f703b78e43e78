"""The table, the JSON, the figure and the warnings, from constructed trial records (no training)."""

from __future__ import annotations

import json

from metadino.compass import make_plan
from metadino.compass.report import build_report, dependence
from metadino.config import load_config


def records_for(plan, effect):
    out = {}
    for t in plan.trials:
        base = 0.5 + 0.01 * t.seed
        score = base + (0.0 if t.column is None else effect.get((t.column, t.role), 0.0) + 0.002 * t.seed)
        out[t.name] = {"trial": t.name, "scores": {m: score for m in plan.metrics}, "train_seconds": 3.0,
                       "trained_steps": 2, "eval_seconds": 1.0, "device": "cpu"}
    return out


def test_report_files_table_dependence_warnings_and_suggestion(compass_config, tmp_path):
    plan = make_plan(load_config(compass_config), label_column="label", train_rows={"split": "train"},
                     val_rows={"split": "val"}, columns=["cell_line", "plate", "exposure"], seeds=[0, 1, 2],
                     group_column="plate", out=tmp_path / "out")
    effect = {("cell_line", "encouraged"): 0.05, ("plate", "suppressed"): -0.04, ("plate", "encouraged"): 0.001}
    data = build_report(plan, records_for(plan, effect), config_name="compass.yaml", failed={"x": "boom"},
                        seconds=12.0)
    out = plan.out
    assert (out / "compass.png").stat().st_size > 10_000
    md = (out / "compass.md").read_text()
    assert json.loads((out / "compass.json").read_text()) == data
    # plate determines cell_line in the fixture: the audit's dependence sits beside each factor
    dep = dependence(plan)
    assert "cell_line" in dep.determines["plate"]
    assert "| plate ⚠ |" in md and "| cell_line | U 0.00 | plate (V 0.9" in md
    assert any(w.startswith("suppressing 'plate' also removes 'cell_line' (kept as encouraged)")
               for w in data["warnings"])
    # encouraged cell line kept; harmful plate suppression becomes conditional on it (not measured)
    assert [(g["column"], g["role"], g["guide"].get("given", []), g["measured"])
            for g in data["suggestion"]["guides"]] == [("cell_line", "encouraged", [], True),
                                                       ("plate", "suppressed", ["cell_line"], False)]
    assert (out / "guidance.yaml").read_text() == data["suggestion"]["yaml"]
    assert data["effects"]["knn/accuracy"]["cell_line-encouraged"]["mean"] > 0.049
    assert "knn/worst_group_accuracy" in md and "**Failed trials**" in md and "- x: boom" in md
    assert "Time: 63 s training (42 steps, 1.50 s per step) + 21 s evaluation over 21 trial(s)" in md


def test_a_partial_sweep_reports_what_finished(compass_config, tmp_path):
    plan = make_plan(load_config(compass_config), label_column="label", train_rows={"split": "train"},
                     val_rows={"split": "val"}, columns=["plate"], seeds=[0, 1], out=tmp_path / "out")
    records = records_for(plan, {})
    records.pop("plate-suppressed-seed1")
    data = build_report(plan, records, config_name="c.yaml", failed={}, seconds=None)
    assert data["effects"]["knn/accuracy"]["plate-suppressed"]["n"] == 1
    assert "Not run yet: plate-suppressed-seed1." in (plan.out / "compass.md").read_text()
    assert (plan.out / "compass.png").is_file()
