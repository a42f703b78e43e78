from __future__ import annotations

import pytest
import torch

from metadino.models.heads import DINOHead
from metadino.models.registry import build_backbone
from metadino.train.optim import apply_optim_schedule, build_param_groups


def _groups():
    backbone = build_backbone("builtin:vit-tiny", in_chans=3, patch_size=8, image_size=32, embed_dim=16, depth=3, num_heads=2)
    head = DINOHead(16, 32, hidden_dim=16, bottleneck_dim=8)
    return backbone, head, build_param_groups(backbone, [("dino_head", head)], layer_decay=0.5, patch_embed_lr_mult=0.2)


def test_layer_decay_and_weight_decay_rules():
    backbone, head, groups = _groups()
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert len(by_name) == sum(1 for _ in backbone.parameters()) + sum(1 for _ in head.parameters())
    # L = 3 blocks: block i -> 0.5 ** (3 + 1 - (i + 1)); patch embed layer 0 x 0.2; final norm 1
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_mult"] == pytest.approx(0.5**3)
    assert by_name["backbone.blocks.2.mlp.fc1.weight"]["lr_mult"] == pytest.approx(0.5**1)
    assert by_name["backbone.patch_embed.proj.weight"]["lr_mult"] == pytest.approx(0.5**4 * 0.2)
    assert by_name["backbone.cls_token"]["lr_mult"] == pytest.approx(0.5**4)
    assert by_name["backbone.norm.weight"]["lr_mult"] == 1.0
    assert by_name["dino_head.last_layer.weight"]["is_last_layer"] and by_name["dino_head.last_layer.weight"]["lr_mult"] == 1.0
    # no decay on biases / norms / layer scale; decay on weights and tokens
    assert by_name["backbone.blocks.0.attn.qkv.bias"]["wd_mult"] == 0.0
    assert by_name["backbone.blocks.0.norm1.weight"]["wd_mult"] == 0.0
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["wd_mult"] == 1.0
    assert by_name["backbone.cls_token"]["wd_mult"] == 1.0


def test_frozen_parameters_get_no_group_and_schedule_applies():
    backbone, head, _ = _groups()
    backbone.patch_embed.requires_grad_(False)
    groups = build_param_groups(backbone, [("dino_head", head)], layer_decay=0.5, patch_embed_lr_mult=0.2)
    assert not any(n.startswith("backbone.patch_embed") for g in groups for n in g["param_names"])
    opt = torch.optim.AdamW(groups, lr=0.0)
    apply_optim_schedule(opt, lr=1e-3, weight_decay=0.1, last_layer_lr=0.0)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.0 if g["is_last_layer"] else 1e-3 * g["lr_mult"])
        assert g["weight_decay"] == pytest.approx(0.1 * g["wd_mult"])


def test_stage_flags():
    backbone, head, _ = _groups()
    groups = build_param_groups(backbone, [("dino_head", head)], layer_decay=1.0, patch_embed_lr_mult=1.0,
                                train_patch_embed=True, freeze_tokens=True, unfreeze_last_n_blocks=1)
    by_name = {n: g for g in groups for n in g["param_names"]}
    assert not by_name["backbone.patch_embed.proj.weight"]["stage_frozen"]
    assert by_name["backbone.cls_token"]["stage_frozen"] and by_name["backbone.blocks.2.attn.qkv.weight"]["stage_frozen"]
    assert by_name["backbone.blocks.1.attn.qkv.weight"]["always_frozen"] and by_name["backbone.norm.weight"]["always_frozen"]
    assert not by_name["backbone.blocks.2.attn.qkv.weight"]["always_frozen"]
    assert not by_name["dino_head.mlp.0.weight"]["stage_frozen"]
    opt = torch.optim.AdamW(groups, lr=0.0)
    apply_optim_schedule(opt, lr=1.0, weight_decay=0.5, last_layer_lr=1.0, backbone_scale=0.25)
    for g in opt.param_groups:
        want = 0.0 if g["always_frozen"] else 0.25 if g["stage_frozen"] else 1.0
        assert g["lr"] == pytest.approx(want) and g["weight_decay"] == pytest.approx(0.5 * g["wd_mult"] * want)
