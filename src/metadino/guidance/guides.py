"""A set of metadata guides: per-column heads, signs, weights, conditioning and balancing.

Each guide reads the student CLS of the global crops (as in FINO's code), or the DINO-head logits for
``grl_space: prototype``. Informative guides pull their column into the representation (+λ);
spurious guides push it out by gradient reversal (−λ) and use the reference's weight rule
(``w_eff = weight / spurious_weight_divisor``, 10 in the reference). A spurious guide with
``given: [columns]`` also receives those columns' values (one-hot or scaled, never reversed), so the
adversary only removes what they do not explain (conditional suppression, beyond the reference).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from metadino.data.batch import Target
from metadino.data.targets import ColumnEncoder
from metadino.guidance.balance import GradNormEMA, balance_guides
from metadino.guidance.head import GuideHead


@dataclass(frozen=True)
class GuideSpec:
    column: str
    role: str  # "informative" | "spurious"
    weight: float  # effective weight (after the spurious divisor)
    space: str = "embedding"  # "embedding" | "prototype"
    given: tuple[str, ...] = field(default_factory=tuple)

    @property
    def sign(self) -> float:
        return -1.0 if self.role == "spurious" else 1.0


class GuideSet(nn.Module):
    """All guides of a run. Not part of the EMA teacher, not clipped (as in the reference).

    ``balance_momentum > 0`` (with ``balance``) balances an EMA of each guide's gradient norm (FINO paper) instead
    of each step's norms; the averages are the buffer ``balance_ema.norms``, stored by :meth:`update`.
    """

    def __init__(
        self,
        specs: list[GuideSpec],
        heads: dict[str, GuideHead],
        conditioners: dict[str, ColumnEncoder],
        *,
        balance: bool,
        balance_per_rank: bool = False,
        balance_momentum: float = 0.0,
    ):
        super().__init__()
        if balance_momentum > 0 and (not balance or balance_per_rank):
            raise ValueError("balance_momentum needs balance=True and global-batch norms (balance_per_rank=False)")
        self.specs = {s.column: s for s in specs}
        self.heads = nn.ModuleDict(heads)
        self.conditioners = conditioners
        self.balance = balance
        self.balance_per_rank = balance_per_rank
        # Registered only when used, so checkpoints of per-step balancing keep their keys.
        self.balance_ema = GradNormEMA(len(specs), balance_momentum) if balance_momentum > 0 else None

    def _features(self, spec: GuideSpec, cls: Tensor, logits: Tensor | None, targets: Mapping[str, Target]) -> Tensor:
        x = logits if spec.space == "prototype" else cls
        if x is None:
            raise ValueError(f"guide {spec.column!r} reads the prototype space (grl_space: prototype) but no DINO-head "
                             "logits were given")
        if not spec.given:
            return x
        parts = [self.conditioners[c].one_hot(*targets[c]).to(x.dtype) for c in spec.given]
        cond = torch.cat(parts, dim=-1).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x, cond], dim=-1)

    def _head(self, name: str) -> GuideHead:
        # nn.ModuleDict is typed as holding nn.Module; __init__ only puts GuideHeads in it
        return cast(GuideHead, self.heads[name])

    def forward(
        self, cls: Tensor, logits: Tensor | None, targets: Mapping[str, Target], lam: float
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, float | Tensor]]:
        """Guide losses of one step.

        Args:
            cls: student CLS of the global crops [n_g, B, D] (the balancing anchor).
            logits: student DINO-head logits of the global crops [n_g, B, K] (prototype-space guides).
            targets: each guided and conditioning column's values and valid mask, by column.
            lam: λ of the schedule (the sign comes from each guide's role).
        Returns:
            (sum to add to the loss, per-guide contributions for the loss breakdown, metrics to log: floats and
            detached 0-d tensors).
        """
        weighted: dict[str, Tensor] = {}
        metrics: dict[str, float | Tensor] = {"guide/lambda": lam}
        if self.balance_ema is not None:
            self.balance_ema.discard()  # a forward whose update never ran (non-finite step) leaves no trace
        for name, spec in self.specs.items():
            target = targets[name]
            out = self._head(name).loss(self._features(spec, cls, logits, targets), target.values, target.valid, spec.sign * lam)
            weighted[name] = spec.weight * out.loss
            metrics[f"guide/{name}/loss"] = float(out.loss.detach())
            metrics[f"guide/{name}/weighted"] = float(weighted[name].detach())
            metrics[f"guide/{name}/lambda"] = spec.sign * lam
            metrics[f"guide/{name}/valid"] = float(target.valid.float().mean())
            for key, value in out.metrics.items():
                metrics[f"guide/{name}/{key}"] = float(value)
        if self.balance and len(weighted) > 1:
            total, scales, norms, grad_target = balance_guides(
                weighted, cls, per_rank=self.balance_per_rank, weights={n: s.weight for n, s in self.specs.items()},
                norm_ema=self.balance_ema,
            )
            averaged = self.balance_ema.pending if self.balance_ema is not None else None
            for i, name in enumerate(weighted):
                metrics[f"guide/{name}/grad_norm"] = norms[name]
                metrics[f"guide/{name}/scale"] = scales[name]
                if averaged is not None:
                    metrics[f"guide/{name}/grad_norm_ema"] = averaged[i]  # 0-d tensor: read only when logged
                weighted[name] = weighted[name] * scales[name]
            metrics["guide/grad_norm_target"] = grad_target
        else:
            total = torch.stack(list(weighted.values())).sum()
        return total, weighted, metrics

    @torch.no_grad()
    def update(self, teacher_cls: Tensor, targets: Mapping[str, Target]) -> None:
        """State updates of a finite step: prototype banks learn from the teacher CLS of the global crops (crop 0,
        then crop 1), and EMA balancing stores the averages of the last forward."""
        for name in self.specs:
            self._head(name).update(teacher_cls, *targets[name])
        if self.balance_ema is not None:
            self.balance_ema.commit()
