"""The plan: which trials, how they pair, what each trains, and what is refused before any compute."""

from __future__ import annotations

import pytest
import yaml

from metadino.compass import make_plan, parse_seeds
from metadino.config import config_from_dict, load_config
from metadino.errors import UserError


def plan_of(config, **kw):
    args = dict(label_column="label", train_rows={"split": "train"}, val_rows={"split": "val"}, columns=["plate",
                "exposure"], seeds=[0, 1], out=config.parent / "out")
    args.update(kw)
    return make_plan(load_config(config), **args)


def test_every_column_in_both_roles_plus_one_shared_no_guide_run_per_seed(compass_config):
    plan = plan_of(compass_config, seeds=[3, 7])
    names = [t.name for t in plan.trials]
    assert names == [
        "none-seed3", "plate-encouraged-seed3", "plate-suppressed-seed3", "exposure-encouraged-seed3",
        "exposure-suppressed-seed3",
        "none-seed7", "plate-encouraged-seed7", "plate-suppressed-seed7", "exposure-encouraged-seed7",
        "exposure-suppressed-seed7",
    ]
    assert [p.name for p in map(plan.trial_dir, plan.trials[:2])] == ["none-seed3", "plate-encouraged-seed3"]
    assert all(plan.trial_dir(t).parent == plan.out / "trials" for t in plan.trials)


def test_trials_of_one_seed_differ_only_in_their_one_guide(compass_config):
    plan = plan_of(compass_config, steps=3)
    configs = {t.name: plan.trial_config(t) for t in plan.trials}
    none0 = configs["none-seed0"]
    assert none0["train"]["seed"] == 0 and none0["train"]["steps"] == 3 and none0["guidance"]["guides"] == []
    assert configs["none-seed1"]["train"]["seed"] == 1
    for name, cfg in configs.items():
        seed = int(name.rsplit("seed", 1)[1])
        assert cfg["train"]["seed"] == seed  # paired: trial seed s = train.seed s in every arm
        rest = {k: v for k, v in cfg.items() if k != "guidance"}
        assert rest == {k: v for k, v in configs[f"none-seed{seed}"].items() if k != "guidance"}
        assert cfg["guidance"]["balance"] is True  # the config's other guidance keys stay
        config_from_dict(cfg)  # every trial config is valid
    plate_sup = configs["plate-suppressed-seed0"]["guidance"]["guides"]
    assert [(g["column"], g["role"], g["head"]) for g in plate_sup] == [("plate", "spurious", "classification")]
    assert plate_sup[0].get("given", []) == []  # suppression alone
    assert [(g["role"], g["head"]) for g in configs["exposure-encouraged-seed1"]["guidance"]["guides"]] == [
        ("informative", "regression")]
    assert plan.digest(plan.trials[0]) != plan.digest(plan.trials[1])


def test_the_configs_own_guide_on_a_column_gives_its_settings_but_never_a_spurious_prototype_bank(compass_config):
    plan = plan_of(compass_config, columns=["antibody"])
    enc = plan.guides[("antibody", "encouraged")]
    sup = plan.guides[("antibody", "suppressed")]
    assert enc["head"] == "prototypical" and enc["weight"] == 0.2 and enc["role"] == "informative"
    assert sup["head"] == "classification" and sup["role"] == "spurious"


def test_default_candidates_are_the_audits_metadata_columns(compass_config):
    plan = plan_of(compass_config, columns=None)
    # not the label, the image column, the split, the one-valued column nor the per-row well identifier
    assert plan.columns == ["cell_line", "antibody", "plate", "exposure"]


@pytest.mark.parametrize("columns,message", [
    (["nope"], "--columns: unknown column 'nope'"),
    (["label"], "--columns: 'label' is the --label-column"),
    (["path"], "--columns: 'path' is the image column"),
    (["constant"], "--columns: 'constant' has 1 distinct known value"),
])
def test_bad_candidates_are_refused_naming_the_column(compass_config, columns, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        plan_of(compass_config, columns=columns)


def test_other_bad_requests_are_refused_before_any_compute(compass_config):
    with pytest.raises(UserError, match="no column 'lbl'"):
        plan_of(compass_config, label_column="lbl")
    with pytest.raises(UserError, match="--group-column: unknown column 'plat'"):
        plan_of(compass_config, group_column="plat")
    with pytest.raises(UserError, match="--val-rows"):
        plan_of(compass_config, val_rows={"split": "nothing-here"})
    with pytest.raises(UserError, match="--steps must be at least 1"):
        plan_of(compass_config, steps=0)
    with pytest.raises(UserError, match="worst-group metrics need --group-column"):
        plan_of(compass_config, metric="knn/worst_group_accuracy")


def test_seeds_are_a_count_or_a_list():
    assert parse_seeds("2") == [0, 1]
    assert parse_seeds("3,7") == [3, 7]
    assert parse_seeds(3) == [0, 1, 2]
    for bad in ("0", "a", "1,1", "-1,2"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def test_the_cli_refuses_a_bad_column_before_training(compass_config, tmp_path, capsys):
    from metadino.cli import main

    out = tmp_path / "refused"
    code = main(["compass", str(compass_config), "--label-column", "label", "--train-rows", "split=train",
                 "--val-rows", "split=val", "--columns", "plate,label", "--out", str(out)])
    assert code == 2
    assert "'label' is the --label-column" in capsys.readouterr().err
    assert not out.exists()


def test_overrides_reach_the_plan(compass_config, tmp_path, capsys):
    from metadino.cli import main

    code = main(["compass", str(compass_config), "train.steps=5", "--label-column", "label", "--train-rows",
                 "split=train", "--val-rows", "split=val", "--columns", "plate", "--out", str(tmp_path / "o"),
                 "--dry-run", "--step-seconds", "2"])
    printed = capsys.readouterr().out
    assert code == 0 and "5 steps each" in printed
    assert "estimate: 1.0 min (configured --step-seconds 2" in printed  # 3 trials x 2 seeds x 5 steps x 2 s
    assert not (tmp_path / "o").exists()  # a dry run writes nothing
    assert yaml.safe_load(compass_config.read_text())["train"]["steps"] == 2
