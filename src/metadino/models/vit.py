"""Built-in Vision Transformer (DINOv2-style pre-norm ViT) implementing the Backbone contract.

Token layout [CLS, registers, patches]. A learned position embedding covers CLS + a base patch grid
(``image_size // patch_size`` per side) and is resized bicubically (fp32, no antialias) for other grids;
registers get no position embedding, as in DINOv2. Blocks: ``x + DropPath(LS(Attn(LN(x))))`` then
``x + DropPath(LS(MLP(LN(x))))``, attention through ``F.scaled_dot_product_attention``.
Drop path uses the same rate in every block (DINOv2's ``drop_path_uniform``; also what HF Dinov2 does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from metadino.models.backbone import Backbone, Tokens

__all__ = ["VIT_PRESETS", "VisionTransformer"]

VIT_PRESETS: dict[str, dict[str, int]] = {
    "vit-tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit-small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit-base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "vit-large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens with a strided conv."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, D]."""
        y: Tensor = self.proj(x)
        return y.flatten(2).transpose(1, 2)


# Up to this many tokens, half-precision attention that needs a gradient runs on SDPA's math backend on CPU. The math
# backend computes softmax(q k^T / sqrt(d)) v in fp32 from the bf16/fp16 inputs (the fp32 result rounded once), the
# same arithmetic the flash kernel accumulates in, but the CPU flash kernel's backward has a large fixed cost: on 2
# AVX-512 cores (torch 2.13), forward + backward of bf16 [64, 6 heads, 37 tokens, 64] took 30 ms flash vs 10 ms math,
# [16, 6, 145, 64] 28 vs 19 ms, [16, 6, 197, 64] 38 vs 44 ms. fp32, no-grad and CUDA calls keep SDPA's own choice.
MATH_SDPA_MAX_TOKENS = 160


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v)`` on the faster backend where both compute the same (see above)."""
    if (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-2] <= MATH_SDPA_MAX_TOKENS
            and q.requires_grad and torch.is_grad_enabled()):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, T, D]."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attend(qkv[0], qkv[1], qkv[2])  # [B, H, T, hd]
        y: Tensor = self.proj(out.transpose(1, 2).reshape(b, t, d))
        return y

    def probabilities(self, x: Tensor) -> Tensor:
        """The attention probabilities that ``forward`` applies, computed explicitly: softmax(q k^T / sqrt(hd))
        (SDPA's default scale), [B, T, D] -> [B, H, T, T]. For inspection only; ``forward`` stays on SDPA."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        logits = (q.float() @ k.float().transpose(-2, -1)) * (d // self.num_heads) ** -0.5
        probs: Tensor = logits.softmax(dim=-1)
        return probs


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.fc2(self.act(self.fc1(x)))
        return y


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample (training only), rescaling the kept ones."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, layerscale_init: float | None,
                 drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1: nn.Module = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2: nn.Module = LayerScale(dim, layerscale_init) if layerscale_init is not None else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        attn: Tensor = self.drop_path(self.ls1(self.attn(self.norm1(x))))
        x = x + attn
        mlp: Tensor = self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x + mlp


class VisionTransformer(Backbone):
    """Pre-norm ViT with CLS, optional registers and an iBOT mask token.

    Args:
        image_size: side of the base position-embedding grid in pixels (other sizes interpolate).
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: architecture.
        num_registers: register tokens (0 = none; ``Tokens.registers`` is then None).
        layerscale_init: LayerScale init (1e-5, DINOv2); None disables LayerScale.
        drop_path_rate: stochastic-depth rate of every block.
    """

    kind = "builtin"
    CONFIG_KEYS: tuple[str, ...] = ("image_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                                    "mlp_ratio", "qkv_bias", "num_registers", "layerscale_init", "drop_path_rate")

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_registers: int = 0,
        layerscale_init: float | None = 1e-5,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if image_size < patch_size:
            raise ValueError(f"image_size {image_size} is smaller than patch_size {patch_size}")
        self.image_size, self.patch_size, self.in_chans = image_size, patch_size, in_chans
        self.embed_dim, self.num_heads, self.mlp_ratio, self.qkv_bias = embed_dim, num_heads, mlp_ratio, qkv_bias
        self.num_registers, self.layerscale_init, self.drop_path_rate = num_registers, layerscale_init, drop_path_rate
        self.grid = image_size // patch_size
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, embed_dim)) if num_registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.add_module("blocks", nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, layerscale_init, drop_path_rate) for _ in range(depth)
        ))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.reset_parameters()

    @property
    def blocks(self) -> nn.ModuleList:  # registered as a submodule named "blocks" (names "blocks.<i>.")
        blocks = self._modules.get("blocks")
        if blocks is None:  # AttributeError (not KeyError) so nn.Module.add_module can register it
            raise AttributeError("blocks")
        return blocks  # type: ignore[return-value]

    def reset_parameters(self) -> None:
        """trunc_normal(0.02) weights and tokens, zero biases and mask token, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LayerScale):
                nn.init.constant_(m.gamma, float(self.layerscale_init or 1.0))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.register_tokens is not None:
            nn.init.trunc_normal_(self.register_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)

    def _pos_embed(self, h: int, w: int) -> Tensor:
        """Position embedding [1, 1 + h*w, D] for an h x w patch grid (recomputed each call: autograd-safe)."""
        if h == self.grid and w == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        g, d = self.grid, self.embed_dim
        grid = patch_pos.reshape(1, g, g, d).permute(0, 3, 1, 2).float()
        # fp32 bicubic: in half precision the resampled embeddings drift
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
        patch_pos = grid.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, h * w, d)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def _embed(self, images: Tensor, masks: Tensor) -> Tensor:
        """[B, C, H, W] + bool [B, N] -> tokens [B, 1 + R + N, D] before the blocks."""
        b, _, h, w = images.shape
        x = self.patch_embed(images)
        # torch.where even for an all-False mask: the mask token always joins the graph (DDP, deps.md pitfall 6)
        x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.to(x.dtype).expand(b, -1, -1), x], dim=1)
        x = x + self._pos_embed(h // self.patch_size, w // self.patch_size).to(x.dtype)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.to(x.dtype).expand(b, -1, -1), x[:, 1:]], dim=1)
        return x

    def _run_block(self, blk: nn.Module, x: Tensor) -> Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            checkpointed: Tensor = checkpoint(blk, x, use_reentrant=False)
            return checkpointed
        out: Tensor = blk(x)
        return out

    def _split(self, x: Tensor) -> Tokens:
        r = self.num_registers
        return Tokens(cls=x[:, 0], patches=x[:, 1 + r:], registers=x[:, 1:1 + r] if r else None)

    def forward(self, images: Tensor, masks: Tensor | None = None) -> Tokens:
        masks = self._check_inputs(images, masks)
        x = self._embed(images, masks)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return self._split(self.norm(x))

    def intermediate_layers(self, images: Tensor, n: int = 4) -> list[Tokens]:
        if not 1 <= n <= self.depth:
            raise ValueError(f"n must be in [1, {self.depth}], got {n}")
        x = self._embed(images, self._check_inputs(images, None))
        outs: list[Tokens] = []
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x)
            if i >= self.depth - n:
                outs.append(self._split(self.norm(x)))
        return outs

    def last_block_attention(self, images: Tensor) -> Tensor:
        """[B, heads, T, T] attention probabilities of the last block (token layout [CLS, registers, patches])."""
        x = self._embed(images, self._check_inputs(images, None))
        for blk in list(self.blocks)[:-1]:
            x = self._run_block(blk, x)
        last: Any = self.blocks[-1]
        probs: Tensor = last.attn.probabilities(last.norm1(x))
        return probs

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def config_dict(self) -> dict[str, Any]:
        """Architecture only (drop_path_rate is a training setting and is left out)."""
        cfg = {k: getattr(self, k) for k in self.CONFIG_KEYS if k != "drop_path_rate"}
        cfg["depth"] = self.depth
        return {"kind": "builtin", **cfg}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` + ``config.json`` ({"metadino_backbone": "builtin", constructor args})."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        cfg = {"metadino_backbone": "builtin", "format_version": 1}
        cfg.update({k: getattr(self, k) if k != "depth" else self.depth for k in self.CONFIG_KEYS})
        (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
