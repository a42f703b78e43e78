"""Cross-field checks: impossible values and combinations are rejected naming the key (metadino.config.validate)."""

from __future__ import annotations

import dataclasses

import pytest

from metadino.config import CropsConfig, config_from_dict, validate
from metadino.errors import UserError
from testkit import small_config as make


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


def test_table_is_required():
    with pytest.raises(UserError, match="data.table"):
        config_from_dict({})


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


def test_a_config_built_in_code_with_an_unknown_preset_is_rejected_naming_the_key():
    cfg = dataclasses.replace(make(), crops=CropsConfig(global_size=32, local_size=16, photometric="sepia"))
    with pytest.raises(UserError, match=r"'crops.photometric': unknown preset 'sepia'; choose one of natural"):
        validate(cfg)


def test_the_first_failing_section_is_reported():
    # Sections are checked in the order data, model, crops, ssl, optim, train, guidance, stages, adapt.
    with pytest.raises(UserError, match="'crops.local_size'"):
        make(crops={"local_size": 64}, train={"steps": 0})
    with pytest.raises(UserError, match="'train.steps'"):
        make(train={"steps": 0}, adapt={"freeze_blocks": 2})


@pytest.mark.parametrize(
    "data,key",
    [
        ({"image_template": "{Id}_{channel}.png"}, "data.channels"),  # {channel} without names
        ({"image_template": "img.png"}, "data.image_template"),  # names no column
        ({"image_template": "{Id}.png", "channel_columns": ["a"]}, "data.channel_columns"),
        ({"channels": ["r", "g"]}, "data.channels"),  # 2 names for in_chans=3
        ({"channels": ["r", "r", "g"]}, "data.channels"),
        ({"channel_columns": []}, "data.channel_columns"),
        ({"tile_columns": {"x": "x", "y": "y"}}, "data.tile_columns"),  # no size
        ({"tile_columns": {"x": "x", "y": "y", "size": "s", "width": "w"}}, "data.tile_columns"),
        ({"tile_columns": {"x": "x", "y": "y", "width": "w"}}, "data.tile_columns"),
        ({"tile_columns": {"x": "x", "y": "y", "size": "s", "zoom": "z"}}, "data.tile_columns"),
        ({"read": {"level": -1}}, "data.read.level"),
        ({"read": {"z": -1}}, "data.read.z"),
        ({"read": {"max_pixels": 0}}, "data.read.max_pixels"),
        ({"read": {"nodata": "zero"}}, "data.read.nodata"),
        ({"read": {"fill_value": float("nan")}}, "data.read.fill_value"),
    ],
)
def test_image_layout_and_reading_keys_are_checked(data, key):
    with pytest.raises(UserError, match=rf"^config key '{key.replace('.', chr(92) + '.')}'"):
        make(data=data)


def test_valid_layouts_pass():
    make(data={"image_template": "{Id}_{channel}.png", "channels": ["red", "green", "blue", "yellow"]})
    make(data={"channel_columns": ["a", "b", "c"], "index_column": "i", "read": {"nodata": "mean", "z": 2}})
    make(data={"tile_columns": {"x": "x", "y": "y", "width": "w", "height": "h", "level": "l"}})


def test_tile_keys_match_the_data_layer():
    from metadino.config.validate import _TILE_KEYS
    from metadino.data.sources import TILE_KEYS

    assert _TILE_KEYS == TILE_KEYS
