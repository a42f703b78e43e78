"""Patch-embedding channel expansion (spec §8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metadino.models.channels import expand_patch_embed_weight


def _w(c: int = 3) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(8, c, 4, 4)


def test_reference_formula() -> None:
    w = _w()
    out = expand_patch_embed_weight(w, 4)
    assert out.shape == (8, 4, 4, 4)
    mean = w.mean(dim=1, keepdim=True)
    torch.testing.assert_close(out, torch.cat([w, mean], dim=1) * 0.75, atol=0, rtol=0)
    out6 = expand_patch_embed_weight(w, 6, normalize=False)
    torch.testing.assert_close(out6, torch.cat([w, mean, mean, mean], dim=1), atol=0, rtol=0)
    assert not out.requires_grad


def test_same_channel_count_is_an_unchanged_copy() -> None:
    w = _w()
    out = expand_patch_embed_weight(w, 3)
    assert torch.equal(out, w) and out.data_ptr() != w.data_ptr()


@pytest.mark.parametrize("n", [4, 5, 8])
def test_equal_channels_give_the_same_conv_output(n: int) -> None:
    """Sum over channels of the filters is kept (3/N * (3m + (N-3)m) = 3m): an image whose channels are all
    equal (e.g. grayscale replicated) is embedded exactly as the 3-channel model embeds it."""
    w, b = _w(), torch.randn(8)
    g = torch.randn(2, 1, 16, 16)
    ref = F.conv2d(g.expand(-1, 3, -1, -1), w, b, stride=4)
    out = F.conv2d(g.expand(-1, n, -1, -1), expand_patch_embed_weight(w, n), b, stride=4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_zero_extra_channels_scale_rgb_response() -> None:
    """With the new channels at zero, the response is (3/N) of the RGB response (bias unchanged)."""
    w, b = _w(), torch.randn(8)
    x = torch.randn(2, 3, 16, 16)
    x5 = torch.cat([x, torch.zeros(2, 2, 16, 16)], dim=1)
    out = F.conv2d(x5, expand_patch_embed_weight(w, 5), b, stride=4)
    ref = 0.6 * F.conv2d(x, w, None, stride=4) + b[None, :, None, None]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_dtype_and_errors() -> None:
    w = _w().to(torch.bfloat16)
    assert expand_patch_embed_weight(w, 4).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="shrink"):
        expand_patch_embed_weight(_w(), 2)
    torch.testing.assert_close(expand_patch_embed_weight(_w(), 1), _w().sum(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="mode"):
        expand_patch_embed_weight(_w(), 4, mode="zeros")
    with pytest.raises(ValueError, match="conv weight"):
        expand_patch_embed_weight(torch.randn(8, 3), 4)
