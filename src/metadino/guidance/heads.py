"""Guide heads (spec §3): MLP classifier, MLP regressor and the prototype bank (ProtoNCE, EMA centroids).

Every head reads features of several crops, crop-major ``[n_crops, B, in_dim]`` (the student CLS of the
global crops, or their DINO-head logits for ``grl_space: prototype``), applies the gradient scaling λ to its
*input* and returns a :class:`GuideOutput`. ``valid`` [B] marks the samples whose metadata value is present:
the others are excluded from the loss (they still flow through the head, with an exactly zero gradient, so
the graph, and the set of parameters that receive gradients, never depends on the data), and from the
prototype update (deliberate deviation from the reference, which crashes on label −1, spec §0.7). With no
valid sample the loss is exactly 0, attached to the graph, and the bank is left unchanged.

Per-rank convention: losses are means over the *local* valid samples; DDP averages the parameter gradients.
The prototype update is global: every rank all-gathers the normalised teacher features, labels and valid
flags (padded to the largest per-rank batch) and applies the identical update of the global batch.
"""

from __future__ import annotations

import abc

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from metadino.errors import UserError
from metadino.guidance.grl import scale_gradient
from metadino.precision import full_precision

__all__ = ["GuideHead", "GuideOutput", "MLPClassifier", "MLPRegressor", "PrototypeBank"]

OUTPUT_ACTIVATIONS = ("none", "sigmoid", "tanh")


@dataclass
class GuideOutput:
    """Loss of one guide (scalar, attached to the graph) and detached scalar metrics for logging."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _check_features(x: Tensor, in_dim: int, name: str) -> None:
    if x.dim() != 3 or x.shape[-1] != in_dim:
        raise ValueError(f"{name}: features must be [n_crops, B, {in_dim}], got {tuple(x.shape)}")


def _valid_mask(valid: Tensor | None, batch: int, device: torch.device) -> Tensor:
    if valid is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    if valid.shape != (batch,):
        raise ValueError(f"valid must be [B={batch}], got {tuple(valid.shape)}")
    return valid.to(device=device, dtype=torch.bool)


def _masked_mean(per_sample: Tensor, valid: Tensor) -> Tensor:
    """Mean of `per_sample` [..., B] over valid samples (and all leading dims); exactly 0 when none is valid.

    `where` (not a product) so that a non-finite value of an invalid sample can never leak into the loss.
    """
    n_valid = valid.sum().clamp(min=1) * (per_sample.numel() // max(1, per_sample.shape[-1]))
    return torch.where(valid, per_sample, torch.zeros_like(per_sample)).sum() / n_valid


def _masked_rate(hit: Tensor, valid: Tensor) -> Tensor:
    """Fraction of valid samples where `hit` [B] is true (0 when none is valid), detached."""
    return ((hit & valid).sum() / valid.sum().clamp(min=1)).detach().float()


def _mlp(in_dim: int, out_dim: int, hidden_dims: Sequence[int], dropout: float) -> nn.Sequential:
    """(Linear -> GELU -> Dropout|Identity) per hidden width, then Linear(h_last, out_dim)."""
    layers: list[nn.Module] = []
    prev = in_dim
    for h in hidden_dims:
        layers += [nn.Linear(prev, h), nn.GELU(), nn.Dropout(dropout) if dropout > 0 else nn.Identity()]
        prev = h
    layers.append(nn.Linear(prev, out_dim))
    return nn.Sequential(*layers)


def _check_mlp_args(name: str, in_dim: int, n_out: int, hidden_dims: Sequence[int], dropout: float) -> None:
    if in_dim < 1 or n_out < 1 or any(h < 1 for h in hidden_dims):
        raise UserError(
            f"{name}: in_dim, the output size and every hidden width must be >= 1 "
            f"(got in_dim={in_dim}, outputs={n_out}, hidden_dims={list(hidden_dims)}); fix the guide's head sizes."
        )
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"{name}: dropout must be in [0, 1), got {dropout}; fix the guide's `dropout`.")


class GuideHead(nn.Module, abc.ABC):
    """Common interface of guide heads."""

    kind: str = ""

    @abc.abstractmethod
    def loss(self, features: Tensor, targets: Tensor, valid: Tensor | None, lam: float) -> GuideOutput:
        """Loss of the guide on the student features.

        Args:
            features: [n_crops, B, in_dim] student features.
            targets: [B] (class ids / scalar targets) or [B, k] (multi-hot / vector targets).
            valid: [B] bool, False where the metadata value is missing (None: all valid).
            lam: gradient factor λ_eff applied to the features (negative for gradient reversal).
        """
        ...

    @torch.no_grad()
    def update(self, teacher_features: Tensor, targets: Tensor, valid: Tensor | None) -> None:
        """State update from the teacher after the loss (only the prototype bank has state)."""

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialise parameters and buffers (spec §2 `init_weights`)."""


