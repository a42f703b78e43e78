"""The compass for real: a tiny ViT, 2 steps per trial, one column, two seeds; one trial interrupted first."""

from __future__ import annotations

import json

from metadino.compass import MARKER, make_plan, run_compass
from metadino.config import config_from_dict, load_config
from metadino.train.loop import train


def test_a_tiny_sweep_trains_evaluates_resumes_and_reports(compass_config, tmp_path, capsys):
    out = tmp_path / "compass"
    request = dict(label_column="label", train_rows={"split": "train"}, val_rows={"split": "val"}, columns=["plate"],
                   seeds=[0, 1], group_column="plate")
    plan = make_plan(load_config(compass_config), out=out, **request)
    out.mkdir()
    (out / MARKER).write_text("")  # as an earlier, interrupted compass left it
    interrupted = next(t for t in plan.trials if t.name == "plate-suppressed-seed1")
    first = train(config_from_dict(plan.trial_config(interrupted)), plan.trial_dir(interrupted), stop_after=1,
                  progress=False)
    assert not first.finished

    data = run_compass(compass_config, out=out, devices=["cpu"], progress=False, **request)
    printed = capsys.readouterr().out
    assert "plate-suppressed-seed1 on cpu: resuming from step 1" in printed
    for t in plan.trials:  # every trial is an ordinary, finished run directory
        d = out / "trials" / t.name
        assert (d / "backbone").is_dir() and (d / "config.yaml").is_file()
        assert load_config(d / "config.yaml").train.seed == t.seed
        assert (d / "report" / "metrics.json").is_file()
    record = json.loads((out / "trials" / "plate-suppressed-seed1" / "compass-trial.json").read_text())
    assert record["trained_steps"] == 1 and record["steps"] == 2
    log = (out / "trials" / "plate-suppressed-seed0" / "metrics.jsonl").read_text()
    assert "guide/plate/loss" in log and "guide/" not in (out / "trials" / "none-seed0" / "metrics.jsonl").read_text()
    assert set(data["scores"]) == {"none", "plate-encouraged", "plate-suppressed"}
    assert set(data["scores"]["none"]["knn/worst_group_accuracy"]) == {"0", "1"}
    for name in ("compass.md", "compass.json", "compass.png", "guidance.yaml"):
        assert (out / name).is_file()

    # a rerun trains nothing
    run_compass(compass_config, out=out, devices=["cpu"], progress=False, **request)
    assert capsys.readouterr().out.count("finished earlier, skipped") == len(plan.trials)
