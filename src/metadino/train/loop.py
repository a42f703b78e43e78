"""The training loop: schedules -> forward -> finite check -> backward -> clip -> step -> EMA -> log.

Exact resume: model, teacher, optimizer, centering buffers and every rank's torch RNG are in the
checkpoint; schedules are functions of the step and the data order/augmentations are functions of
(seed, step, slot), so ``2N steps == N steps + exit + resume + N steps`` bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from metadino.config import RESUMABLE_CHANGES, Config, config_to_dict, diff_configs, save_config
from metadino.data.dataset import SSLDataset, StepSampler, collate_crops
from metadino.data.regions import load_regions
from metadino.data.table import load_table
from metadino.errors import UserError
from metadino.export import preprocessing_from_config, write_export
from metadino.train.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint
from metadino.train.distributed import DistInfo, all_ranks_true, barrier, init_distributed, is_dist, mean_across_ranks
from metadino.data.targets import TableTargets, save_vocab
from metadino.guidance.schedule import guidance_lambda, lambda_ramp_start
from metadino.models.adapt import count_parameters
from metadino.train.factory import (
    build_augmentation,
    build_backbone_from_config,
    build_encoders,
    build_guides,
    build_task,
    resolve_freeze_last_layer,
    resolve_stages,
)
from metadino.train.optim import apply_optim_schedule, build_param_groups
from metadino.train.provenance import provenance
from metadino.train.schedules import backbone_lr_scale, linear_warmup, warmup_cosine
from metadino.train.watch import UniformTargetWatch


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    run_dir: Path
    start_step: int
    end_step: int
    total_steps: int
    seconds: float
    first_loss: float | None = None
    last_loss: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    peak_memory_mb: float = 0.0
    preempted: bool = False
    trainable_params: int = 0
    total_params: int = 0

    @property
    def finished(self) -> bool:
        return self.end_step >= self.total_steps


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"config key 'train.device': '{name}' was asked for but CUDA is not available here; use auto or cpu.")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def schedule_values(cfg: Config, step: int) -> dict[str, float]:
    """Every scheduled scalar at `step` (pure)."""
    o, s, total = cfg.optim, cfg.ssl, cfg.train.steps
    lr = warmup_cosine(step, total=total, peak=o.lr, end=o.min_lr, warmup=o.warmup_steps)
    heads_only, ramp = resolve_stages(cfg)
    lam = cfg.guidance.lambda_
    lam_start = lambda_ramp_start(lam.warmup_steps, start=lam.start, unfreeze_step=heads_only)
    return {
        "guide_lambda": guidance_lambda(step, total, lam.schedule, lam_start),
        "backbone_scale": backbone_lr_scale(step, heads_only_steps=heads_only, ramp_steps=ramp),
        "lr": lr,
        "last_layer_lr": 0.0 if step < resolve_freeze_last_layer(cfg) else lr,
        "weight_decay": warmup_cosine(step, total=total, peak=o.weight_decay, end=o.weight_decay_end),
        "momentum": warmup_cosine(step, total=total, peak=s.ema_momentum, end=s.ema_momentum_end),
        "teacher_temp": linear_warmup(step, start=s.warmup_teacher_temp, end=s.teacher_temp, warmup=s.teacher_temp_warmup_steps),
    }


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _gather_rng(device: torch.device) -> list[dict[str, torch.Tensor]]:
    mine = _rng_state(device)
    if not is_dist():
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, {k: v.cpu() for k, v in mine.items()})
    return out


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _check_resume_compatible(saved: dict[str, Any], cfg: Config, run_dir: Path) -> None:
    changed = [k for k in diff_configs(saved["config"], config_to_dict(cfg)) if k not in RESUMABLE_CHANGES]
    if changed:
        shown = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
        raise UserError(
            f"cannot resume '{run_dir}' with a different configuration: these keys differ from the saved run: {shown}; "
            f"revert them or start a new run with another --out (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)."
        )


class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes the step, checkpoints and exits (preemption-safe)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second signal: give up immediately
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _clip_groups(task: Any) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters clipped together (the reference clips backbone and each head separately)."""
    student = task.student
    groups = {"backbone": list(student.backbone.parameters()), "dino_head": list(student.dino_head.parameters())}
    if student.ibot_head is not None and student.ibot_head is not student.dino_head:
        groups["ibot_head"] = list(student.ibot_head.parameters())
    if student.proj is not None:
        groups["proj"] = list(student.proj.parameters())
    return {k: [p for p in v if p.requires_grad] for k, v in groups.items()}