class _MLPHead(GuideHead):
    def __init__(self, in_dim: int, out_dim: int, hidden_dims: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.mlp = _mlp(in_dim, out_dim, hidden_dims, dropout)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0, generator=generator)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, lam: float = 1.0) -> Tensor:
        """Args: x [..., in_dim]. Returns [..., out_dim]; the backward into x is scaled by `lam`."""
        return self.mlp(scale_gradient(x, lam))


class MLPClassifier(_MLPHead):
    """GRL -> MLP -> logits; CE on class ids, or BCE-with-logits on multi-hot targets (`multilabel`)."""

    kind = "classification"

    def __init__(
        self, in_dim: int, n_classes: int, hidden_dims: Sequence[int], dropout: float, multilabel: bool = False
    ) -> None:
        _check_mlp_args("classification head", in_dim, n_classes, hidden_dims, dropout)
        super().__init__(in_dim, n_classes, hidden_dims, dropout)
        self.n_classes, self.multilabel = n_classes, multilabel

    def loss(self, features: Tensor, targets: Tensor, valid: Tensor | None, lam: float) -> GuideOutput:
        """Mean over crops of CE (BCE for multilabel) on valid samples; accuracy of crop 0 (exact match at 0.5).

        Args:
            features: [n_crops, B, in_dim].
            targets: [B] int64 class ids, or [B, n_classes] multi-hot (any dtype) when `multilabel`.
            valid: [B] bool or None.
        """
        _check_features(features, self.in_dim, "classification head")
        n_crops, batch = features.shape[:2]
        valid = _valid_mask(valid, batch, features.device)
        logits = self(features, lam).float()  # [n_crops, B, C]
        if self.multilabel:
            if targets.shape != (batch, self.n_classes):
                raise ValueError(f"multilabel targets must be [B, {self.n_classes}], got {tuple(targets.shape)}")
            y = torch.where(valid[:, None], targets.to(logits.device, torch.float32), 0.0)
            per = F.binary_cross_entropy_with_logits(
                logits, y.expand(n_crops, -1, -1), reduction="none"
            ).mean(-1)
            hit = ((torch.sigmoid(logits[0]) > 0.5) == (y > 0.5)).all(-1)
        else:
            if targets.shape != (batch,):
                raise ValueError(f"class targets must be [B], got {tuple(targets.shape)}")
            y = torch.where(valid, targets.to(logits.device, torch.long), 0)
            per = F.cross_entropy(
                logits.reshape(n_crops * batch, -1), y.repeat(n_crops), reduction="none"
            ).view(n_crops, batch)
            hit = logits[0].argmax(-1) == y
        metrics = {"accuracy": _masked_rate(hit, valid), "valid_fraction": valid.float().mean()}
        return GuideOutput(_masked_mean(per, valid), metrics)


