"""Backbone contract, Hugging Face wrapper, factory, strict loading and saving.

Every backbone (the built-in ViT, transformers' ``Dinov2Model``, ``Dinov2WithRegistersModel`` and
``DINOv3ViTModel``) is wrapped to one interface: ``forward(images, masks=None) -> Tokens``. The rest of
the code never looks at transformers internals; the few version-dependent details (module names,
key names) are handled here.

transformers notes (5.17 on the GPU image, 5.23 on CPU; see reference/deps.md check 1):
- ``last_hidden_state`` is already through the final LayerNorm; layout [CLS, registers, patches].
- Dinov2 blends the mask token (``x*(1-m) + tok*m``), DINOv3 uses ``torch.where``; both via ``bool_masked_pos``.
- ``DINOv3ViTModel`` in ``train()`` mode randomly rescales its RoPE coordinates (``pos_embed_rescale``,
  2.0 by default), as DINOv3 was trained. That is left as is: the student gets the augmentation, the
  teacher runs in ``eval()``. Tests that need determinism call ``eval()``.
- Attention projections are named ``attention.attention.query`` in 5.17 and ``attention.q_proj`` in 5.23,
  so nothing here keys on them: layer ids come from the block index in the parameter name.
"""

from __future__ import annotations

import abc
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metadino.errors import UserError
from metadino.foundations import PREFIX as FOUNDATION_PREFIX
from metadino.foundations import foundation_dir
from metadino.models.channels import EXPANSION_MODES, expand_patch_embed_weight

__all__ = [
    "Backbone",
    "HFBackbone",
    "SUPPORTED_HF_CLASSES",
    "Tokens",
    "backbone_from_config",
    "build_backbone",
    "load_backbone_state",
]

SUPPORTED_HF_CLASSES: tuple[str, ...] = ("Dinov2Model", "Dinov2WithRegistersModel", "DINOv3ViTModel")

# Block index in a parameter name: builtin "blocks.3.", Dinov2 "encoder.layer.3.", DINOv3 "model.layer.3."
# (older transformers: "layer.3."), also under prefixes such as peft's "base_model.model.".
_BLOCK_RE = re.compile(r"(?:^|\.)(?:blocks|layers?)\.(\d+)(?:\.|$)")
# Everything before the first block: patch embedding and learned tokens / position embeddings.
_EMBED_MARKERS = ("patch_embed", "embeddings.", "cls_token", "mask_token", "register_tokens", "pos_embed",
                  "position_embeddings")
# HF config keys that define the architecture (compared on resume; used to rebuild). Absent keys are skipped.
_HF_ARCH_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "mlp_ratio",
    "hidden_act", "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias", "query_bias",
    "key_bias", "value_bias", "proj_bias", "mlp_bias", "use_swiglu_ffn", "use_gated_mlp", "use_mask_token",
    "num_register_tokens", "rope_theta",
)


@dataclass
class Tokens:
    """Output tokens of a backbone, all after the final norm."""

    cls: Tensor  # [B, D]
    patches: Tensor  # [B, N, D], row-major over the patch grid
    registers: Tensor | None  # [B, R, D], or None when the backbone has no registers


