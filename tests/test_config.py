from __future__ import annotations

import pytest
import yaml

from metadino.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
    load_config,
    parse_override,
    save_config,
)
from metadino.errors import UserError

BASE = {"data": {"table": "meta.csv"}, "model": {"backbone": "builtin:vit-tiny", "patch_size": 8}, "crops": {"global_size": 32, "local_size": 16}}


def make(**sections) -> Config:
    data = {k: dict(v) for k, v in BASE.items()}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return config_from_dict(data)


def test_defaults_and_types():
    cfg = make()
    assert cfg.train.steps == 1000 and cfg.ssl.method == "dinov2"
    assert cfg.crops.global_scale == (0.32, 1.0)
    assert cfg.optim.lr == 5e-4 and isinstance(make(optim={"lr": 1}).optim.lr, float)


@pytest.mark.parametrize(
    "section,values,key",
    [
        ("train", {"stpes": 3}, "train.stpes"),
        ("model", {"backbone": 3}, "model.backbone"),
        ("train", {"steps": "many"}, "train.steps"),
        ("train", {"steps": 1.5}, "train.steps"),
        ("train", {"steps": True}, "train.steps"),
        ("ssl", {"method": "dinov5"}, "ssl.method"),
        ("crops", {"global_scale": [0.5]}, "crops.global_scale"),
        ("ssl", {"head": {"out_dim": "x"}}, "ssl.head.out_dim"),
        ("crops", {"local_size": 64}, "crops.local_size"),  # larger than the global crop
        ("crops", {"global_size": 30}, "crops.global_size"),  # not a multiple of the patch
        ("crops", {"global_scale": [0.9, 0.2]}, "crops.global_scale"),
        ("crops", {"photometric": "sepia"}, "crops.photometric"),
        ("model", {"in_chans": 4}, "crops.photometric"),  # natural preset needs RGB
        ("train", {"device": "tpu"}, "train.device"),
        ("train", {"steps": 0}, "train.steps"),
    ],
)
def test_rejects_with_key_path(section, values, key):
    with pytest.raises(UserError) as e:
        make(**{section: values})
    assert f"'{key}'" in str(e.value)


def test_unknown_key_suggests_closest():
    with pytest.raises(UserError, match="Did you mean 'train.steps'"):
        make(train={"stpes": 3})
    with pytest.raises(UserError, match="unknown config key 'trian'"):
        config_from_dict({**BASE, "trian": {}})


def test_table_is_required():
    with pytest.raises(UserError, match="data.table"):
        config_from_dict({})


def test_overrides_parse_yaml_values():
    assert parse_override("train.steps=200") == (["train", "steps"], 200)
    assert parse_override("crops.global_scale=[0.4, 1]") == (["crops", "global_scale"], [0.4, 1])
    assert parse_override("data.rows={split: train}")[1] == {"split": "train"}
    for bad in ("train.steps", "=3", "train..steps=3"):
        with pytest.raises(UserError):
            parse_override(bad)
    with pytest.raises(UserError, match="is a value, not a section"):
        apply_overrides({"train": {"steps": 3}}, ["train.steps.x=1"])


def test_load_save_roundtrip_and_relative_table(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**BASE, "train": {"steps": 7}}))
    cfg = load_config(path, ["train.batch_size=3", "optim.lr=0.001"])
    assert cfg.train.steps == 7 and cfg.train.batch_size == 3 and cfg.optim.lr == 0.001
    assert cfg.data.table == str((tmp_path / "meta.csv").resolve())
    save_config(cfg, tmp_path / "saved.yaml", {"git_sha": None})
    again = load_config(tmp_path / "saved.yaml", [])
    assert config_to_dict(again) == config_to_dict(cfg)
    assert diff_configs(config_to_dict(cfg), config_to_dict(make(train={"steps": 8}))) != []


def test_bad_yaml_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(lst)


def test_guidance_section_and_lambda_alias():
    cfg = make(guidance={"lambda": {"schedule": "linear", "warmup_steps": 5}, "balance": True,
                         "guides": [{"column": "plate", "role": "spurious", "given": ["cell_line"]},
                                    {"column": "antibody", "head": "prototypical", "weight": 0.1}]})
    assert cfg.guidance.lambda_.schedule == "linear" and cfg.guidance.guides[1].head == "prototypical"
    assert config_to_dict(cfg)["guidance"]["lambda"]["warmup_steps"] == 5


@pytest.mark.parametrize(
    "guide,key",
    [
        ({"role": "informative"}, "guidance.guides[0].column"),
        ({"column": "plate", "head": "softmax"}, "guidance.guides[0].head"),
        ({"column": "plate", "given": ["cell_line"]}, "guidance.guides[0].given"),  # informative + given
        ({"column": "plate", "role": "spurious", "head": "prototypical", "given": ["x"]}, "guidance.guides[0].given"),
        ({"column": "plate", "head": "prototypical", "grl_space": "prototype"}, "guidance.guides[0].grl_space"),
        ({"column": "path"}, "guidance.guides[0].column"),
        ({"column": "x", "colum": "y"}, "guidance.guides[0].colum"),
    ],
)
def test_bad_guides_are_rejected_with_key(guide, key):
    with pytest.raises(UserError) as e:
        make(guidance={"guides": [guide]})
    assert f"'{key}'" in str(e.value)