class MLPRegressor(_MLPHead):
    """GRL -> MLP -> optional sigmoid/tanh; MSE to targets mapped to [0, 1] by (y − min)/(max − min + 1e-8)."""

    kind = "regression"

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        hidden_dims: Sequence[int],
        dropout: float,
        output_activation: str = "none",
        target_min: float | None = None,
        target_max: float | None = None,
    ) -> None:
        _check_mlp_args("regression head", in_dim, n_outputs, hidden_dims, dropout)
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise UserError(
                f"regression head: output_activation is {output_activation!r}; use one of "
                f"{', '.join(OUTPUT_ACTIVATIONS)}."
            )
        if (target_min is None) != (target_max is None):
            raise UserError("regression head: give both target_min and target_max, or neither.")
        if target_min is not None and not target_max > target_min:  # type: ignore[operator]
            raise UserError(
                f"regression head: target_max ({target_max}) must be greater than target_min ({target_min})."
            )
        super().__init__(in_dim, n_outputs, hidden_dims, dropout)
        self.n_outputs, self.output_activation = n_outputs, output_activation
        self.normalize_targets = target_min is not None
        self.register_buffer("target_min", torch.tensor(float(target_min or 0.0)))
        self.register_buffer("target_max", torch.tensor(float(target_max or 1.0)))

    def forward(self, x: Tensor, lam: float = 1.0) -> Tensor:
        out = super().forward(x, lam)
        if self.output_activation == "sigmoid":
            return torch.sigmoid(out)
        if self.output_activation == "tanh":
            return torch.tanh(out)
        return out

    def normalize(self, y: Tensor) -> Tensor:
        """Map raw targets to the training scale (identity without min/max)."""
        if not self.normalize_targets:
            return y
        lo, hi = self.target_min.float(), self.target_max.float()
        return (y - lo) / (hi - lo + 1e-8)

    def loss(self, features: Tensor, targets: Tensor, valid: Tensor | None, lam: float) -> GuideOutput:
        """Mean over crops of the MSE on valid samples; `mse` metric of crop 0.

        Args:
            features: [n_crops, B, in_dim].
            targets: [B] (when n_outputs == 1) or [B, n_outputs] raw targets; NaN allowed where invalid.
            valid: [B] bool or None.
        """
        _check_features(features, self.in_dim, "regression head")
        n_crops, batch = features.shape[:2]
        valid = _valid_mask(valid, batch, features.device)
        y = targets.to(features.device, torch.float32)
        if y.dim() == 1:
            y = y.unsqueeze(1)
        if y.shape != (batch, self.n_outputs):
            raise ValueError(f"regression targets must be [B, {self.n_outputs}], got {tuple(targets.shape)}")
        # Sanitise before the arithmetic: a NaN placeholder of a missing value must never reach the gradient.
        y = torch.where(valid[:, None], self.normalize(y), 0.0)
        pred = self(features, lam).float()  # [n_crops, B, n_outputs]
        per = (pred - y).pow(2).mean(-1)  # [n_crops, B]
        metrics = {"mse": _masked_mean(per[:1], valid).detach(), "valid_fraction": valid.float().mean()}
        return GuideOutput(_masked_mean(per, valid), metrics)


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _gather_global(feats: Tensor, labels: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All-gather [n_crops, B, D] features, [B] labels and [B] valid rank-major over the default group.

    Unequal per-rank batches are padded to the largest one; padding rows are marked invalid.
    """
    world = _world_size()
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
        _check_features(features, self.in_dim, "prototypical head")
        n_crops, batch = features.shape[:2]
        valid = _valid_mask(valid, batch, features.device)
        if targets.shape != (batch,):
            raise ValueError(f"class targets must be [B], got {tuple(targets.shape)}")
        y = torch.where(valid, targets.to(features.device, torch.long), 0)
        logits = self(features, lam)  # [n_crops, B, C]
        per = F.cross_entropy(logits.reshape(n_crops * batch, -1), y.repeat(n_crops), reduction="none")
        per = per.view(n_crops, batch)
        hit = logits.argmax(-1) == y  # [n_crops, B]
        acc = torch.stack([_masked_rate(hit[c], valid) for c in range(n_crops)]).mean()
        return GuideOutput(_masked_mean(per, valid), {"accuracy": acc, "valid_fraction": valid.float().mean()})

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
        _check_features(teacher_features, self.in_dim, "prototypical head")
        batch = teacher_features.shape[1]
        valid = _valid_mask(valid, batch, teacher_features.device)
        # Normalise in the input dtype (the reference does it in bf16 under FSDP), then gather the global batch.
        feats = F.normalize(teacher_features.detach(), dim=-1)
        feats, labels, valid = _gather_global(feats, targets.to(feats.device).long(), valid)
        for crop in range(feats.shape[0]):
            self._update_one(feats[crop].float(), labels, valid)

    def _update_one(self, t: Tensor, labels: Tensor, valid: Tensor) -> None:
        """One EMA step from normalised features t [N, D] fp32 (spec §3, steps 3-8)."""
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
