"""Attention-pooling probe over frozen patch tokens (FINO's evaluation protocol), scaled to the data.

A single learned query attends over the patch tokens of a frozen backbone; one classifier is trained per
grid learning rate, all at once on the same batches, and the one with the best final validation score wins.

Scaling rule (``epochs=None``): the reference trains 5 × 300 iterations of batch 32 on FMoW, i.e. about
0.6 passes over its data. Here the total is ``min(1500, 50 passes)`` iterations: large sets get the reference
budget (validated 5 times, every 300 iterations), small sets get at most 50 passes over the data (validated
after every pass) so that a few hundred images do not get thousands of iterations. ``hidden_dim=None`` is
``min(512, in_dim rounded up to a multiple of num_heads)``, so a tiny backbone gets a tiny probe.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

DEFAULT_LRS: tuple[float, ...] = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0)
SELECT_METRICS = ("accuracy", "balanced_accuracy", "worst_group_accuracy", "multilabel_f1")

MAX_ITERATIONS = 1500  # the reference FMoW budget: 5 epochs × 300 iterations
MAX_PASSES = 50  # cap for small sets: at most this many passes over the training data
VAL_ROUNDS = 5  # validation rounds when a pass is longer than MAX_ITERATIONS / VAL_ROUNDS
MAX_HIDDEN = 512


class AttentionPoolClassifier(nn.Module):
    """FINO's probe: input_proj Linear(in_dim, hidden) -> LayerNorm(hidden); one learned query [hidden] (trunc-normal 0.02);
    kv = Linear(hidden, 2*hidden) split into K and V over num_heads; SDPA with scale 1/sqrt(head_dim); dropout 0;
    Linear(hidden, n_outputs). Linear weights trunc-normal 0.02, zero bias. No output projection/MLP."""

    def __init__(
        self,
        in_dim: int,
        n_outputs: int,
        *,
        hidden_dim: int = 512,
        num_heads: int = 8,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1 or hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} must be a positive multiple of num_heads {num_heads}")
        if in_dim < 1 or n_outputs < 1:
            raise ValueError(f"in_dim ({in_dim}) and n_outputs ({n_outputs}) must be positive")
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        # skip_init: the default (kaiming) init would draw from the global RNG only to be overwritten.
        self.input_proj = nn.utils.skip_init(nn.Linear, in_dim, hidden_dim)  # type: ignore[no-untyped-call]  # unannotated in torch
        self.norm = nn.LayerNorm(hidden_dim)
        self.query = nn.Parameter(torch.empty(hidden_dim))
        self.kv = nn.utils.skip_init(nn.Linear, hidden_dim, 2 * hidden_dim)  # type: ignore[no-untyped-call]  # unannotated in torch
        self.dropout = nn.Dropout(0.0)
        self.head = nn.utils.skip_init(nn.Linear, hidden_dim, n_outputs)  # type: ignore[no-untyped-call]  # unannotated in torch
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Trunc-normal(0.02) for the query and Linear weights, zero biases, LayerNorm (1, 0)."""
        with torch.no_grad():
            for linear in (self.input_proj, self.kv, self.head):
                nn.init.trunc_normal_(linear.weight, std=0.02, generator=generator)
                nn.init.zeros_(linear.bias)
            nn.init.trunc_normal_(self.query, std=0.02, generator=generator)
            self.norm.reset_parameters()

    def _query_kv(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, p, _ = tokens.shape
        x = self.norm(self.input_proj(tokens))
        k, v = self.kv(x).reshape(b, p, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [B, H, P, hd]
        # contiguous: some fused SDPA kernels reject stride-0 (expanded) batch dims.
        q = self.query.reshape(1, self.num_heads, 1, self.head_dim).expand(b, -1, -1, -1).contiguous()
        return q, k, v

    def forward(self, tokens: Tensor) -> Tensor:
        """Args: tokens [B, P, in_dim]. Returns logits [B, n_outputs]."""
        q, k, v = self._query_kv(tokens)
        pooled = F.scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)  # [B, H, 1, hd]
        logits: Tensor = self.head(self.dropout(pooled.reshape(tokens.shape[0], -1)))
        return logits

    @torch.no_grad()
    def attention_weights(self, tokens: Tensor) -> Tensor:
        """Args: tokens [B, P, in_dim]. Returns the query's attention over tokens [B, H, P] (sums to 1 over P)."""
        q, k, _ = self._query_kv(tokens)
        weights: Tensor = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1).squeeze(2)
        return weights


