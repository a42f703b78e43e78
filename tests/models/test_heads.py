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


def _autocast_step(head, x, fast: bool):
    """Logits and gradients of one bf16-autocast forward/backward, through the head or the fp32 expression."""
    head.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if fast:
            logits = head(x)
        else:
            z = F.normalize(head.mlp(x), dim=-1, eps=l2_normalize_eps(torch.bfloat16))
            logits = F.linear(z, F.normalize(head.last_layer.weight, dim=1, eps=1e-12))
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    (logits.float() ** 2 + logits.float() * weights).sum().backward()
    return logits, {n: p.grad.clone() for n, p in head.named_parameters()}


def test_norm_last_layer_under_autocast_is_the_fp32_expression_cast():
    # Under autocast the normalised prototypes are written straight in bf16: logits bit for bit those of the fp32
    # F.normalize cast by autocast, gradients equal up to fp32 rounding (the derivative is formed in fewer passes).
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=512, hidden_dim=32, bottleneck_dim=24, norm_last_layer=True)
    with torch.no_grad():
        head.last_layer.weight.mul_(torch.rand(512, 1) * 4 + 0.1)
        head.last_layer.weight[3].zero_()  # a row below eps: only g / eps reaches it
    x = torch.randn(40, 16)
    fast_logits, fast_grads = _autocast_step(head, x, fast=True)
    plain_logits, plain_grads = _autocast_step(head, x, fast=False)
    assert fast_logits.dtype == torch.bfloat16 and torch.equal(fast_logits, plain_logits)
    for name, grad in plain_grads.items():
        fast = fast_grads[name]
        if name == "last_layer.weight":  # the clamped row (g / eps, ~1e12 times the others) on its own
            torch.testing.assert_close(fast[3], grad[3], rtol=1e-6, atol=0)
            assert grad[3].abs().min() > 1e6
            fast, grad = fast[torch.arange(512) != 3], grad[torch.arange(512) != 3]
        scale = grad.abs().max().item()
        torch.testing.assert_close(fast, grad, rtol=1e-5, atol=1e-6 * scale, msg=name)
    with torch.no_grad():  # the teacher's path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(head(x), plain_logits)


def test_norm_last_layer_fp32_is_f_normalize_bit_for_bit():
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=64, hidden_dim=32, bottleneck_dim=8, norm_last_layer=True)
    x = torch.randn(6, 16)
    logits = head(x)
    logits.square().sum().backward()
    grad = head.last_layer.weight.grad
    head.zero_grad(set_to_none=True)
    z = F.normalize(head.mlp(x), dim=-1, eps=1e-12)
    plain = F.linear(z, F.normalize(head.last_layer.weight, dim=1, eps=1e-12))
    plain.square().sum().backward()
    assert torch.equal(logits, plain) and torch.equal(grad, head.last_layer.weight.grad)
