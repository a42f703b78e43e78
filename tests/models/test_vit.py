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


def test_attend_runs_short_half_precision_cpu_attention_in_fp32():
    # CPU, bf16, with a gradient, up to MATH_SDPA_MAX_TOKENS: the math backend, i.e. the fp32 attention of the bf16
    # inputs rounded once; gradients agree with the flash kernel's up to bf16 rounding.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from metadino.models.vit import MATH_SDPA_MAX_TOKENS, attend

    gen = torch.Generator().manual_seed(0)
    for tokens in (37, MATH_SDPA_MAX_TOKENS):
        q, k, v = (torch.randn(3, 2, tokens, 16, generator=gen).bfloat16().requires_grad_() for _ in range(3))
        out = attend(q, k, v)
        with sdpa_kernel(SDPBackend.MATH):
            exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        assert out.dtype == torch.bfloat16 and torch.equal(out, exact.bfloat16())
        grad = torch.randn(out.shape, generator=gen).bfloat16()
        fast = torch.autograd.grad(out, (q, k, v), grad)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), grad)
        for a, b in zip(fast, flash, strict=True):
            torch.testing.assert_close(a.float(), b.float(), atol=0.05, rtol=0.02)
        with torch.no_grad():  # no gradient: SDPA's own choice, as before
            assert torch.equal(attend(q, k, v), F.scaled_dot_product_attention(q, k, v))
    # longer sequences and fp32 keep SDPA's own choice, bit for bit
    long = [torch.randn(2, 2, MATH_SDPA_MAX_TOKENS + 1, 16, generator=gen).bfloat16().requires_grad_() for _ in range(3)]
    assert torch.equal(attend(*long), F.scaled_dot_product_attention(*long))
    fp32 = [torch.randn(2, 2, 37, 16, generator=gen, requires_grad=True) for _ in range(3)]
    assert torch.equal(attend(*fp32), F.scaled_dot_product_attention(*fp32))


def test_mfu_benchmark_counts_attention_alike_on_every_backend(monkeypatch):
    # benchmarks/mfu.py counts CPU flash attention (which FlopCounterMode does not know) as the math backend's
    # matmuls count, so that the step's FLOPs do not depend on the backend `attend` picks.
    import sys
    from pathlib import Path

    from torch.nn.attention import SDPBackend, sdpa_kernel

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import mfu

    counts = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        q, k, v = (torch.randn(4, 3, 37, 16, requires_grad=True) for _ in range(3))
        with mfu._flop_counter() as counter, sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v).sum().backward()
        counts.append(counter.get_total_flops())
    sys.modules.pop("mfu", None)
    assert counts[0] == counts[1] == 3 * 2 * (2 * 4 * 3 * 37 * 37 * 16)  # 2 matmuls forward, 4 backward