@dataclass
class AttnPoolResult:
    classifier: AttentionPoolClassifier  # the one picked on validation, eval mode, on CPU
    lr: float  # its (unscaled grid) learning rate
    val_score: float  # its validation score (the selection metric)
    scores: dict[float, float]  # val score of every grid LR
    # per validation round: {"step", "val": {lr: score}, "train_loss": {lr: mean loss since the last round}}
    history: list[dict[str, Any]] = field(default_factory=list)


def default_hidden_dim(in_dim: int, num_heads: int = 8) -> int:
    """min(512, in_dim rounded up to a multiple of num_heads): the reference width, never wider than the input."""
    return min(MAX_HIDDEN, math.ceil(in_dim / num_heads) * num_heads)


def default_schedule(n_train: int, batch_size: int) -> tuple[int, int]:
    """(validation rounds, iterations per round) for ``epochs=None``; see the module docstring."""
    per_pass = math.ceil(n_train / batch_size)
    total = min(MAX_ITERATIONS, MAX_PASSES * per_pass)
    round_len = min(per_pass, math.ceil(total / VAL_ROUNDS))
    return math.ceil(total / round_len), round_len


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless shuffled passes over range(n); the last batch of a pass may be short."""
    while True:
        perm = torch.randperm(n, generator=generator)
        yield from perm.split(batch_size)  # type: ignore[no-untyped-call]  # unannotated in torch


@torch.no_grad()
def _predict_many(
    classifiers: Sequence[AttentionPoolClassifier], tokens: Tensor, batch_size: int, device: torch.device
) -> list[Tensor]:
    """Logits [N, n_outputs] fp32 on CPU for each classifier; each batch is cast to fp32 once, on the device."""
    outs: list[list[Tensor]] = [[] for _ in classifiers]
    modes = [c.training for c in classifiers]
    for c in classifiers:
        c.eval()
    for start in range(0, tokens.shape[0], batch_size):
        x = tokens[start : start + batch_size].to(device=device, dtype=torch.float32)
        for out, c in zip(outs, classifiers):
            out.append(c(x).float().cpu())
    for c, mode in zip(classifiers, modes):
        c.train(mode)
    n_out = classifiers[0].head.out_features if classifiers else 0
    return [torch.cat(o) if o else torch.empty(0, n_out) for o in outs]


def predict_attention_pool(
    classifier: AttentionPoolClassifier,
    tokens: Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Logits [N, n_outputs] fp32 on CPU.

    Args:
        tokens: [N, P, in_dim] fp16/fp32 on CPU, cast to fp32 one batch at a time on ``device``.
    The classifier is moved to ``device`` for the call and back to where it was afterwards.
    """
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be [N, P, in_dim], got shape {tuple(tokens.shape)}")
    device = torch.device(device)
    home = next(classifier.parameters()).device
    classifier.to(device)
    try:
        return _predict_many([classifier], tokens, batch_size, device)[0]
    finally:
        classifier.to(home)


def _correct(logits: Tensor, targets: Tensor) -> Tensor:
    """Bool [N]: argmax equals the target; rows with non-finite logits (a diverged classifier) count as wrong."""
    return (logits.argmax(1) == targets) & torch.isfinite(logits).all(1)


def _score(logits: Tensor, targets: Tensor, select: str, groups: Tensor | None = None) -> float:
    """The selection metric in [0, 1] (not ×100).

    Args:
        logits: [N, C]; targets: int64 [N] or, for multilabel_f1, multi-hot [N, C]; groups: int64 [N].
    balanced_accuracy averages the recall of the classes present in ``targets``; worst_group_accuracy is the
    minimum accuracy over groups with at least one sample; multilabel_f1 is the macro F1 over all C labels at
    sigmoid > 0.5, a label with no positives and no predictions scoring 0 (torchmetrics' MultilabelF1Score).
    """
    if select == "multilabel_f1":
        pred = torch.sigmoid(logits) > 0.5  # NaN > 0.5 is False: a diverged classifier predicts nothing
        truth = targets > 0.5
        tp = (pred & truth).sum(0).double()
        fp = (pred & ~truth).sum(0).double()
        fn = (~pred & truth).sum(0).double()
        denom = 2 * tp + fp + fn
        f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))
        return float(f1.mean())
    correct = _correct(logits, targets).double()
    if select == "accuracy":
        return float(correct.mean())
    by = targets if select == "balanced_accuracy" else groups
    if by is None:
        raise ValueError("worst_group_accuracy needs val_groups")
    per = [correct[by == g].mean() for g in by.unique()]  # type: ignore[no-untyped-call]  # unannotated in torch
    reduce = torch.stack(per).mean() if select == "balanced_accuracy" else torch.stack(per).min()
    return float(reduce)


