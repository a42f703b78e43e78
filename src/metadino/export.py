"""Exporting a trained run and resolving any MODEL (run dir, export dir, adapter export, ``metadino:``, HF id or
dir) into a backbone and its preprocessing — the application layer above ``train/`` and ``models/``.

An export directory is self-contained (``models/directory.py``: the backbone plus ``preprocessing.json``), so
embedding from it needs no other file. LoRA adapters are merged into the weights on export, so the result is a
plain model.

An adapter-only export of a LoRA run (``export_run(..., merge_lora=False)``) is a peft adapter
directory (``adapter_config.json`` + ``adapter_model.safetensors``, readable by
``PeftModel.from_pretrained(base, dir)``) plus ``metadino_adapter.json`` (how to rebuild the base, and
its fingerprint) and ``preprocessing.json``; a randomly initialised base (``builtin:``) is saved in
``base/`` since it cannot be rebuilt otherwise. :func:`load_model` reads it and merges.

``export --overwrite`` replaces only an earlier export: a folder holding ``preprocessing.json`` and either
``config.json`` (a merged export) or ``metadino_adapter.json`` (an adapter-only one). Before the new export is
written, exactly the files an export writes (:data:`EXPORT_FILES`, sharded weights, ``base/`` of an adapter export)
are removed, so no file of the earlier export is loaded in place of the new model; any other file stays. Any other
non-empty folder is refused, with or without ``--overwrite``.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from metadino.config import Config, config_from_dict
from metadino.errors import UserError
from metadino.foundations import PREFIX as FOUNDATION_PREFIX
from metadino.foundations import foundation_dir
from metadino.models.adapt import METADINO_ADAPTER_FILE
from metadino.models.backbone import Backbone, load_backbone_state
from metadino.models.directory import PREPROCESSING_FILE, read_preprocessing, write_export, write_preprocessing
from metadino.models.preprocessing import Preprocessing
from metadino.models.registry import build_backbone, registered_prefixes
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.factory import adapt_backbone, build_backbone_from_config, preprocessing_from_config

# What an export writes (models/directory.py, a transformers save_pretrained, models/adapt.save_adapter); weights
# sharded by transformers match _SHARD.
EXPORT_FILES = frozenset({
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "generation_config.json", PREPROCESSING_FILE, "adapter_config.json",
    "adapter_model.safetensors", "adapter_model.bin", METADINO_ADAPTER_FILE,
})
_SHARD = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")
_BASE_DIR = "base"


def is_export_dir(path: Path) -> bool:
    """Whether `path` holds an earlier export (merged or adapter-only), recognised by its files."""
    return (path / PREPROCESSING_FILE).is_file() and (
        (path / "config.json").is_file() or (path / METADINO_ADAPTER_FILE).is_file())


def _remove_export_files(directory: Path) -> None:
    """Delete the files an export writes in `directory` (and its ``base/``, removed when left empty)."""
    for entry in directory.iterdir():
        if entry.is_file() and (entry.name in EXPORT_FILES or _SHARD.fullmatch(entry.name)):
            entry.unlink()
    base = directory / _BASE_DIR
    if base.is_dir() and not base.is_symlink():
        for entry in base.iterdir():
            if entry.is_file() and (entry.name in EXPORT_FILES or _SHARD.fullmatch(entry.name)):
                entry.unlink()
        if not any(base.iterdir()):
            base.rmdir()


def _check_export_out(out: Path, overwrite: bool) -> bool:
    """Refuse an `out` the export may not write into; True when an earlier export there is to be replaced."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder for the exported model.")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not is_export_dir(out):
        raise UserError(f"'{out}' is not empty and does not hold an earlier metadino export; choose another --out "
                        "(--overwrite replaces only an earlier export).")
    if not overwrite:
        raise UserError(f"'{out}' exists and is not empty; choose another --out or pass --overwrite.")
    return True


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "checkpoints").is_dir()


def _run_backbone(run_dir: str | Path) -> tuple[Backbone, Config]:
    """The exported backbone of the newest checkpoint (EMA teacher; the student when distilling), with its
    LoRA adapters still in place, and the run's config."""
    state = load_latest_checkpoint(run_dir)
    cfg = config_from_dict(state["config"])
    backbone = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size)
    adapt_backbone(cfg, backbone)  # LoRA layers, so that the checkpoint's keys match
    prefix = "student.backbone." if cfg.ssl.distill.teacher is not None else "teacher.backbone."
    weights = {k[len(prefix) :]: v for k, v in state["task"].items() if k.startswith(prefix)}
    load_backbone_state(backbone, weights, source=f"{run_dir} (step {state['step']})")
    return backbone.eval(), cfg


def backbone_from_run(run_dir: str | Path) -> tuple[Backbone, Preprocessing]:
    """The EMA teacher backbone of the newest checkpoint of a run (the student of a distillation run),
    LoRA adapters merged, and its preprocessing."""
    from metadino.models.adapt import merge_lora

    backbone, cfg = _run_backbone(run_dir)
    return merge_lora(backbone), preprocessing_from_config(cfg, backbone)


