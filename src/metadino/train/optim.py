"""AdamW parameter groups: layer-wise LR decay, no weight decay on norms/biases, frozen last layer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from metadino.models.backbone import Backbone


@dataclass(frozen=True)
class GroupKey:
    lr_mult: float
    wd_mult: float
    is_last_layer: bool
    is_backbone: bool
    stage_frozen: bool = False  # LR scaled by the two-stage backbone scale (0 in stage 1)
    always_frozen: bool = False  # LR 0 for the whole run (outside the last N unfrozen blocks)


def _wd_mult(name: str, param: torch.Tensor) -> float:
    # Biases, norms and layer-scale vectors are not decayed (DINOv2 convention); tokens and
    # position embeddings are (as in FINO's released code).
    return 0.0 if param.ndim <= 1 or name.endswith("bias") or "norm" in name else 1.0


def build_param_groups(
    backbone: Backbone,
    heads: Iterable[tuple[str, nn.Module]],
    *,
    layer_decay: float,
    patch_embed_lr_mult: float,
    train_patch_embed: bool = True,
    freeze_tokens: bool = True,
    unfreeze_last_n_blocks: int = 0,
) -> list[dict[str, Any]]:
    """One AdamW group per distinct (lr_mult, wd_mult, is_last_layer, is_backbone).

    Backbone block i (of L) gets ``layer_decay ** (L + 1 - layer_id)``; the patch embedding and the
    learned tokens are layer 0, and additionally ``patch_embed_lr_mult`` for the patch embedding.
    Heads train at multiplier 1. Parameters with ``requires_grad=False`` get no group (and no state): this
    is how ``adapt.mode`` freezing and LoRA's frozen base weights stay out of the optimizer. LoRA adapters
    of block i (``...lora_A/lora_B...``) get block i's layer id and are weight-decayed like any weight
    matrix, which pulls the adapted model towards its pretrained base.

    Stage flags (FINO's two-stage finetune): every backbone parameter is ``stage_frozen`` except the patch embedding
    when ``train_patch_embed`` and the learned tokens when not ``freeze_tokens``; with
    ``unfreeze_last_n_blocks = n > 0`` everything outside the last n blocks is ``always_frozen``.
    "Frozen" means LR 0, not ``requires_grad=False``: gradients and Adam moments stay warm.
    """
    n_layers = len(backbone.blocks)
    groups: dict[GroupKey, list[torch.nn.Parameter]] = {}
    names: dict[GroupKey, list[str]] = {}

    def add(name: str, param: torch.nn.Parameter, key: GroupKey) -> None:
        groups.setdefault(key, []).append(param)
        names.setdefault(key, []).append(name)

    for name, param in backbone.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult = layer_decay ** (n_layers + 1 - backbone.layer_id(name))
        if backbone.is_patch_embed(name):
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if backbone.is_no_weight_decay(name) or param.ndim <= 1 else 1.0
        layer = backbone.layer_id(name)
        gated_off = (train_patch_embed and backbone.is_patch_embed(name)) or (
            not freeze_tokens and backbone.is_token(name)
        )
        always = unfreeze_last_n_blocks > 0 and not (n_layers - unfreeze_last_n_blocks < layer <= n_layers)
        add(f"backbone.{name}", param, GroupKey(lr_mult, wd_mult, False, True, not gated_off, always))
    for prefix, module in heads:
        for name, param in module.named_parameters():
            if param.requires_grad:
                add(f"{prefix}.{name}", param, GroupKey(1.0, _wd_mult(name, param), "last_layer" in name, False))
    return [
        {
            "params": params,
            "lr_mult": key.lr_mult,
            "wd_mult": key.wd_mult,
            "is_last_layer": key.is_last_layer,
            "is_backbone": key.is_backbone,
            "stage_frozen": key.stage_frozen,
            "always_frozen": key.always_frozen,
            "param_names": names[key],
        }
        for key, params in groups.items()
    ]


def apply_optim_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    lr: float,
    weight_decay: float,
    last_layer_lr: float,
    backbone_scale: float = 1.0,
) -> None:
    """Set every group's lr/weight decay from the scheduled values, the group's multipliers and stage."""
    for group in optimizer.param_groups:
        scale = 0.0 if group.get("always_frozen") else backbone_scale if group.get("stage_frozen") else 1.0
        base = last_layer_lr if group["is_last_layer"] else lr
        group["lr"] = base * group["lr_mult"] * scale
        group["weight_decay"] = weight_decay * group["wd_mult"] * scale
