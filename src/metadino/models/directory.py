"""The model-directory format: what ``metadino export`` writes and every command reads.

A directory holds the backbone — safetensors + ``config.json`` (``"metadino_backbone": "builtin"``) for the built-in
ViT, a transformers ``save_pretrained`` directory for HF backbones — plus ``preprocessing.json`` (input size,
channels, photometric preset, normalisation), so embedding from it needs no other file. Resolving a MODEL spec
(run directories, adapter exports, ``hf:`` ids) into one is the application layer's job (``metadino.export``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metadino.errors import UserError
from metadino.files import atomic_write_text
from metadino.models.adapt import merged_copy
from metadino.models.backbone import Backbone, load_backbone_state
from metadino.models.channels import expand_patch_embed_weight
from metadino.models.hf import load_hf
from metadino.models.preprocessing import Preprocessing
from metadino.models.vit import VisionTransformer

__all__ = ["PREPROCESSING_FILE", "is_builtin_export", "load_directory", "read_preprocessing", "write_export",
           "write_preprocessing"]

PREPROCESSING_FILE = "preprocessing.json"


def write_export(backbone: Backbone, directory: str | Path, preprocessing: Preprocessing) -> Path:
    """Save `backbone` (LoRA adapters merged into a copy first) and its preprocessing to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merged_copy(backbone).save_pretrained(directory)
    write_preprocessing(directory, preprocessing)
    return directory


def write_preprocessing(directory: Path, preprocessing: Preprocessing) -> None:
    """Write ``preprocessing.json`` atomically (a crash leaves the earlier file or none, never half of one)."""
    atomic_write_text(directory / PREPROCESSING_FILE, json.dumps(preprocessing.to_dict(), indent=2) + "\n")


def read_preprocessing(directory: Path) -> Preprocessing | None:
    """The directory's preprocessing.json, or None when it has none (a plain checkpoint)."""
    path = directory / PREPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"'{path}' cannot be read: {e}.") from None
    return Preprocessing.from_dict(data, source=str(path))


def _load_builtin_export(directory: Path, cfg: dict[str, Any], *, in_chans: int | None, drop_path_rate: float,
                         channel_expansion: str) -> Backbone:
    from safetensors.torch import load_file

    args = {k: v for k, v in cfg.items() if k in VisionTransformer.CONFIG_KEYS}
    missing_args = [k for k in VisionTransformer.CONFIG_KEYS if k not in args and k != "drop_path_rate"]
    if missing_args:
        raise UserError(f"{directory / 'config.json'} lacks {', '.join(missing_args)}; it is not a complete "
                        "metadino backbone export (re-export it with save_pretrained)")
    weights = directory / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights} is missing; a metadino backbone export needs config.json and model.safetensors")
    # float32 before anything touches them: shipped foundations store float16 to stay small
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    cur = int(args["in_chans"])
    if in_chans is not None and in_chans != cur:
        if 1 < in_chans < cur:
            raise UserError(f"{directory} has {cur} input channels and cannot be shrunk to in_chans={in_chans}; "
                            f"use in_chans >= {cur}")
        key = "patch_embed.proj.weight"
        if key in state:
            state[key] = expand_patch_embed_weight(state[key], in_chans, mode=channel_expansion)
        args["in_chans"] = in_chans
    args["drop_path_rate"] = float(drop_path_rate)
    model = VisionTransformer(**args)
    load_backbone_state(model, state, source=str(weights))
    return model


def load_directory(directory: Path, **kw: Any) -> Backbone:
    """The backbone saved in `directory`: a metadino builtin export, a Hugging Face model directory, or a run
    directory's ``backbone/``. `kw`: in_chans, drop_path_rate, channel_expansion (see ``registry.build_backbone``)."""
    if not (directory / "config.json").is_file() and (directory / "backbone" / "config.json").is_file():
        directory = directory / "backbone"  # a run directory: RUN_DIR/backbone/
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{directory} has no config.json; pass a Hugging Face model directory, a metadino "
                        "export or run directory, hf:ID or builtin:vit-small")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e}); re-export the model") from None
    if isinstance(cfg, dict) and cfg.get("metadino_backbone") == "builtin":
        return _load_builtin_export(directory, cfg, **kw)
    if isinstance(cfg, dict) and "model_type" in cfg:
        return load_hf(str(directory), **kw)
    raise UserError(f"{cfg_path} is neither a Hugging Face config (no model_type) nor a metadino backbone export "
                    "(no metadino_backbone key); point to a directory written by save_pretrained")


def is_builtin_export(directory: Path) -> bool:
    try:
        builtin: bool = json.loads((directory / "config.json").read_text()).get("metadino_backbone") == "builtin"
        return builtin
    except (OSError, ValueError, AttributeError):
        return False