def _check_inputs(
    tokens: Tensor, targets: Tensor, name: str, *, n_outputs: int, multilabel: bool, in_dim: int | None = None
) -> None:
    if tokens.ndim != 3:
        raise ValueError(f"{name}_tokens must be [N, P, in_dim], got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"{name}_tokens is empty (shape {tuple(tokens.shape)})")
    if in_dim is not None and tokens.shape[2] != in_dim:
        raise ValueError(f"{name}_tokens has feature size {tokens.shape[2]}, expected {in_dim} as in train_tokens")
    if targets.shape[0] != tokens.shape[0]:
        raise ValueError(f"{name}_targets has {targets.shape[0]} rows but {name}_tokens has {tokens.shape[0]}")
    if multilabel:
        if targets.ndim != 2 or targets.shape[1] != n_outputs or not targets.is_floating_point():
            raise ValueError(f"{name}_targets must be float multi-hot [N, {n_outputs}], got {targets.dtype} "
                             f"{tuple(targets.shape)}")
    else:
        if targets.ndim != 1 or targets.dtype != torch.int64:
            raise ValueError(f"{name}_targets must be int64 [N], got {targets.dtype} {tuple(targets.shape)}")
        if targets.min() < 0 or targets.max() >= n_outputs:
            raise ValueError(f"{name}_targets must lie in [0, {n_outputs}), got [{targets.min()}, {targets.max()}]")


def train_attention_pool(
    train_tokens: Tensor,
    train_targets: Tensor,
    val_tokens: Tensor,
    val_targets: Tensor,
    *,
    n_outputs: int,
    multilabel: bool = False,
    lrs: Sequence[float] = DEFAULT_LRS,
    epochs: int | None = None,
    batch_size: int = 32,
    val_groups: Tensor | None = None,
    select: str = "accuracy",
    hidden_dim: int | None = None,
    num_heads: int = 8,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> AttnPoolResult:
    """Train one attention-pooling classifier per grid LR at once and pick the best on validation (as in FINO's evaluation).

    Args:
        train_tokens: [N, P, in_dim] fp16/fp32 on CPU (cast per batch on ``device``; never copied whole).
        train_targets: int64 [N] class ids, or float multi-hot [N, n_outputs] with ``multilabel=True``.
        val_tokens, val_targets: the same for validation; val_groups: int64 [N_val] for worst_group_accuracy.
    ``epochs``: passes over the training data, validated after each; None picks the budget of
    :func:`default_schedule`. AdamW (wd 0), cosine to 0 per iteration, no warm-up, each LR × batch_size / 256.
    All classifiers start from the same init (the seed) so that they differ only in LR; the winner is the best
    final val score (ties: the smaller LR), returned with its last-iteration weights, in eval mode, on CPU.
    """
    grid = _check_arguments(train_tokens, train_targets, val_tokens, val_targets, val_groups, n_outputs=n_outputs,
                            multilabel=multilabel, lrs=lrs, epochs=epochs, batch_size=batch_size, select=select)
    n, in_dim = train_tokens.shape[0], train_tokens.shape[2]
    if epochs is None:
        rounds, round_len = default_schedule(n, batch_size)
    else:
        rounds, round_len = epochs, math.ceil(n / batch_size)
    total = rounds * round_len
    hidden = default_hidden_dim(in_dim, num_heads) if hidden_dim is None else hidden_dim
    device = torch.device(device)

    # Local generators: deterministic for the seed, and the caller's global RNG stays untouched.
    classifiers = [
        AttentionPoolClassifier(in_dim, n_outputs, hidden_dim=hidden, num_heads=num_heads,
                                generator=torch.Generator().manual_seed(seed)).to(device)
        for _ in grid
    ]
    optimizer, scheduler = _optimizer(classifiers, grid, batch_size, total)
    batches = _batches(n, batch_size, torch.Generator().manual_seed(seed))
    val = _Validation(val_tokens, val_targets, val_groups, select)
    scores, history = _train_grid(classifiers, grid, optimizer, scheduler, batches, train_tokens, train_targets,
                                  val, multilabel=multilabel, total=total, round_len=round_len, device=device,
                                  progress=progress)
    best = _best_index(grid, scores)
    chosen = classifiers[best].cpu().eval()
    return AttnPoolResult(chosen, grid[best], scores[grid[best]], scores, history)


def _check_arguments(train_tokens: Tensor, train_targets: Tensor, val_tokens: Tensor, val_targets: Tensor,
                     val_groups: Tensor | None, *, n_outputs: int, multilabel: bool, lrs: Sequence[float],
                     epochs: int | None, batch_size: int, select: str) -> list[float]:
    """Validate :func:`train_attention_pool`'s arguments; returns the LR grid, ascending."""
    if select not in SELECT_METRICS:
        raise ValueError(f"select must be one of {SELECT_METRICS}, got {select!r}")
    if multilabel != (select == "multilabel_f1"):
        raise ValueError(f"select={select!r} does not fit multilabel={multilabel}: use multilabel_f1 iff multilabel")
    if n_outputs < (1 if multilabel else 2):
        raise ValueError(f"n_outputs must be at least {1 if multilabel else 2}, got {n_outputs}")
    _check_inputs(train_tokens, train_targets, "train", n_outputs=n_outputs, multilabel=multilabel)
    in_dim = train_tokens.shape[2]
    _check_inputs(val_tokens, val_targets, "val", n_outputs=n_outputs, multilabel=multilabel, in_dim=in_dim)
    if select == "worst_group_accuracy":
        if val_groups is None or val_groups.shape != (val_tokens.shape[0],) or val_groups.dtype != torch.int64:
            raise ValueError("worst_group_accuracy needs val_groups: int64 [N_val]")
    grid = sorted(float(lr) for lr in lrs)
    if not grid or len(set(grid)) != len(grid) or grid[0] <= 0:
        raise ValueError(f"lrs must be distinct positive numbers, got {list(lrs)}")
    if batch_size < 1 or (epochs is not None and epochs < 1):
        raise ValueError(f"batch_size ({batch_size}) and epochs ({epochs}) must be positive")
    return grid


def _optimizer(classifiers: Sequence[AttentionPoolClassifier], grid: Sequence[float], batch_size: int,
               total: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """One AdamW (wd 0) with a parameter group per classifier at its scaled grid LR, and its cosine schedule."""
    scale = batch_size / 256  # one process: the reference's batch × world_size / 256
    optimizer = torch.optim.AdamW(
        [{"params": c.parameters(), "lr": lr * scale} for c, lr in zip(classifiers, grid)], weight_decay=0.0
    )
    # Closed-form CosineAnnealingLR(T_max=total, eta_min=0), stepped per iteration.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 0.5 * (1.0 + math.cos(math.pi * t / total)))
    return optimizer, scheduler


@dataclass
class _Validation:
    """The validation set and how it is scored."""

    tokens: Tensor
    targets: Tensor
    groups: Tensor | None
    select: str

    def scores(self, classifiers: Sequence[AttentionPoolClassifier], grid: Sequence[float],
               device: torch.device) -> dict[float, float]:
        """The selection metric of each classifier, keyed by its grid LR."""
        logits = _predict_many(classifiers, self.tokens, 256, device)
        return {lr: _score(lg, self.targets, self.select, self.groups) for lr, lg in zip(grid, logits)}


def _train_grid(classifiers: Sequence[AttentionPoolClassifier], grid: Sequence[float],
                optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                batches: Iterator[Tensor], train_tokens: Tensor, train_targets: Tensor, val: _Validation, *,
                multilabel: bool, total: int, round_len: int, device: torch.device,
                progress: bool) -> tuple[dict[float, float], list[dict[str, Any]]]:
    """``total`` iterations of all classifiers on the same batches, validated every ``round_len``.

    Returns the last round's val scores and the history (see :class:`AttnPoolResult`).
    """
    loss_fn = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy
    history: list[dict[str, Any]] = []
    scores: dict[float, float] = {}
    loss_sums = torch.zeros(len(grid), device=device)
    bar = tqdm(total=total, desc="attention-pool probe", unit="it", disable=not progress)
    for step in range(1, total + 1):
        idx = next(batches)
        x = train_tokens[idx].to(device=device, dtype=torch.float32)
        y = train_targets[idx].to(device=device, dtype=torch.float32 if multilabel else torch.int64)
        losses = torch.stack([loss_fn(c(x), y) for c in classifiers])
        optimizer.zero_grad(set_to_none=True)
        # classifiers are independent: the sum gives each its own gradient
        losses.sum().backward()  # type: ignore[no-untyped-call]  # unannotated in torch
        optimizer.step()
        scheduler.step()
        loss_sums += losses.detach()
        bar.update(1)
        if step % round_len == 0:
            scores = val.scores(classifiers, grid, device)
            mean_loss = (loss_sums / round_len).tolist()
            history.append({"step": step, "val": dict(scores), "train_loss": dict(zip(grid, mean_loss))})
            loss_sums.zero_()
            bar.set_postfix(best=f"{max(_finite(s) for s in scores.values()):.3f}")
    bar.close()
    return scores, history


def _best_index(grid: Sequence[float], scores: dict[float, float]) -> int:
    """Index of the best final val score; non-finite scores lose, and ties keep the smaller LR."""
    best = 0
    for i, lr in enumerate(grid):  # ascending: a strict > keeps the smaller LR on ties
        if _finite(scores[lr]) > _finite(scores[grid[best]]):
            best = i
    return best


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf
