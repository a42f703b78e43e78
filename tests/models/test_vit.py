"""Built-in ViT: architecture details not covered by the backbone contract tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metadino.errors import UserError
from metadino.models.registry import build_backbone
from metadino.models.vit import VIT_PRESETS, Block, VisionTransformer


def _tiny(**kw) -> VisionTransformer:
    torch.manual_seed(0)
    args = dict(image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    args.update(kw)
    return VisionTransformer(**args)


def test_presets_parameter_count() -> None:
    assert VIT_PRESETS["vit-small"] == {"embed_dim": 384, "depth": 12, "num_heads": 6}
    bb = build_backbone("builtin:vit-small")  # patch 16, 224 px
    d, c, p, n = 384, 3, 16, 14 * 14
    per_block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = (d * c * p * p + d) + d + (n + 1) * d + d + 12 * per_block + 2 * d
    assert sum(p.numel() for p in bb.parameters()) == expected
    assert (bb.embed_dim, bb.depth, bb.num_heads) == (384, 12, 6)


def test_parameter_names_and_init() -> None:
    vit = _tiny(num_registers=3)
    names = dict(vit.named_parameters())
    for n in ("patch_embed.proj.weight", "cls_token", "pos_embed", "mask_token", "register_tokens",
              "blocks.1.attn.qkv.weight", "blocks.0.ls1.gamma", "blocks.0.ls2.gamma", "norm.weight"):
        assert n in names, n
    assert names["pos_embed"].shape == (1, 1 + 16, 32) and names["register_tokens"].shape == (1, 3, 32)
    assert torch.count_nonzero(vit.mask_token) == 0
    assert torch.all(vit.blocks[0].ls1.gamma == 1e-5)
    assert all(torch.count_nonzero(p) == 0 for n, p in names.items() if n.endswith("bias") and "norm" not in n)
    big = build_backbone("builtin:vit-small")
    assert 0.018 < big.blocks[0].mlp.fc1.weight.std().item() < 0.022
    assert isinstance(_tiny(layerscale_init=None).blocks[0].ls1, torch.nn.Identity)
    assert not any("gamma" in n for n, _ in _tiny(layerscale_init=None).named_parameters())


def test_block_matches_naive_attention() -> None:
    torch.manual_seed(0)
    blk = Block(16, 2, 4.0, True, 0.5, 0.0)
    x = torch.randn(2, 5, 16)
    h = blk.norm1(x)
    q, k, v = blk.attn.qkv(h).reshape(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    att = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    y = x + 0.5 * blk.attn.proj(att.transpose(1, 2).reshape(2, 5, 16))
    y = y + 0.5 * blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(y))))
    torch.testing.assert_close(blk(x), y, atol=1e-5, rtol=1e-5)


def test_position_embedding_interpolation() -> None:
    vit = _tiny()
    assert vit._pos_embed(4, 4) is vit.pos_embed  # base grid: used as is
    pe = vit._pos_embed(2, 3)
    grid = vit.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(2, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 6, 32)
    torch.testing.assert_close(pe[:, 1:], ref)
    torch.testing.assert_close(pe[:, :1], vit.pos_embed[:, :1])
    tok = vit(torch.randn(1, 3, 16, 24))  # local crop, non-square
    tok.patches.sum().backward()
    assert vit.pos_embed.grad is not None and vit.pos_embed.grad[:, 1:].abs().sum() > 0


def test_drop_path_train_only() -> None:
    vit = _tiny(drop_path_rate=0.5, layerscale_init=None)
    x = torch.randn(4, 3, 16, 16)
    vit.train()
    torch.manual_seed(1)
    a = vit(x).cls
    torch.manual_seed(2)
    b = vit(x).cls
    assert not torch.allclose(a, b)
    vit.eval()
    torch.testing.assert_close(vit(x).cls, vit(x).cls, atol=0, rtol=0)


def test_checkpointing_only_while_training() -> None:
    vit = _tiny()
    vit.set_grad_checkpointing(True)
    count = [0]
    vit.blocks[0].norm1.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    vit.eval()
    vit(torch.randn(1, 3, 16, 16)).cls.sum().backward()
    assert count[0] == 1  # eval: no recompute
    vit.train()
    vit(torch.randn(1, 3, 16, 16)).cls.sum().backward()
    assert count[0] == 3


def test_bf16_autocast_forward() -> None:
    vit = _tiny().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tok = vit(torch.randn(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.bool))
    assert tok.patches.shape == (2, 16, 32) and torch.isfinite(tok.patches.float()).all()


def test_masks_validation() -> None:
    vit = _tiny()
    with pytest.raises(ValueError, match="masks"):
        vit(torch.randn(2, 3, 32, 32), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(UserError, match="in_chans"):
        vit(torch.randn(2, 1, 32, 32))
