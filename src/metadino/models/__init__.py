"""metadino.models: the backbone contract, its registry of loaders, the built-in ViT, the Hugging Face wrapper,
the model-directory format, DINO/iBOT heads, channel expansion and adaptation (LoRA, freezing)."""

from metadino.models.backbone import Backbone, Tokens, load_backbone_state
from metadino.models.channels import EXPANSION_MODES, expand_patch_embed_weight
from metadino.models.heads import DINOHead
from metadino.models.hf import SUPPORTED_HF_CLASSES, HFBackbone
from metadino.models.registry import backbone_from_config, build_backbone, register_backbone
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
    "register_backbone",
]