class Backbone(nn.Module, abc.ABC):
    """Base class of all backbones (see module docstring).

    Attributes:
        embed_dim, patch_size, in_chans, num_registers, num_heads, kind ("builtin" | "hf"); ``depth`` = len(blocks).
    """

    embed_dim: int
    patch_size: int
    in_chans: int
    num_registers: int
    num_heads: int
    kind: str

    @abc.abstractmethod
    def forward(self, images: Tensor, masks: Tensor | None = None) -> Tokens:
        """Encode images.

        Args:
            images: [B, C, H, W], H and W multiples of ``patch_size`` (any size).
            masks: bool [B, N] with N = H*W/p^2; True patches are replaced by the mask token (iBOT).
                ``None`` means no patch is masked (the mask token still joins the graph, for DDP).
        """
        ...

    @property
    @abc.abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The ordered transformer blocks (for freezing and layer-wise LR decay)."""
        ...

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def layer_id(self, param_name: str) -> int:
        """Layer index for layer-wise LR decay.

        0 = patch embedding and cls/pos/mask/register tokens, i+1 = block i, ``depth + 1`` = everything
        after the blocks (final norm). Works on names relative to this module or under a prefix.
        """
        m = _BLOCK_RE.search(param_name)
        if m is not None:
            return int(m.group(1)) + 1
        if any(k in param_name for k in _EMBED_MARKERS):
            return 0
        return self.depth + 1

    def is_patch_embed(self, param_name: str) -> bool:
        """Whether a parameter belongs to the patch embedding (it gets its own LR multiplier)."""
        return "patch_embed" in param_name

    def is_no_weight_decay(self, param_name: str) -> bool:
        """Biases, norms and layer scales get no weight decay (learned tokens do, as in the reference)."""
        return (
            param_name.endswith("bias")
            or "norm" in param_name
            or "gamma" in param_name
            or "lambda1" in param_name
        )

    @abc.abstractmethod
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (training only) to save memory."""
        ...

    @abc.abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the backbone so that ``build_backbone(directory)`` rebuilds it."""
        ...

    @abc.abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """JSON-able architecture description; ``backbone_from_config`` rebuilds it (random weights)."""
        ...

    @abc.abstractmethod
    def intermediate_layers(self, images: Tensor, n: int = 4) -> list[Tokens]:
        """Tokens of the last ``n`` blocks, each through the final norm (attention-pooling probe, spec §11).

        Args:
            images: [B, C, H, W] as in ``forward``.
        """
        ...

    def num_patches(self, height: int, width: int) -> int:
        return (height // self.patch_size) * (width // self.patch_size)

    def _check_inputs(self, images: Tensor, masks: Tensor | None) -> Tensor:
        """Validate images and return a bool [B, N] mask (all False when ``masks`` is None)."""
        if images.ndim != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
        b, c, h, w = images.shape
        if c != self.in_chans:
            raise UserError(
                f"the images have {c} channels but the backbone expects {self.in_chans}; set the backbone's "
                f"in_chans to {c} (a 3-channel checkpoint is expanded) or fix the channel list of the data"
            )
        p = self.patch_size
        if h % p or w % p:
            raise UserError(
                f"image size {h}x{w} is not a multiple of the patch size {p}; use crop sizes divisible by {p}"
            )
        n = (h // p) * (w // p)
        if masks is None:
            return torch.zeros(b, n, dtype=torch.bool, device=images.device)
        if masks.shape != (b, n):
            raise ValueError(f"masks must be [B, N] = [{b}, {n}] for {h}x{w} images, got {tuple(masks.shape)}")
        return masks.to(device=images.device, dtype=torch.bool)


# --------------------------------------------------------------------------------------------------------
# Hugging Face wrapper


def _find_blocks(model: nn.Module, depth: int) -> nn.ModuleList:
    for path in ("encoder.layer", "model.layer", "layer", "encoder.layers", "layers"):
        mod: Any = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList) and len(mod) == depth:
            return mod
    for mod in model.modules():  # unknown layout: the first list of `depth` modules
        if isinstance(mod, nn.ModuleList) and len(mod) == depth:
            return mod
    raise TypeError(f"cannot find the transformer blocks of {type(model).__name__}")


def _square_patch(patch_size: Any) -> int:
    if isinstance(patch_size, (list, tuple)):
        if len(set(patch_size)) != 1:
            raise UserError(f"non-square patch size {tuple(patch_size)} is not supported; use a square patch")
        return int(patch_size[0])
    return int(patch_size)


class HFBackbone(Backbone):
    """Wraps a transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``DINOv3ViTModel``.

    The wrapped model is ``self.model``; the wrapper starts in training mode like any new module.
    """

    kind = "hf"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        name = type(model).__name__
        if name not in SUPPORTED_HF_CLASSES:
            raise UserError(f"unsupported Hugging Face model class {name}; use one of "
                            f"{', '.join(SUPPORTED_HF_CLASSES)}")
        self.model = model
        cfg = model.config
        self.hf_class = name
        self.embed_dim = int(cfg.hidden_size)
        self.patch_size = _square_patch(cfg.patch_size)
        self.in_chans = int(cfg.num_channels)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_registers = int(getattr(cfg, "num_register_tokens", 0) or 0) if name != "Dinov2Model" else 0
        self.has_mask_token = getattr(model.embeddings, "mask_token", None) is not None
        self._depth = int(cfg.num_hidden_layers)
        _ = (self.blocks, self._final_norm())  # fail early on an unknown layout
        self.train()  # from_pretrained returns eval(); keep the wrapper and the model consistent

    # Looked up on each call (cheap) rather than cached, so it stays right if self.model gets wrapped (e.g. peft).
    @property
    def blocks(self) -> nn.ModuleList:
        return _find_blocks(self.model, self._depth)

    def _final_norm(self) -> nn.Module:
        for name in ("layernorm", "norm"):
            norm = getattr(self.model, name, None)
            if isinstance(norm, nn.LayerNorm):
                return norm
        raise TypeError(f"cannot find the final norm of {self.hf_class}")

    def _masked_pos(self, masks: Tensor) -> Tensor | None:
        if self.has_mask_token:
            return masks  # always passed (all False when unmasked) so the mask token has a grad under DDP
        if masks.any():
            raise UserError(f"this {self.hf_class} has no mask token (use_mask_token=false), so iBOT masking "
                            "cannot be used; disable iBOT or use a checkpoint with a mask token")
        return None

    def _split(self, hidden: Tensor) -> Tokens:
        r = self.num_registers
        return Tokens(cls=hidden[:, 0], patches=hidden[:, 1 + r:], registers=hidden[:, 1:1 + r] if r else None)

    def forward(self, images: Tensor, masks: Tensor | None = None) -> Tokens:
        masks = self._check_inputs(images, masks)
        out = self.model(pixel_values=images, bool_masked_pos=self._masked_pos(masks))
        return self._split(out.last_hidden_state)

    def intermediate_layers(self, images: Tensor, n: int = 4) -> list[Tokens]:
        masks = self._check_inputs(images, None)
        out = self.model(pixel_values=images, bool_masked_pos=self._masked_pos(masks), output_hidden_states=True)
        # The last `depth` entries are the block outputs (pre-norm) whether or not the embeddings are included.
        hidden = list(out.hidden_states)[-self.depth:]
        if not 1 <= n <= len(hidden):
            raise ValueError(f"n must be in [1, {len(hidden)}], got {n}")
        norm = self._final_norm()
        return [self._split(norm(h)) for h in hidden[-n:]]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers >= 5.23 renamed gradient_checkpointing_* to activation_checkpointing_* (old names warn)
        if enable:
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif hasattr(self.model, "activation_checkpointing_disable"):
            self.model.activation_checkpointing_disable()
        else:
            self.model.gradient_checkpointing_disable()

    def save_pretrained(self, directory: str | Path) -> None:
        # transformers' own format: AutoModel.from_pretrained(directory) loads it (legacy key names on disk).
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))

    def config_dict(self) -> dict[str, Any]:
        cfg = self.model.config.to_dict()
        hf = {k: cfg[k] for k in _HF_ARCH_KEYS if k in cfg}
        if isinstance(hf.get("patch_size"), tuple):
            hf["patch_size"] = list(hf["patch_size"])
        return {
            "kind": "hf",
            "class": self.hf_class,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_registers": self.num_registers,
            "hf_config": hf,
        }


def _expand_hf_channels(model: nn.Module, in_chans: int, mode: str, source: str) -> None:
    """Replace the patch-embedding conv of an HF model by an expanded one and update its config."""
    convs = [(n, m) for n, m in model.embeddings.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1:
        raise TypeError(f"expected one patch-embedding conv in {type(model).__name__}, found {len(convs)}")
    name, old = convs[0]
    cur = old.in_channels
    if 1 < in_chans < cur:
        raise UserError(f"{source} has {cur} input channels and cannot be shrunk to in_chans={in_chans}; "
                        f"use in_chans >= {cur} or 1 (or select {cur} channels in the data)")
    new = nn.Conv2d(in_chans, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    bias=old.bias is not None).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(expand_patch_embed_weight(old.weight, in_chans, mode=mode))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent = model.embeddings.get_submodule(name.rpartition(".")[0]) if "." in name else model.embeddings
    setattr(parent, name.rpartition(".")[2], new)
    for m in model.embeddings.modules():  # Dinov2PatchEmbeddings checks its own num_channels
        if hasattr(m, "num_channels"):
            m.num_channels = in_chans
    model.config.num_channels = in_chans


def _hf_class_name(config: Any) -> str:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    found = MODEL_MAPPING_NAMES.get(getattr(config, "model_type", ""), None)
    return found if isinstance(found, str) else type(config).__name__


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or "\\" in ref or ref.count("/") > 1 or Path(ref).exists()


def _load_hf(ref: str, *, in_chans: int | None, drop_path_rate: float, channel_expansion: str) -> HFBackbone:
    from transformers import AutoConfig, AutoModel

    local = Path(ref).expanduser()
    if _looks_like_path(ref) and not local.is_dir():
        raise UserError(f"Hugging Face model directory {ref!r} does not exist or is not a directory; pass the "
                        "directory written by save_pretrained "
                        "(hf:/path/to/model) or a hub id such as hf:facebook/dinov2-small")
    target = str(local) if local.is_dir() else ref
    try:
        config = AutoConfig.from_pretrained(target)
    except (OSError, ValueError) as e:
        if local.is_dir():
            raise UserError(f"{ref!r} is not a readable Hugging Face model directory (config.json: {e}); "
                            "point to a directory written by save_pretrained") from None
        raise UserError(
            f"cannot load {ref!r}: it is not a local directory, and the Hugging Face Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1) or has no such model; download it where there is network "
            f"(e.g. `hf download {ref} --local-dir DIR`) and pass hf:DIR"
        ) from None
    cls_name = _hf_class_name(config)
    if cls_name not in SUPPORTED_HF_CLASSES:
        raise UserError(f"{ref!r} is a {cls_name}, which metadino cannot adapt; use a checkpoint of "
                        f"{', '.join(SUPPORTED_HF_CLASSES)} or a builtin: backbone")
    if drop_path_rate and hasattr(config, "drop_path_rate"):
        config.drop_path_rate = float(drop_path_rate)
    cur = int(config.num_channels)
    if in_chans is not None and 1 < in_chans < cur:
        raise UserError(f"{ref!r} has {cur} input channels and cannot be shrunk to in_chans={in_chans}; "
                        f"use in_chans >= {cur} or 1 (or select {cur} channels in the data)")
    kwargs: dict[str, Any] = {"config": config, "dtype": torch.float32, "output_loading_info": True}
    try:  # all three supported classes implement SDPA in transformers >= 5.17
        model, info = AutoModel.from_pretrained(target, attn_implementation="sdpa", **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # no/corrupt weights; 5.23 raises RuntimeError on shapes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the weights of {ref!r} ({first}); the directory needs model.safetensors "
                        "(or pytorch_model.bin) matching its config.json, as written by save_pretrained") from None
    # Never a silently random backbone: missing weights are an error (a missing mask token is zero-initialised
    # anyway, which is its standard init).
    missing = [k for k in info.get("missing_keys", []) if "mask_token" not in k]
    mismatched = [str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])]
    if missing or mismatched:
        names = ", ".join((missing + mismatched)[:5])
        raise UserError(f"the weights in {ref!r} do not match its config ({len(missing)} missing, "
                        f"{len(mismatched)} of the wrong shape, e.g. {names}); re-export the model with "
                        "save_pretrained")
    if type(model).__name__ not in SUPPORTED_HF_CLASSES:
        raise UserError(f"{ref!r} loads as {type(model).__name__}, which metadino cannot adapt; use a checkpoint of "
                        f"{', '.join(SUPPORTED_HF_CLASSES)}")
    if in_chans is not None and in_chans != cur:
        _expand_hf_channels(model, in_chans, channel_expansion, repr(ref))
    return HFBackbone(model)


# --------------------------------------------------------------------------------------------------------
# Built-in exports


def _load_builtin_export(directory: Path, cfg: dict[str, Any], *, in_chans: int | None, drop_path_rate: float,
                         channel_expansion: str) -> Backbone:
    from safetensors.torch import load_file

    from metadino.models.vit import VisionTransformer

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


def _load_directory(directory: Path, **kw: Any) -> Backbone:
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
        return _load_hf(str(directory), **kw)
    raise UserError(f"{cfg_path} is neither a Hugging Face config (no model_type) nor a metadino backbone export "
                    "(no metadino_backbone key); point to a directory written by save_pretrained")


# --------------------------------------------------------------------------------------------------------
# Factory


def _check_overrides(source: str, model: Backbone, **requested: int | None) -> None:
    for name, want in requested.items():
        have = getattr(model, name) if name != "depth" else model.depth
        if want is not None and want != have:
            raise UserError(f"{source} has {name}={have} but {name}={want} was requested; remove the {name} "
                            "setting (a pretrained backbone keeps its architecture)")


def build_backbone(
    spec: str,
    *,
    in_chans: int | None = None,
    patch_size: int = 16,
    image_size: int = 224,
    drop_path_rate: float = 0.0,
    embed_dim: int | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    num_registers: int = 0,
    channel_expansion: str = "mean",
    layerscale_init: float | None = 1e-5,
) -> Backbone:
    """Build a backbone from a spec.

    Args:
        spec: ``"builtin:vit-tiny"`` / ``"builtin:vit-small"`` / ``"builtin:vit-base"`` / ``"builtin:vit-large"``
            (random init; ``embed_dim``/``depth``/``num_heads`` override the preset), ``"metadino:<name>"`` (a
            pretrained foundation shipped inside the package, e.g. ``metadino:synthcell-vit-tiny``), ``"hf:<hub id or local
            directory>"`` (must be a Dinov2Model, Dinov2WithRegistersModel or DINOv3ViTModel), or a directory:
            a metadino builtin export, a Hugging Face model directory, or a run directory with ``backbone/``.
        in_chans: input channels; ``None`` = the checkpoint's (3 for presets). More channels than a checkpoint
            has expand its patch embedding (``channel_expansion``); fewer raise UserError.
        patch_size, image_size, num_registers: builtin presets only (a checkpoint keeps its own);
            ``image_size`` sets the learned position-embedding grid, other sizes interpolate.
        drop_path_rate: stochastic depth (builtin: every block; HF: the config's ``drop_path_rate``).
        embed_dim, depth, num_heads: preset overrides; for checkpoints they must match or be None.
        layerscale_init: builtin presets only: LayerScale init (1e-5 as DINOv2; None: no LayerScale, as DINOv1).
    """
    from metadino.models.vit import VIT_PRESETS, VisionTransformer

    if channel_expansion not in EXPANSION_MODES:
        raise UserError(f"unknown channel_expansion {channel_expansion!r}; use one of {', '.join(EXPANSION_MODES)}")
    if in_chans is not None and in_chans < 1:
        raise UserError(f"in_chans must be >= 1, got {in_chans}")
    load_kw: dict[str, Any] = {"in_chans": in_chans, "drop_path_rate": drop_path_rate,
                               "channel_expansion": channel_expansion}
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in VIT_PRESETS:
            raise UserError(f"unknown builtin backbone {name!r} in {spec!r}; use one of "
                            f"{', '.join('builtin:' + k for k in VIT_PRESETS)}")
        arch = dict(VIT_PRESETS[name])
        for key, val in (("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
            if val is not None:
                arch[key] = val
        if arch["embed_dim"] % arch["num_heads"]:
            raise UserError(f"embed_dim={arch['embed_dim']} is not divisible by num_heads={arch['num_heads']}; "
                            "pick values where it is")
        if patch_size < 1 or image_size < patch_size:
            raise UserError(f"image_size={image_size} must be >= patch_size={patch_size} >= 1")
        return VisionTransformer(in_chans=3 if in_chans is None else in_chans, patch_size=patch_size,
                                 image_size=image_size, drop_path_rate=drop_path_rate,
                                 num_registers=num_registers, layerscale_init=layerscale_init, **arch)
    if spec.startswith(FOUNDATION_PREFIX):
        model = _load_directory(foundation_dir(spec), **load_kw)
    elif spec.startswith("hf:"):
        ref = spec.removeprefix("hf:").strip()
        if not ref:
            raise UserError("empty hf: backbone spec; write hf:<hub id> or hf:/path/to/model_dir")
        local = Path(ref).expanduser()
        if local.is_dir() and (local / "config.json").is_file() and _is_builtin_export(local):
            model: Backbone = _load_directory(local, **load_kw)
        else:
            model = _load_hf(ref, **load_kw)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            model = _load_directory(path, **load_kw)
        elif re.match(r"^[A-Za-z][\w-]*:", spec) and not os.path.isabs(spec):
            raise UserError(f"unknown backbone spec prefix in {spec!r}; use builtin:vit-small, hf:<id or dir>, "
                            f"{FOUNDATION_PREFIX}<name> or a directory path")
        else:
            raise UserError(f"backbone {spec!r} is not an existing directory; use builtin:vit-small, "
                            "hf:<hub id or dir>, or the path of an exported model or run directory")
    _check_overrides(spec, model, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    return model


def _is_builtin_export(directory: Path) -> bool:
    try:
        return json.loads((directory / "config.json").read_text()).get("metadino_backbone") == "builtin"
    except (OSError, ValueError, AttributeError):
        return False


def backbone_from_config(config: Mapping[str, Any], *, drop_path_rate: float = 0.0) -> Backbone:
    """Rebuild a backbone (random weights) from ``Backbone.config_dict()``; load weights afterwards."""
    kind = config.get("kind")
    if kind == "builtin":
        from metadino.models.vit import VisionTransformer

        args = {k: config[k] for k in VisionTransformer.CONFIG_KEYS if k in config and k != "drop_path_rate"}
        return VisionTransformer(drop_path_rate=drop_path_rate, **args)
    if kind == "hf":
        from transformers import AutoConfig, AutoModel

        hf = dict(config["hf_config"])
        model_type = hf.pop("model_type")
        if drop_path_rate:
            hf["drop_path_rate"] = drop_path_rate
        cfg = AutoConfig.for_model(model_type, **hf)
        return HFBackbone(AutoModel.from_config(cfg, attn_implementation="sdpa"))
    raise UserError(f"unknown backbone kind {kind!r} in a saved backbone config; expected 'builtin' or 'hf'")


# --------------------------------------------------------------------------------------------------------
# Strict loading


def load_backbone_state(backbone: Backbone, state_dict: Mapping[str, Tensor], *, source: str) -> None:
    """Load weights strictly: any missing/unexpected key or shape mismatch raises UserError naming keys and source."""
    own = backbone.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    wrong = sorted(
        f"{k} ({tuple(state_dict[k].shape)} vs {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if names:
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                parts.append(f"{len(names)} {label} ({', '.join(names[:3])}{more})")
        hint = (" (HF key names differ between transformers versions; move weights with save_pretrained)"
                if backbone.kind == "hf" else "")
        raise UserError(f"the backbone weights in {source} do not match the model: {'; '.join(parts)}; "
                        f"use weights saved from the same backbone architecture{hint}")
    backbone.load_state_dict(dict(state_dict), strict=True)
