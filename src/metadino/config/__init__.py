"""Typed, strict run configuration.

A config is a tree of dataclasses (:mod:`.schema`, where every key carries its help text). It is read from YAML,
then dotted command-line overrides (`train.steps=200`) are applied (:mod:`.loader`), then cross-field checks run
(:mod:`.validate`) — all before any compute. Unknown keys, wrong types and impossible values raise
:class:`~metadino.errors.UserError` naming the key path. Only factories read this object; components take explicit
arguments. This package imports nothing from the rest of metadino but :mod:`metadino.errors`.
"""

from __future__ import annotations

from metadino.config.loader import (
    NEUTRAL_NEW_KEYS,
    RESUMABLE_CHANGES,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
    load_config,
    parse_override,
    read_yaml,
    save_config,
)
from metadino.config.schema import (
    AdaptConfig,
    Config,
    CropsConfig,
    DataConfig,
    DistillConfig,
    GramConfig,
    GuidanceConfig,
    GuideConfig,
    HeadConfig,
    IBOTConfig,
    LabelGuidedConfig,
    LambdaConfig,
    LoRAConfig,
    ModelConfig,
    OptimConfig,
    PhotometricPreset,
    Precision,
    SIGRegConfig,
    SSLConfig,
    SSLMethod,
    StagesConfig,
    TrainConfig,
)
from metadino.config.validate import validate

__all__ = [
    "NEUTRAL_NEW_KEYS",
    "RESUMABLE_CHANGES",
    "AdaptConfig",
    "Config",
    "CropsConfig",
    "DataConfig",
    "DistillConfig",
    "GramConfig",
    "GuidanceConfig",
    "GuideConfig",
    "HeadConfig",
    "IBOTConfig",
    "LabelGuidedConfig",
    "LambdaConfig",
    "LoRAConfig",
    "ModelConfig",
    "OptimConfig",
    "PhotometricPreset",
    "Precision",
    "SIGRegConfig",
    "SSLConfig",
    "SSLMethod",
    "StagesConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "diff_configs",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
    "validate",
]
