"""Gradient scaling layer: identity forward, λ·grad backward (spec §3), parity with `grl/*`."""

from __future__ import annotations

import pytest
import torch

from metadino.guidance.grl import scale_gradient


@pytest.mark.parametrize(("tag", "lam"), [("0p5", 0.5), ("m1", -1.0), ("0", 0.0)])
def test_grl_gradient_matches_reference(reference_values, tag, lam):
    x = reference_values["grl/x"].clone().requires_grad_()
    y = scale_gradient(x, lam)
    torch.testing.assert_close(y, reference_values["grl/x"], rtol=0, atol=0)  # forward is the identity
    (y * reference_values["grl/upstream"]).sum().backward()
    torch.testing.assert_close(x.grad, reference_values[f"grl/grad_lambda_{tag}"], rtol=0, atol=0)


def test_grl_scales_only_the_input_gradient_and_not_lambda():
    """λ is a Python float: no gradient for it; the gradient below the layer is λ × the one above."""
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    x = torch.randn(4, 5, requires_grad=True)
    h = x @ w
    out = scale_gradient(h, -0.25)
    assert out.data_ptr() == h.data_ptr()  # a view, no copy
    upstream = torch.randn(4, 3)
    out.backward(upstream)
    torch.testing.assert_close(x.grad, -0.25 * upstream @ w.detach().T)
    torch.testing.assert_close(w.grad, -0.25 * x.detach().T @ upstream)