def train(
    cfg: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or continue) a run in `run_dir`. `stop_after` ends cleanly after that step with a checkpoint."""
    run_dir = Path(run_dir)
    has_run = bool(list_checkpoints(run_dir)) if run_dir.exists() else False
    if resume and not has_run:
        raise UserError(f"--resume was given but '{run_dir}' holds no checkpoint to resume from.")
    if not resume and has_run:
        raise UserError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --out.")
    if stop_after is not None and stop_after < 1:
        raise UserError(f"--stop-after must be at least 1, got {stop_after}.")

    device = resolve_device(cfg.train.device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    info: DistInfo = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    table = load_table(
        cfg.data.table,
        image_column=cfg.data.image_column,
        root=cfg.data.root,
        rows=cfg.data.rows,
        missing_values=cfg.data.missing_values,
    )
    encoders = build_encoders(cfg, table)  # checks guide columns before any compute
    lg = cfg.crops.label_guided
    regions = None
    if lg.share > 0:  # DINO-LG regions: errors name the table row and column, before any compute
        regions = load_regions(table, bbox_columns=lg.bbox_columns, mask_column=lg.mask_column, root=cfg.data.root)
    torch.manual_seed(cfg.train.seed)  # identical initial weights (and prototype banks) on every rank
    backbone = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size)
    for key, size in (("crops.global_size", cfg.crops.global_size), ("crops.local_size", cfg.crops.local_size)):
        if size % backbone.patch_size:
            raise UserError(f"config key '{key}': {size} is not a multiple of the backbone's patch size {backbone.patch_size}.")
    augment = build_augmentation(cfg, backbone.patch_size)
    guides = build_guides(cfg, encoders, embed_dim=backbone.embed_dim, dino_out_dim=cfg.ssl.head.out_dim)
    task = build_task(cfg, backbone, guides).to(device)
    heads = [("dino_head", task.student.dino_head)]
    if task.student.ibot_head is not None and task.student.ibot_head is not task.student.dino_head:
        heads.append(("ibot_head", task.student.ibot_head))
    if task.student.proj is not None:
        heads.append(("proj", task.student.proj))
    if guides is not None:
        heads.append(("guides", guides))
    groups = build_param_groups(
        task.student.backbone,
        heads,
        layer_decay=cfg.optim.layer_decay,
        patch_embed_lr_mult=cfg.optim.patch_embed_lr_mult,
        train_patch_embed=cfg.stages.train_patch_embed,
        freeze_tokens=cfg.stages.freeze_tokens,
        unfreeze_last_n_blocks=cfg.stages.unfreeze_last_n_blocks,
    )
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=cfg.optim.betas)

    trainable, total_params = count_parameters([task.student] + ([guides] if guides is not None else []))
    bb_trainable, bb_total = count_parameters(task.student.backbone)

    fingerprint = table.fingerprint()
    start_step = 0
    if resume:
        state = load_latest_checkpoint(run_dir)
        _check_resume_compatible(state, cfg, run_dir)
        if state.get("data_fingerprint") != fingerprint:
            raise UserError(
                f"cannot resume '{run_dir}': the table '{table.source}' or its row selection changed since the run started; "
                "restore it or start a new run with another --out."
            )
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        if len(rng) != info.world_size:
            raise UserError(f"cannot resume '{run_dir}' exactly: it was saved with {len(rng)} process(es), now {info.world_size}.")
        _set_rng_state(rng[info.rank], device)
        start_step = int(state["step"])
    else:
        # Per-rank streams for drop-path etc., after the shared initialisation.
        torch.manual_seed(cfg.train.seed + 1_000_003 * (info.rank + 1))

    total = cfg.train.steps
    end_step = min(total, stop_after) if stop_after is not None else total
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml", provenance(fingerprint, info.world_size))
        if encoders:
            save_vocab(run_dir / "vocab.json", encoders)
    barrier()

    if info.enabled:
        ddp = DistributedDataParallel(task.student, device_ids=[device.index] if device.type == "cuda" else None)
        task.set_student_call(ddp)
    sampler = StepSampler(
        len(table),
        batch_size=cfg.train.batch_size,
        total_steps=end_step,
        seed=cfg.train.seed,
        start_step=start_step,
        rank=info.rank,
        world_size=info.world_size,
    )
    targets = TableTargets.from_table(table, encoders) if encoders else None
    dataset = SSLDataset(
        table, augment, seed=cfg.train.seed, in_chans=cfg.model.in_chans, targets=targets, regions=regions
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_crops,
        num_workers=cfg.train.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global RNG untouched by loader start-up (exact resume)
        prefetch_factor=2 if cfg.train.num_workers > 0 else None,
    )
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16")
    clip_groups = _clip_groups(task)
    metrics_path = run_dir / "metrics.jsonl"
    result = TrainResult(run_dir, start_step, start_step, total, 0.0, trainable_params=trainable, total_params=total_params)
    if progress and info.is_main:
        print(f"trainable parameters: {trainable:,} of {total_params:,} ({100 * trainable / max(total_params, 1):.2f}%); "
              f"backbone {bb_trainable:,} of {bb_total:,} (adapt.mode: {cfg.adapt.mode})", file=sys.stderr)
    global_batch = cfg.train.batch_size * info.world_size
    bar = tqdm(
        total=end_step,
        initial=start_step,
        disable=not (progress and info.is_main),
        desc="train",
        unit="step",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    watch = UniformTargetWatch(cfg.ssl.head.out_dim, window=min(100, max(total // 4, 10)))
    t_start = time.perf_counter()
    t_last = t_start
    images_since_log = 0
    task.train()
    step = start_step
    with _StopRequest() as stop, contextlib.ExitStack() as files:
        metrics_file = files.enter_context(open(metrics_path, "a")) if info.is_main else None
        for batch in loader:
            sched = schedule_values(cfg, step)
            apply_optim_schedule(
                optimizer,
                lr=sched["lr"],
                weight_decay=sched["weight_decay"],
                last_layer_lr=sched["last_layer_lr"],
                backbone_scale=sched["backbone_scale"],
            )
            batch = _to_device(batch, device)
            with autocast:
                terms = task(batch, teacher_temp=sched["teacher_temp"], step=step, guide_lambda=sched["guide_lambda"])
            finite = bool(torch.isfinite(terms["total"]).item())
            if not all_ranks_true(finite, device):
                breakdown = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                raise TrainingDiverged(
                    f"training stopped at step {step}: the loss is not finite ({breakdown}); the last checkpoint in "
                    f"'{run_dir / 'checkpoints'}' is intact. Lower optim.lr, use train.precision=fp32, or check the images."
                )
            task.apply_pending_updates()  # centre / prototype banks: only from finite steps
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            if task.guides is not None:
                task.guides.sync_gradients()
            grad_norms = {}
            for name, params in clip_groups.items():
                if params:
                    max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad > 0 else math.inf
                    grad_norms[f"grad_norm/{name}"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            optimizer.step()
            task.update_teacher(sched["momentum"])
            step += 1
            images_since_log += global_batch

            warning = watch.update(step, float(terms["dino"].detach())) if cfg.ssl.dino_loss_weight > 0 else None
            if warning and info.is_main:
                tqdm.write(warning, file=sys.stderr)
            loss = float(terms["total"].detach())
            if result.first_loss is None:
                result.first_loss = loss
            result.last_loss = loss
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == end_step:
                now = time.perf_counter()
                values = {k: float(v.detach()) for k, v in terms.items()}
                values = mean_across_ranks({**values, **{k: float(v) for k, v in task.metrics.items()}}, device)
                record = {"step": step, **values, **sched, **grad_norms, "images_per_s": images_since_log / max(now - t_last, 1e-9)}
                t_last, images_since_log = now, 0
                result.history.append(record)
                if metrics_file is not None:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                postfix = {"loss": f"{values['total']:.3f}", "img_s": f"{record['images_per_s']:.1f}", "lr": f"{sched['lr']:.2e}"}
                if task.guides is not None:
                    postfix["λ"] = f"{sched['guide_lambda']:.2f}"
                    columns = set(task.guides.specs)  # guide columns only, not guide/lambda or guide/grad_norm_target
                    postfix.update({name[len("guide/"):]: f"{values[name]:.3f}" for name in values
                                    if name.count("/") == 1 and name.startswith("guide/") and name[len("guide/"):] in columns})
                bar.set_postfix(postfix)
            stop_now = not all_ranks_true(not stop.requested, device)
            if step % cfg.train.checkpoint_every == 0 or step == end_step or stop_now:
                _save(run_dir, step, task, optimizer, cfg, fingerprint, device, info, keep=cfg.train.keep_checkpoints)
            if stop_now:
                break
    bar.close()
    result.end_step = step
    if info.enabled:
        _check_ranks_identical(task, device)
    result.seconds = time.perf_counter() - t_start
    result.peak_memory_mb = _peak_memory_mb(device)
    if result.finished and info.is_main:
        exported = task.export_backbone  # EMA teacher, or the student when distilling; LoRA is merged on write
        write_export(exported, run_dir / "backbone", preprocessing_from_config(cfg, exported))
    barrier()
    result.preempted = stop.requested
    return result


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    def move(v: Any) -> Any:
        if torch.is_tensor(v):
            return v.to(device, non_blocking=True)
        if isinstance(v, dict):
            return {k: move(x) for k, x in v.items()}
        return v

    return {k: move(v) for k, v in batch.items()}


def _check_ranks_identical(task: Any, device: torch.device) -> None:
    """DDP keeps replicas in sync; verify it (student, EMA teacher, guide heads, centres and prototype
    banks) so that silent divergence cannot go unnoticed."""
    with torch.no_grad():
        local = torch.stack([t.double().sum() for t in [*task.parameters(), *task.buffers()]]).to(device)
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
    if any(not torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError("DDP replicas diverged: parameters or buffers differ across ranks after training")


def _save(
    run_dir: Path, step: int, task: Any, optimizer: torch.optim.Optimizer, cfg: Config, fingerprint: str,
    device: torch.device, info: DistInfo, *, keep: int,
) -> None:
    rng = _gather_rng(device)  # collective: every rank takes part
    if info.is_main:
        state = {
            "task": task.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng,
            "config": config_to_dict(cfg),
            "backbone_config": task.student.backbone.config_dict(),
            "data_fingerprint": fingerprint,
        }
        save_checkpoint(run_dir, step, state, keep=keep)
    barrier()
