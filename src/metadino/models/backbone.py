"""The backbone contract: every backbone — the built-in ViT (``models/vit.py``) or a transformers model
(``models/hf.py``) — is wrapped to ``forward(images, masks=None) -> Tokens``, plus what training needs (blocks,
layer ids, the module owning the weights, the final norm) so nothing outside ``models/`` looks inside one.
Resolving a spec (``builtin:``, ``hf:``, ``metadino:``, a directory) into a backbone is ``models/registry.py``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metadino.errors import UserError

__all__ = ["Backbone", "Tokens", "load_backbone_state"]

# Block index in a parameter name: builtin "blocks.3.", Dinov2 "encoder.layer.3.", DINOv3 "model.layer.3."
# (older transformers: "layer.3."), also under prefixes such as peft's "base_model.model.".
_BLOCK_RE = re.compile(r"(?:^|\.)(?:blocks|layers?)\.(\d+)(?:\.|$)")
# Everything before the first block: patch embedding and learned tokens / position embeddings.
_EMBED_MARKERS = ("patch_embed", "embeddings.", "cls_token", "mask_token", "register_tokens", "pos_embed",
                  "position_embeddings")
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

    def is_token(self, param_name: str) -> bool:
        """Whether a parameter is a learned token (CLS, mask, registers): ``stages.freeze_tokens`` acts on these."""
        return any(t in param_name for t in ("cls_token", "mask_token", "register_tokens"))

    def is_no_weight_decay(self, param_name: str) -> bool:
        """Biases, norms and layer scales get no weight decay (learned tokens do, as in the reference)."""
        return (
            param_name.endswith("bias")
            or "norm" in param_name
            or "gamma" in param_name
            or "lambda1" in param_name
        )

    @property
    def weights_module(self) -> nn.Module:
        """The module that owns the weights (LoRA is injected into it): the backbone itself, or the wrapped model."""
        return self

    @property
    def final_norm_name(self) -> str:
        """Attribute name, in :attr:`weights_module`, of the final LayerNorm (``norm`` or ``layernorm``)."""
        root = self.weights_module
        for name in ("norm", "layernorm"):
            if isinstance(getattr(root, name, None), nn.LayerNorm):
                return name
        raise TypeError(f"cannot find the final norm of {type(root).__name__}")

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
        """JSON-able architecture description; ``registry.backbone_from_config`` rebuilds it (random weights)."""
        ...

    @abc.abstractmethod
    def intermediate_layers(self, images: Tensor, n: int = 4) -> list[Tokens]:
        """Tokens of the last ``n`` blocks, each through the final norm (the attention-pooling probe of DINOv3/FINO evaluation).

        Args:
            images: [B, C, H, W] as in ``forward``.
        """
        ...

    def last_block_attention(self, images: Tensor) -> Tensor:
        """Attention probabilities of the last block, ``[B, heads, T, T]`` (rows: queries, each summing to 1), token
        layout ``[CLS, registers, patches]`` (``T = 1 + num_registers + N``). The normal forward pass is untouched;
        :func:`metadino.models.attention.cls_attention` turns this into CLS -> patch maps.

        Args:
            images: [B, C, H, W] as in ``forward`` (no masking).
        """
        # The built-in ViT and the transformers wrapper implement it; a backbone registered from elsewhere may not.
        raise UserError(f"backbone {type(self).__name__} does not expose its attention probabilities "
                        "(Backbone.last_block_attention), which attention maps and the localisation score need; "
                        "use a built-in, hf: or metadino: backbone, or implement it")

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
