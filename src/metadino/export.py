"""Exporting a trained backbone and loading any MODEL (run dir, export dir, HF id or dir).

An export directory is self-contained: the backbone (a transformers directory for HF backbones,
safetensors + config.json for the built-in ViT) plus ``preprocessing.json`` (input size,
channels, normalisation), so embedding from it needs no other file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metadino.config import Config, config_from_dict
from metadino.errors import UserError
from metadino.models.backbone import Backbone, build_backbone, load_backbone_state

PREPROCESSING_FILE = "preprocessing.json"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def preprocessing_from_config(cfg: Config, backbone: Backbone) -> dict[str, Any]:
    return {
        "image_size": cfg.crops.global_size,
        "in_chans": cfg.model.in_chans,
        "patch_size": backbone.patch_size,
        "photometric": cfg.crops.photometric,
        "mean": cfg.crops.mean,
        "std": cfg.crops.std,
        "embed_dim": backbone.embed_dim,
    }


def default_preprocessing(backbone: Backbone) -> dict[str, Any]:
    """For a plain HF checkpoint: 224 px, ImageNet normalisation for RGB, none otherwise."""
    rgb = backbone.in_chans == 3
    return {
        "image_size": 224 - 224 % backbone.patch_size,
        "in_chans": backbone.in_chans,
        "patch_size": backbone.patch_size,
        "photometric": "natural" if rgb else "none",
        "mean": IMAGENET_MEAN if rgb else None,
        "std": IMAGENET_STD if rgb else None,
        "embed_dim": backbone.embed_dim,
    }


def write_export(backbone: Backbone, directory: str | Path, preprocessing: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone.save_pretrained(directory)
    (directory / PREPROCESSING_FILE).write_text(json.dumps(preprocessing, indent=2) + "\n")
    return directory


def read_preprocessing(directory: Path) -> dict[str, Any] | None:
    path = directory / PREPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"'{path}' cannot be read: {e}.") from None


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def backbone_from_run(run_dir: str | Path) -> tuple[Backbone, dict[str, Any]]:
    """The EMA teacher backbone of the newest checkpoint of a run, and its preprocessing."""
    from metadino.train.checkpoint import load_latest_checkpoint  # train layer; imported lazily
    from metadino.train.factory import build_backbone_from_config

    state = load_latest_checkpoint(run_dir)
    cfg = config_from_dict(state["config"])
    backbone = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size)
    prefix = "teacher.backbone."
    weights = {k[len(prefix) :]: v for k, v in state["task"].items() if k.startswith(prefix)}
    load_backbone_state(backbone, weights, source=f"{run_dir} (step {state['step']})")
    return backbone.eval(), preprocessing_from_config(cfg, backbone)


def export_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the teacher backbone of `run_dir` to `out` (refuses to touch a non-empty `out`)."""
    run_dir, out = Path(run_dir), Path(out)
    if not is_run_dir(run_dir):
        raise UserError(f"'{run_dir}' is not a metadino run directory (no config.yaml and checkpoints/).")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"'{out}' exists and is not empty; choose another --out or pass --overwrite.")
    backbone, preprocessing = backbone_from_run(run_dir)
    return write_export(backbone, out, preprocessing)


def load_model(spec: str) -> tuple[Backbone, dict[str, Any]]:
    """MODEL -> (backbone in eval mode, preprocessing). MODEL is a run directory, an export directory,
    ``hf:<id or dir>``, a bare local HF directory, or a bare hub id (offline cache)."""
    path = Path(spec)
    if path.is_dir():
        if is_run_dir(path):
            exported = path / "backbone"
            if (exported / PREPROCESSING_FILE).is_file():
                path = exported
            else:
                return backbone_from_run(path)
        pre = read_preprocessing(path)
        if pre is None:
            backbone = build_backbone(str(path))
            return backbone.eval(), default_preprocessing(backbone)
        backbone = build_backbone(str(path), in_chans=pre["in_chans"], patch_size=pre["patch_size"], image_size=pre["image_size"])
        return backbone.eval(), pre
    if not spec.startswith(("hf:", "builtin:")) and ("/" not in spec or spec.startswith((".", "/"))):
        raise UserError(f"model '{spec}' is not a directory, an export, or an hf:<id> specification.")
    backbone = build_backbone(spec if spec.startswith(("hf:", "builtin:")) else f"hf:{spec}")
    return backbone.eval(), default_preprocessing(backbone)
