"""DINO/iBOT head (spec §6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metadino.models.heads import DINOHead, l2_normalize_eps


def test_structure_and_init() -> None:
    head = DINOHead(32, out_dim=100, hidden_dim=48, bottleneck_dim=16, nlayers=3)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert [m.out_features for m in head.mlp if isinstance(m, nn.Linear)] == [48, 48, 16]
    assert head.last_layer.bias is None and head.last_layer.weight.shape == (100, 16)
    assert all(torch.count_nonzero(m.bias) == 0 for m in head.mlp if isinstance(m, nn.Linear))
    assert 0.015 < head.last_layer.weight.std().item() < 0.025
    assert not any("weight_g" in n or "parametrizations" in n for n, _ in head.named_parameters())  # no weight norm
    one = DINOHead(32, out_dim=10, bottleneck_dim=8, nlayers=1)
    assert len(one.mlp) == 1 and one.mlp[0].in_features == 32 and one.mlp[0].out_features == 8


def test_bottleneck_is_pre_norm_and_logits_follow() -> None:
    torch.manual_seed(0)
    head = DINOHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=16)
    x = torch.randn(5, 32)
    logits, bottleneck = head(x, return_bottleneck=True)
    assert logits.shape == (5, 64) and bottleneck.shape == (5, 16)
    torch.testing.assert_close(bottleneck, head.mlp(x))
    assert not torch.allclose(bottleneck.norm(dim=-1), torch.ones(5))  # not normalized
    torch.testing.assert_close(logits, head.last_layer(F.normalize(bottleneck, dim=-1)))
    torch.testing.assert_close(head(x), logits)
    logits.sum().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_normalization_eps_depends_on_dtype() -> None:
    assert l2_normalize_eps(torch.float32) == 1e-12
    assert l2_normalize_eps(torch.bfloat16) == l2_normalize_eps(torch.float16) == 1e-6
    head = DINOHead(4, out_dim=3, hidden_dim=8, bottleneck_dim=4, nlayers=1)
    with torch.no_grad():
        head.mlp[0].weight.zero_()
        head.mlp[0].bias.fill_(1e-8)  # bottleneck norm 2e-8: below the half-precision eps, above fp32's
        head.last_layer.weight.copy_(torch.eye(3, 4))
    x = torch.zeros(1, 4)
    torch.testing.assert_close(head(x), torch.full((1, 3), 0.5))  # fp32: unit-normalized
    out16 = head.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), torch.full((1, 3), 0.01), atol=1e-4, rtol=1e-2)  # divided by 1e-6


def test_norm_last_layer_gives_cosine_logits():
    import torch
    import torch.nn.functional as F

    from metadino.models.heads import DINOHead

    head = DINOHead(8, 16, hidden_dim=8, bottleneck_dim=4, norm_last_layer=True)
    with torch.no_grad():
        head.last_layer.weight.mul_(50.0)  # the scale of the prototypes must not matter
    x = torch.randn(5, 8)
    logits, bottleneck = head(x, return_bottleneck=True)
    expected = F.normalize(bottleneck, dim=-1) @ F.normalize(head.last_layer.weight, dim=1).T
    torch.testing.assert_close(logits, expected)
    assert logits.abs().max() <= 1.0 + 1e-6