def test_duplicate_guide_column():
    with pytest.raises(UserError, match="already has a guide"):
        make(guidance={"guides": [{"column": "a"}, {"column": "a"}]})


@pytest.mark.parametrize(
    "sections,key",
    [
        ({"adapt": {"mode": "freeze"}}, "adapt.freeze_blocks"),  # freeze needs a block count
        ({"adapt": {"freeze_blocks": 2}}, "adapt.freeze_blocks"),  # full mode freezes nothing
        ({"adapt": {"mode": "lora", "lora": {"rank": 0}}}, "adapt.lora.rank"),
        ({"adapt": {"mode": "lora", "lora": {"target_modules": []}}}, "adapt.lora.target_modules"),
        ({"adapt": {"mode": "lora"}, "stages": {"unfreeze_last_n_blocks": 2}}, "stages.unfreeze_last_n_blocks"),
        ({"ssl": {"distill": {"teacher": "builtin:vit-base"}}}, "ssl.distill.teacher"),
        ({"crops": {"label_guided": {"share": 0.5}}}, "crops.label_guided.share"),  # no region columns
        ({"crops": {"label_guided": {"share": 1.5, "mask_column": "m"}}}, "crops.label_guided.share"),
        ({"crops": {"label_guided": {"bbox_columns": ["a", "b"]}}}, "crops.label_guided.bbox_columns"),
        ({"crops": {"n_local": 0, "label_guided": {"share": 0.5, "mask_column": "m"}}}, "crops.label_guided.share"),
    ],
)
def test_adaptation_and_label_guided_rules_name_the_key(sections, key):
    with pytest.raises(UserError) as e:
        make(**sections)
    assert f"'{key}'" in str(e.value)


def test_gram_ema_balancing_and_lambda_start_defaults_keep_the_released_behaviour():
    cfg = make()
    assert cfg.ssl.gram.weight == 0.0 and cfg.ssl.gram.clip_negatives == "none"
    assert cfg.guidance.balance_momentum == 0.0 and cfg.guidance.lambda_.start == "step0"
    paper = make(ssl={"gram": {"weight": 1.0, "clip_negatives": "teacher"}},
                 guidance={"balance": True, "balance_momentum": 0.99, "lambda": {"start": "unfreeze"}})
    assert paper.ssl.gram.weight == 1.0 and paper.guidance.balance_momentum == 0.99
    assert config_to_dict(paper)["guidance"]["lambda"]["start"] == "unfreeze"


@pytest.mark.parametrize(
    "sections,key",
    [
        ({"ssl": {"gram": {"weight": -1.0}}}, "ssl.gram.weight"),
        ({"ssl": {"gram": {"clip_negatives": "yes"}}}, "ssl.gram.clip_negatives"),
        ({"ssl": {"gram": {"wieght": 1.0}}}, "ssl.gram.wieght"),
        ({"guidance": {"lambda": {"start": "stage2"}}}, "guidance.lambda.start"),
        ({"guidance": {"balance": True, "balance_momentum": 1.0}}, "guidance.balance_momentum"),
        ({"guidance": {"balance": True, "balance_momentum": -0.1}}, "guidance.balance_momentum"),
        ({"guidance": {"balance_momentum": 0.99}}, "guidance.balance_momentum"),  # without balance: true
        ({"guidance": {"balance": True, "balance_per_rank": True, "balance_momentum": 0.99}}, "guidance.balance_momentum"),
    ],
)
def test_gram_and_fino_paper_options_are_validated_with_their_key(sections, key):
    with pytest.raises(UserError) as e:
        make(**sections)
    assert f"'{key}'" in str(e.value)


def test_a_saved_config_from_before_the_new_keys_resumes_only_at_their_neutral_values():
    old = config_to_dict(make())  # as a run saved before ssl.gram, balance_momentum and lambda.start existed
    del old["ssl"]["gram"], old["guidance"]["balance_momentum"], old["guidance"]["lambda"]["start"]
    assert diff_configs(old, config_to_dict(make())) == []
    assert diff_configs(config_to_dict(make()), old) == []
    changed = make(ssl={"gram": {"weight": 1.0}}, guidance={"balance": True, "balance_momentum": 0.99,
                                                            "lambda": {"start": "unfreeze"}})
    assert diff_configs(old, config_to_dict(changed)) == ["guidance.balance", "guidance.balance_momentum",
                                                          "guidance.lambda.start", "ssl.gram"]
    del old["ssl"]["koleo_loss_weight"]  # any other missing key still counts
    assert diff_configs(old, config_to_dict(make())) == ["ssl.koleo_loss_weight"]
