"""metadino.models: backbone contract and loaders, the built-in ViT, DINO/iBOT heads, channel expansion."""

from metadino.models.backbone import (
    SUPPORTED_HF_CLASSES,
    Backbone,
    HFBackbone,
    Tokens,
    backbone_from_config,
    build_backbone,
    load_backbone_state,
)
from metadino.models.channels import EXPANSION_MODES, expand_patch_embed_weight
from metadino.models.heads import DINOHead
from metadino.models.vit import VIT_PRESETS, VisionTransformer

__all__ = [
    "EXPANSION_MODES",
    "SUPPORTED_HF_CLASSES",
    "VIT_PRESETS",
    "Backbone",
    "DINOHead",
    "HFBackbone",
    "Tokens",
    "VisionTransformer",
    "backbone_from_config",
    "build_backbone",
    "expand_patch_embed_weight",
    "load_backbone_state",
]
