"""The schema: defaults, help texts on every key, and the preset names shared with the data layer."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

from metadino.config import Config, GuideConfig, PhotometricPreset, config_to_dict
from metadino.config.reference import entries
from testkit import small_config as make


def test_defaults_and_types():
    cfg = make()
    assert cfg.train.steps == 1000 and cfg.ssl.method == "dinov2"
    assert cfg.crops.global_scale == (0.32, 1.0)
    assert cfg.optim.lr == 5e-4 and isinstance(make(optim={"lr": 1}).optim.lr, float)


def test_gram_ema_balancing_and_lambda_start_defaults_keep_the_released_behaviour():
    cfg = make()
    assert cfg.ssl.gram.weight == 0.0 and cfg.ssl.gram.clip_negatives == "none"
    assert cfg.guidance.balance_momentum == 0.0 and cfg.guidance.lambda_.start == "step0"
    paper = make(ssl={"gram": {"weight": 1.0, "clip_negatives": "teacher"}},
                 guidance={"balance": True, "balance_momentum": 0.99, "lambda": {"start": "unfreeze"}})
    assert paper.ssl.gram.weight == 1.0 and paper.guidance.balance_momentum == 0.99
    assert config_to_dict(paper)["guidance"]["lambda"]["start"] == "unfreeze"


def _sections(cls: type = Config) -> list[type]:
    hints = typing.get_type_hints(cls)
    out = [cls]
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
        if dataclasses.is_dataclass(item):
            out += _sections(item)
    return out


def test_every_field_has_help_for_the_user():
    missing = [f"{cls.__name__}.{f.name}" for cls in _sections() for f in dataclasses.fields(cls)
               if len(f.metadata.get("help", "").split()) < 2]
    assert missing == []
    assert all(e.help.endswith((".", ")")) for e in entries()), [e.key for e in entries() if not e.help.endswith(".")]


def test_photometric_choices_are_the_data_layers_presets():
    from metadino.data.photometric import PHOTOMETRIC_PRESETS

    assert list(typing.get_args(PhotometricPreset)) == list(PHOTOMETRIC_PRESETS)
    assert typing.get_type_hints(type(Config().crops))["photometric"] == PhotometricPreset


def test_list_defaults_are_not_shared_between_instances():
    a, b = GuideConfig(), GuideConfig()
    a.hidden_dims.append(3)
    assert b.hidden_dims == [512, 256] and Config().data.rows == {} and Config().data.rows is not Config().data.rows


def test_defaults_match_the_released_values():
    d = config_to_dict(Config())
    assert d["data"]["missing_values"] == ["", "NA", "NaN", "nan", "None", "null"]
    assert d["model"]["layerscale_init"] == 1e-5 and d["ssl"]["head"]["out_dim"] == 65536
    assert d["ssl"]["ibot"]["mask_ratio"] == [0.1, 0.5] and d["optim"]["betas"] == [0.9, 0.999]
    assert d["guidance"]["lambda"]["schedule"] == "sigmoid" and d["adapt"]["lora"]["target_modules"] == ["qkv"]


def test_the_config_package_imports_nothing_from_the_layers_below():
    code = "import json, sys, metadino.config.reference; print(json.dumps(sorted(m for m in sys.modules if 'metadino' in m)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out)
    assert [m for m in loaded if not m.startswith("metadino.config") and m not in ("metadino", "metadino.errors")] == []