def _base_spec(spec: str) -> str:
    """A backbone spec that still resolves from another working directory (local paths made absolute)."""
    prefix = "hf:" if spec.startswith("hf:") else ""
    ref = spec.removeprefix(prefix)
    local = Path(ref).expanduser()
    return prefix + str(local.resolve()) if local.is_dir() else spec


def _write_adapter_export(backbone: Backbone, cfg: Config, out: Path) -> Path:
    from metadino.models.adapt import save_adapter, strip_lora

    lo, m = cfg.adapt.lora, cfg.model
    base = "base" if m.backbone.startswith("builtin:") else _base_spec(m.backbone)
    extra = {
        "base": base,
        "in_chans": m.in_chans,
        "patch_size": backbone.patch_size,
        "image_size": cfg.crops.global_size,
        "channel_expansion": m.channel_expansion,
        "backbone_config": backbone.config_dict(),
    }
    save_adapter(backbone, out, rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, train_norm=cfg.adapt.train_norm,
                 extra=extra)
    if base == "base":  # a random base cannot be rebuilt from its spec: keep it
        import copy

        strip_lora(copy.deepcopy(backbone)).save_pretrained(out / "base")
    write_preprocessing(out, preprocessing_from_config(cfg, backbone))
    return out


def export_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False, merge_lora: bool = True) -> Path:
    """Write the teacher backbone of `run_dir` to `out`: a new or empty folder, or with `overwrite` an earlier
    export, whose export files are removed first (module docstring); any other non-empty folder is refused.

    LoRA runs: ``merge_lora=True`` folds the adapters into a plain model (transformers directory for HF
    backbones); ``merge_lora=False`` writes the adapter only (see the module docstring).
    """
    run_dir, out = Path(run_dir), Path(out)
    if not is_run_dir(run_dir):
        raise UserError(f"'{run_dir}' is not a metadino run directory (no config.yaml and checkpoints/).")
    replace_earlier = _check_export_out(out, overwrite)
    backbone, cfg = _run_backbone(run_dir)
    if not merge_lora and cfg.adapt.mode != "lora":
        raise UserError(f"an adapter-only export needs a LoRA run, but '{run_dir}' was trained with "
                        f"adapt.mode: {cfg.adapt.mode}; export it without --adapter-only.")
    if replace_earlier:  # only once the new model is in hand: a failed load leaves the earlier export intact
        _remove_export_files(out)
    if not merge_lora:
        return _write_adapter_export(backbone, cfg, out)
    return write_export(backbone, out, preprocessing_from_config(cfg, backbone))


def _load_adapter_export(directory: Path) -> tuple[Backbone, Preprocessing]:
    from metadino.models.adapt import load_adapter_weights

    try:
        meta = json.loads((directory / METADINO_ADAPTER_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"'{directory / METADINO_ADAPTER_FILE}' cannot be read: {e}.") from None
    base = str(directory / "base") if meta["base"] == "base" else meta["base"]
    backbone = build_backbone(base, in_chans=meta["in_chans"], patch_size=meta["patch_size"],
                              image_size=meta["image_size"], channel_expansion=meta["channel_expansion"])
    load_adapter_weights(backbone, directory, source=str(directory))
    pre = read_preprocessing(directory) or Preprocessing.default_for(backbone)
    return backbone.eval(), pre


def load_model(spec: str) -> tuple[Backbone, Preprocessing]:
    """MODEL -> (backbone in eval mode, preprocessing). MODEL is a run directory, an export directory,
    ``metadino:<name>`` (a shipped foundation), ``hf:<id or dir>``, a bare local HF directory, or a bare hub id (offline cache).

    Any failure is a UserError naming MODEL (loaders raise OSError, ValueError, safetensors errors, ...).
    """
    try:
        return _load_model(spec)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"model '{spec}' cannot be loaded: {type(e).__name__}: {e}; pass a run directory, an export "
                        "directory or hf:<id or dir>.") from None


def _load_model(spec: str) -> tuple[Backbone, Preprocessing]:
    path = Path(spec)
    if path.is_dir():
        if (path / METADINO_ADAPTER_FILE).is_file():
            return _load_adapter_export(path)
        if is_run_dir(path):
            exported = path / "backbone"
            if (exported / PREPROCESSING_FILE).is_file():
                path = exported
            else:
                return backbone_from_run(path)
        pre = read_preprocessing(path)
        if pre is None:
            backbone = build_backbone(str(path))
            return backbone.eval(), Preprocessing.default_for(backbone)
        backbone = build_backbone(str(path), in_chans=pre.in_chans, patch_size=pre.patch_size, image_size=pre.image_size)
        return backbone.eval(), pre if pre.embed_dim is not None else replace(pre, embed_dim=backbone.embed_dim)
    if spec.startswith(FOUNDATION_PREFIX):  # shipped foundation: an export folder inside the package
        return _load_model(str(foundation_dir(spec)))
    prefixed = spec.partition(":")[0] in registered_prefixes() and ":" in spec  # builtin:, hf:, and any registered
    if not prefixed and ("/" not in spec or spec.startswith((".", "/"))):
        raise UserError(f"model '{spec}' is not a directory, an export, or an hf:<id> specification.")
    backbone = build_backbone(spec if prefixed else f"hf:{spec}")
    return backbone.eval(), Preprocessing.default_for(backbone)
