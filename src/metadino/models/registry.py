"""Resolving a backbone spec into a :class:`~metadino.models.backbone.Backbone`: one registered loader per prefix.

``builtin:<preset>`` (random init), ``metadino:<name>`` (a foundation shipped in the package), ``hf:<hub id or
directory>`` and a bare directory are registered here; another backend (timm, open_clip, ...) is one
:func:`register_backbone` call with a function ``(ref, BackboneOptions) -> Backbone``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metadino.errors import UserError
from metadino.foundations import PREFIX as FOUNDATION_PREFIX
from metadino.foundations import foundation_dir
from metadino.models.backbone import Backbone
from metadino.models.channels import EXPANSION_MODES
from metadino.models.directory import is_builtin_export, load_directory
from metadino.models.hf import hf_from_config, load_hf
from metadino.models.vit import VIT_PRESETS, VisionTransformer

__all__ = ["BackboneOptions", "backbone_from_config", "build_backbone", "register_backbone", "registered_prefixes"]


@dataclass(frozen=True)
class BackboneOptions:
    """What a spec's loader may use; see :func:`build_backbone` for each field."""

    in_chans: int | None = None
    patch_size: int = 16
    image_size: int = 224
    drop_path_rate: float = 0.0
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    num_registers: int = 0
    channel_expansion: str = "mean"
    layerscale_init: float | None = 1e-5

    @property
    def load_kwargs(self) -> dict[str, Any]:
        """The options a pretrained checkpoint honours (it keeps its own architecture)."""
        return {"in_chans": self.in_chans, "drop_path_rate": self.drop_path_rate, "channel_expansion": self.channel_expansion}


Loader = Callable[[str, BackboneOptions], Backbone]
_LOADERS: dict[str, Loader] = {}


def register_backbone(prefix: str, loader: Loader) -> None:
    """Make ``<prefix>:<ref>`` specs resolve through ``loader(ref, options)``."""
    if not re.fullmatch(r"[A-Za-z][\w-]*", prefix):
        raise ValueError(f"a backbone prefix is a word such as 'timm', got {prefix!r}")
    if prefix == "builtin" and "builtin" in _LOADERS:
        raise ValueError("'builtin' names the random-init presets and cannot be replaced")
    _LOADERS[prefix] = loader


def registered_prefixes() -> tuple[str, ...]:
    """The spec prefixes that resolve (``builtin``, ``metadino``, ``hf`` and any registered backend)."""
    return tuple(_LOADERS)


def _builtin(name: str, o: BackboneOptions) -> Backbone:
    if name not in VIT_PRESETS:
        raise UserError(f"unknown builtin backbone {name!r} in 'builtin:{name}'; use one of "
                        f"{', '.join('builtin:' + k for k in VIT_PRESETS)}")
    arch = dict(VIT_PRESETS[name])
    for key, val in (("embed_dim", o.embed_dim), ("depth", o.depth), ("num_heads", o.num_heads)):
        if val is not None:
            arch[key] = val
    if arch["embed_dim"] % arch["num_heads"]:
        raise UserError(f"embed_dim={arch['embed_dim']} is not divisible by num_heads={arch['num_heads']}; "
                        "pick values where it is")
    if o.patch_size < 1 or o.image_size < o.patch_size:
        raise UserError(f"image_size={o.image_size} must be >= patch_size={o.patch_size} >= 1")
    return VisionTransformer(in_chans=3 if o.in_chans is None else o.in_chans, patch_size=o.patch_size,
                             image_size=o.image_size, drop_path_rate=o.drop_path_rate, num_registers=o.num_registers,
                             layerscale_init=o.layerscale_init, embed_dim=arch["embed_dim"], depth=arch["depth"],
                             num_heads=arch["num_heads"])


def _foundation(name: str, o: BackboneOptions) -> Backbone:
    return load_directory(foundation_dir(FOUNDATION_PREFIX + name), **o.load_kwargs)


def _hf(ref: str, o: BackboneOptions) -> Backbone:
    ref = ref.strip()
    if not ref:
        raise UserError("empty hf: backbone spec; write hf:<hub id> or hf:/path/to/model_dir")
    local = Path(ref).expanduser()
    if local.is_dir() and (local / "config.json").is_file() and is_builtin_export(local):
        return load_directory(local, **o.load_kwargs)
    return load_hf(ref, **o.load_kwargs)


register_backbone("builtin", _builtin)
register_backbone(FOUNDATION_PREFIX.rstrip(":"), _foundation)
register_backbone("hf", _hf)


def _check_overrides(source: str, model: Backbone, **requested: int | None) -> None:
    for name, want in requested.items():
        have = getattr(model, name) if name != "depth" else model.depth
        if want is not None and want != have:
            raise UserError(f"{source} has {name}={have} but {name}={want} was requested; remove the {name} "
                            "setting (a pretrained backbone keeps its architecture)")


def build_backbone(spec: str, **options: Any) -> Backbone:
    """Build a backbone from a spec.

    Args:
        spec: ``"builtin:vit-tiny"`` / ``"builtin:vit-small"`` / ``"builtin:vit-base"`` / ``"builtin:vit-large"``
            (random init; ``embed_dim``/``depth``/``num_heads`` override the preset), ``"metadino:<name>"`` (a
            pretrained foundation shipped inside the package, e.g. ``metadino:synthcell-vit-tiny``), ``"hf:<hub id or
            local directory>"`` (must be a Dinov2Model, Dinov2WithRegistersModel or DINOv3ViTModel), a registered
            ``<prefix>:<ref>``, or a directory: a metadino builtin export, a Hugging Face model directory, or a run
            directory with ``backbone/``.
        options: the fields of :class:`BackboneOptions`:
            in_chans: input channels; ``None`` = the checkpoint's (3 for presets). More channels than a checkpoint
                has expand its patch embedding (``channel_expansion``); fewer raise UserError.
            patch_size, image_size, num_registers: builtin presets only (a checkpoint keeps its own);
                ``image_size`` sets the learned position-embedding grid, other sizes interpolate.
            drop_path_rate: stochastic depth (builtin: every block; HF: the config's ``drop_path_rate``).
            embed_dim, depth, num_heads: preset overrides; for checkpoints they must match or be None.
            layerscale_init: builtin presets only: LayerScale init (1e-5 as DINOv2; None: no LayerScale, as DINOv1).
    """
    o = BackboneOptions(**options)
    if o.channel_expansion not in EXPANSION_MODES:
        raise UserError(f"unknown channel_expansion {o.channel_expansion!r}; use one of {', '.join(EXPANSION_MODES)}")
    if o.in_chans is not None and o.in_chans < 1:
        raise UserError(f"in_chans must be >= 1, got {o.in_chans}")
    prefix, sep, ref = spec.partition(":")
    if sep and prefix == "builtin":
        return _builtin(ref, o)
    if sep and prefix in _LOADERS:
        model = _LOADERS[prefix](ref, o)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            model = load_directory(path, **o.load_kwargs)
        elif re.match(r"^[A-Za-z][\w-]*:", spec) and not os.path.isabs(spec):
            raise UserError(f"unknown backbone spec prefix in {spec!r}; use builtin:vit-small, hf:<id or dir>, "
                            f"{FOUNDATION_PREFIX}<name> or a directory path")
        else:
            raise UserError(f"backbone {spec!r} is not an existing directory; use builtin:vit-small, "
                            "hf:<hub id or dir>, or the path of an exported model or run directory")
    _check_overrides(spec, model, embed_dim=o.embed_dim, depth=o.depth, num_heads=o.num_heads)
    return model


def backbone_from_config(config: Mapping[str, Any], *, drop_path_rate: float = 0.0) -> Backbone:
    """Rebuild a backbone (random weights) from ``Backbone.config_dict()``; load weights afterwards."""
    kind = config.get("kind")
    if kind == "builtin":
        args = {k: config[k] for k in VisionTransformer.CONFIG_KEYS if k in config and k != "drop_path_rate"}
        return VisionTransformer(drop_path_rate=drop_path_rate, **args)
    if kind == "hf":
        return hf_from_config(config, drop_path_rate=drop_path_rate)
    raise UserError(f"unknown backbone kind {kind!r} in a saved backbone config; expected 'builtin' or 'hf'")
