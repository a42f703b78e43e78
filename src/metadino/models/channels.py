"""Channel expansion of a patch embedding: N-channel input from a 3-channel checkpoint (as FINO
adapts RGB foundations to 4-channel microscopy).

The new input channels get the mean of the existing filters (appended at the end), and the whole
weight is scaled by ``C_old / C_new``. That scaling keeps the sum of filters over channels unchanged,
so an image whose channels are all equal gives exactly the same patch embedding as before: a
grayscale-like input is seen the way the pretrained model saw it.

To add another mode (e.g. ``"first"``: copy filter 0 into the new channels, or ``"zeros"``: new channels
start at zero and are ignored until trained), add a branch that builds ``extra`` [O, N-C, p, p] below and
add the name to ``EXPANSION_MODES``; the ``normalize`` rule then applies unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EXPANSION_MODES", "expand_patch_embed_weight"]

EXPANSION_MODES: tuple[str, ...] = ("mean",)


def expand_patch_embed_weight(weight: Tensor, in_chans: int, *, mode: str = "mean", normalize: bool = True) -> Tensor:
    """Expand a conv patch-embedding weight to more input channels.

    Args:
        weight: [O, C, p, p] patch-embedding conv weight (C = 3 for RGB checkpoints).
        in_chans: N >= C, the wanted number of input channels; or 1 (grayscale: the filters are summed).
        mode: how the N - C new channels are initialised; only ``"mean"`` (mean over the C filters).
        normalize: scale the whole result by C / N (the reference's default; ``--no-normalize`` turns it off).

    Returns:
        [O, N, p, p] new tensor (same dtype/device). For N == C it is an unchanged copy.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a conv weight [O, C, p, p], got shape {tuple(weight.shape)}")
    if mode not in EXPANSION_MODES:
        raise ValueError(f"unknown channel expansion mode {mode!r}; expected one of {EXPANSION_MODES}")
    cur = weight.shape[1]
    if in_chans == 1 and cur > 1:
        # grayscale from a colour checkpoint: the summed filter embeds a gray image exactly as the checkpoint
        # embedded that image replicated into every channel
        return weight.detach().sum(dim=1, keepdim=True).contiguous()
    if in_chans < cur:
        raise ValueError(f"cannot shrink a patch embedding from {cur} to {in_chans} input channels")
    if in_chans == cur:
        return weight.detach().clone()
    with torch.no_grad():
        mean = weight.mean(dim=1, keepdim=True)  # [O, 1, p, p]
        extra = mean.expand(-1, in_chans - cur, -1, -1)
        out = torch.cat([weight, extra], dim=1)
        if normalize:
            out = out * (cur / in_chans)
    return out.contiguous()
