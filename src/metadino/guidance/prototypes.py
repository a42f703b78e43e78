"""Prototype bank guide head: ProtoNCE against EMA class centroids with per-class concentration φ.

ProtoNCE follows Prototypical Contrastive Learning (Li et al., ICLR 2021, arXiv 2005.04966); the EMA centroid
and concentration update follows the FINO reference code (Gardès et al., 2026, arXiv 2606.05107). The
contract (input layout, ``valid`` masking) is :mod:`metadino.guidance.head`. Invalid samples are also left
out of the bank update — a deliberate deviation from the reference, which crashes on label −1 — and with no
valid sample the bank is left unchanged.

The prototype update is global: every rank all-gathers the normalised teacher features, labels and valid
flags (padded to the largest per-rank batch) and applies the identical update of the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from metadino.errors import UserError
from metadino.guidance.grl import scale_gradient
from metadino.guidance.head import GuideHead, GuideOutput, check_features, masked_mean, masked_rate, valid_mask
from metadino.precision import full_precision
from metadino.ranks import world_size

__all__ = ["PrototypeBank"]


def _gather_global(feats: Tensor, labels: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All-gather [n_crops, B, D] features, [B] labels and [B] valid rank-major over the default group.

    Unequal per-rank batches are padded to the largest one; padding rows are marked invalid.
    """
    world = world_size()
    if world <= 1:
        return feats, labels, valid
    n_crops, batch, dim = feats.shape
    size = torch.tensor([batch], device=feats.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    pad = int(torch.cat(sizes).max()) - batch
    feats_p = torch.cat([feats, feats.new_zeros(n_crops, pad, dim)], dim=1).contiguous()
    meta = torch.stack([labels.long(), valid.long()])  # one collective for labels and flags
    meta_p = torch.cat([meta, meta.new_zeros(2, pad)], dim=1).contiguous()
    feats_all = [torch.empty_like(feats_p) for _ in range(world)]
    meta_all = [torch.empty_like(meta_p) for _ in range(world)]
    dist.all_gather(feats_all, feats_p)
    dist.all_gather(meta_all, meta_p)
    meta_cat = torch.cat(meta_all, dim=1)
    return torch.cat(feats_all, dim=1), meta_cat[0], meta_cat[1].bool()


class PrototypeBank(GuideHead):
    """Prototypical contrastive head: ProtoNCE against EMA class centroids with per-class concentration φ.

    No parameters. Buffers: `centroids` [C, D] fp32 (stored un-normalised, normalised at use),
    `concentration` [C] fp32 (initially `temperature`), `counts` [C] int64 (samples seen per class).
    """

    kind = "prototypical"

    centroids: Tensor
    concentration: Tensor
    counts: Tensor

    def __init__(self, dim: int, n_classes: int, temperature: float, momentum: float, phi_min: float) -> None:
        super().__init__()
        if dim < 1 or n_classes < 1:
            raise UserError(f"prototypical head: dim and n_classes must be >= 1 (got {dim}, {n_classes}).")
        if not temperature > 0:
            raise UserError(f"prototypical head: temperature must be > 0, got {temperature}; fix `temperature`.")
        if not 0.0 <= momentum <= 1.0:
            raise UserError(f"prototypical head: momentum must be in [0, 1], got {momentum}; fix `momentum`.")
        if not phi_min >= 0:
            raise UserError(f"prototypical head: phi_min must be >= 0, got {phi_min}; fix `phi_min`.")
        self.in_dim, self.n_classes = dim, n_classes
        self.temperature, self.momentum, self.phi_min = float(temperature), float(momentum), float(phi_min)
        self.register_buffer("centroids", torch.empty(n_classes, dim))
        self.register_buffer("concentration", torch.empty(n_classes))
        self.register_buffer("counts", torch.zeros(n_classes, dtype=torch.long))
        self.reset_buffers()

    def extra_repr(self) -> str:
        return (f"dim={self.in_dim}, n_classes={self.n_classes}, temperature={self.temperature}, "
                f"momentum={self.momentum}, phi_min={self.phi_min}")

    @torch.no_grad()
    def reset_buffers(self, generator: torch.Generator | None = None) -> None:
        """centroids = normalize(randn(C, D)) drawn from `generator` (global RNG if None); φ = τ0; counts = 0.

        Under DDP pass a generator seeded identically on every rank so that all banks start equal.
        """
        device = generator.device if generator is not None else self.centroids.device
        draw = torch.randn(self.n_classes, self.in_dim, generator=generator, device=device)
        self.centroids.copy_(F.normalize(draw, dim=-1))
        self.concentration.fill_(self.temperature)
        self.counts.zero_()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.reset_buffers(generator)

    def forward(self, x: Tensor, lam: float = 1.0) -> Tensor:
        """logits[b, c] = <x̂_b, Ĉ_c> / max(φ_c, φ_min), fp32.

        Args:
            x: [..., D] student features; the backward into x is scaled by `lam`.
        Returns:
            [..., C] logits.
        """
        with full_precision(x.device):  # fp32 similarities, as in the reference
            xh = F.normalize(scale_gradient(x, lam).float(), dim=-1)
            ch = F.normalize(self.centroids.detach().float(), dim=-1)
            phi = self.concentration.detach().float().clamp(min=self.phi_min)
            return (xh @ ch.T) / phi

    def loss(self, features: Tensor, targets: Tensor, valid: Tensor | None, lam: float) -> GuideOutput:
        """Mean over crops of the per-crop ProtoNCE (CE over all C classes) on valid samples, pre-update state.

        Args:
            features: [n_crops, B, D] student CLS.
            targets: [B] int64 class ids (anything where invalid, e.g. −1).
            valid: [B] bool or None.
        Metrics: `accuracy` = mean over crops of the per-crop argmax accuracy.
        """
        check_features(features, self.in_dim, "prototypical head")
        n_crops, batch = features.shape[:2]
        valid = valid_mask(valid, batch, features.device)
        if targets.shape != (batch,):
            raise ValueError(f"class targets must be [B], got {tuple(targets.shape)}")
        y = torch.where(valid, targets.to(features.device, torch.long), 0)
        logits = self(features, lam)  # [n_crops, B, C]
        per = F.cross_entropy(logits.reshape(n_crops * batch, -1), y.repeat(n_crops), reduction="none")
        per = per.view(n_crops, batch)
        hit = logits.argmax(-1) == y  # [n_crops, B]
        acc = torch.stack([masked_rate(hit[c], valid) for c in range(n_crops)]).mean()
        return GuideOutput(masked_mean(per, valid), {"accuracy": acc, "valid_fraction": valid.float().mean()})

    @torch.no_grad()
    def update(self, teacher_features: Tensor, targets: Tensor, valid: Tensor | None) -> None:
        """EMA update of centroids and concentration from the teacher, crop 0 first, then crop 1, ...

        Call after :meth:`loss` (the loss uses the pre-update state); backward may come before or after.
        Under DDP every rank must call it (it all-gathers the global batch).

        Args:
            teacher_features: [n_crops, B, D] teacher CLS (unmasked global crops).
            targets: [B] int64 class ids.
            valid: [B] bool or None.
        """
        check_features(teacher_features, self.in_dim, "prototypical head")
        batch = teacher_features.shape[1]
        valid = valid_mask(valid, batch, teacher_features.device)
        # Normalise in the input dtype (the reference does it in bf16 under FSDP), then gather the global batch.
        feats = F.normalize(teacher_features.detach(), dim=-1)
        feats, labels, valid = _gather_global(feats, targets.to(feats.device).long(), valid)
        for crop in range(feats.shape[0]):
            self._update_one(feats[crop].float(), labels, valid)

    def _update_one(self, t: Tensor, labels: Tensor, valid: Tensor) -> None:
        """One EMA step from normalised features t [N, D] fp32, as the reference bank update."""
        n_cls = self.n_classes
        # Invalid samples get the sentinel label C: after a stable sort they sit past every class segment.
        lab = torch.where(valid, labels, n_cls)
        order = torch.argsort(lab, stable=True)
        lab, t = lab[order], t[order]
        hist = F.normalize(self.centroids.float(), dim=-1)  # H: the historical centroids
        dist2 = (t - hist[lab.clamp(0, n_cls - 1)]).pow(2).sum(-1)  # d_b = ||t_b - H_{y_b}||²
        classes = torch.arange(n_cls, device=lab.device)
        start = torch.searchsorted(lab, classes, right=False)
        end = torch.searchsorted(lab, classes, right=True)
        n = end - start  # n_c, int64 [C]
        sums, sq = self._segment_sums(t, dist2, lab, start, end)
        n_f = n.clamp(min=1).to(sums.dtype)
        mu = sums / n_f[:, None]  # batch mean of normalised features, not re-normalised

        prev = self.counts.clone()
        m = self.momentum
        cent = self.centroids.float()
        first = (n > 0) & (prev == 0)
        ema = (n > 0) & (prev > 0)
        new_c = torch.where(ema[:, None], m * cent + (1 - m) * mu, cent)
        new_c = torch.where(first[:, None], mu, new_c)
        phi = self.concentration.float()
        grow = (n >= 2) & (prev > 0)  # counts before this update
        new_phi = torch.where(grow, m * phi + (1 - m) * torch.sqrt(sq / n_f), phi)
        self.centroids.copy_(new_c)
        self.concentration.copy_(new_phi)
        self.counts.add_(n)

    @staticmethod
    def _segment_sums(
        t: Tensor, dist2: Tensor, lab: Tensor, start: Tensor, end: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-class sums of t [N, D] and dist2 [N] for label-sorted rows; segments [start_c, end_c).

        Differences of fp64 prefix sums: deterministic on every backend (no atomics), so all ranks that hold
        the same gathered batch compute bit-identical banks. MPS has no float64: index_add there.
        """
        if t.device.type == "mps":
            n_cls = start.shape[0]
            idx = lab.clamp(0, n_cls - 1)
            w = ((lab >= 0) & (lab < n_cls)).to(t.dtype)  # the sentinel and out-of-range labels add nothing
            sums = t.new_zeros(n_cls, t.shape[1]).index_add_(0, idx, t * w[:, None])
            sq = t.new_zeros(n_cls).index_add_(0, idx, dist2 * w)
            return sums, sq
        cum_t = F.pad(t.double().cumsum(0), (0, 0, 1, 0))
        cum_d = F.pad(dist2.double().cumsum(0), (1, 0))
        return (cum_t[end] - cum_t[start]).float(), (cum_d[end] - cum_d[start]).float()
