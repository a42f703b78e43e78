"""The training loop: schedule -> forward -> finite check -> backward -> clip -> step -> commit -> log.

It reads only a built :class:`~metadino.train.run.Run` (``train/run.py`` builds it from the config). Exact resume:
model, teacher, optimizer, centering buffers and every rank's torch RNG are in the checkpoint; schedules are
functions of the step and the data order/augmentations are functions of (seed, step, slot), so
``2N steps == N steps + exit + resume + N steps`` bit for bit on CPU.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from metadino.config import Config
from metadino.data.batch import Batch
from metadino.errors import UserError
from metadino.models.directory import write_export
from metadino.train.checkpoint import (
    SCHEMA_VERSION,
    checkpoint_dir,
    list_checkpoints,
    point_latest,
    save_checkpoint,
    sharded_checkpoint_path,
)
from metadino.train.distributed import all_ranks_finite, barrier
from metadino.train.fsdp import full_state_dict, save_sharded
from metadino.train.log import StepLog
from metadino.train.optim import apply_optim_schedule
from metadino.train.rng import gather_rng
from metadino.train.run import Run, build_run
from metadino.train.stop import StopRequest
from metadino.train.task import StepOutput

__all__ = ["MAX_OVERFLOWS_IN_A_ROW", "TrainResult", "TrainingDiverged", "fit", "train"]

# fp16: a loss scale halved this many times in a row (65536 -> ~1e-8) is no longer an overflow but a divergence
MAX_OVERFLOWS_IN_A_ROW = 40


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


def train(cfg: Config, run_dir: str | Path, *, resume: bool = False, stop_after: int | None = None,
          progress: bool = True) -> TrainResult:
    """Train (or continue) a run in `run_dir`. `stop_after` ends cleanly after that step with a checkpoint."""
    return fit(build_run(cfg, run_dir, resume=resume, stop_after=stop_after, progress=progress), progress=progress)


def fit(run: Run, *, progress: bool = True) -> TrainResult:
    """Drive `run` from its start step to its end step (or a stop request); export the backbone when finished."""
    try:
        return _fit(run, progress=progress)
    finally:
        if run.lock is not None:
            run.lock.release()


def _fit(run: Run, *, progress: bool) -> TrainResult:
    task, optimizer = run.task, run.optimizer
    if progress and run.dist.is_main:
        print(run.summary, file=sys.stderr)
    guide_columns = tuple(task.guides.specs) if task.guides is not None else ()
    log = StepLog(run.dir / "metrics.jsonl", start_step=run.start_step, end_step=run.end_step, log_every=run.log_every,
                  global_batch=run.global_batch, device=run.device, is_main=run.dist.is_main, progress=progress,
                  watch=run.watch, guide_columns=guide_columns, tensorboard=run.tensorboard_dir,
                  data_watch=run.data_watch)
    t_start = time.perf_counter()
    task.train()
    step, skipped, position, overflows = run.start_step, run.skipped_steps, run.data_position, 0
    scaler = run.scaler
    with StopRequest() as stop, log:
        batches = iter(run.batches)
        while step < run.end_step:
            waiting = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            waited = time.perf_counter() - waiting  # the step waited this long for data (logged as a share)
            position += 1
            sched = run.schedule(step)
            apply_optim_schedule(optimizer, lr=sched["lr"], weight_decay=sched["weight_decay"],
                                 last_layer_lr=sched["last_layer_lr"], backbone_scale=sched["backbone_scale"])
            with run.autocast():
                out = task.training_step(batch.to(run.device, non_blocking=True), teacher_temp=sched["teacher_temp"], step=step,
                                         guide_lambda=sched["guide_lambda"])
            optimizer.zero_grad(set_to_none=True)
            loss = out.loss if scaler is None else scaler.scale(out.loss.float())
            loss.backward()  # type: ignore[no-untyped-call]  # torch.Tensor.backward is unannotated
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip and log the true gradients
            grad_norms = _clip(run.clip_groups, run.clip_grad)
            # One host sync per step: the loss and every gradient norm finite, and no stop request, on every rank. A
            # finite loss can still overflow in backward (bf16, fp16): never step on a non-finite gradient.
            device = out.loss.device
            loss_ok, grads_ok, go_on = all_ranks_finite(torch.stack([
                torch.isfinite(out.loss.detach()).all(),
                torch.stack([torch.isfinite(v) for v in grad_norms.values()]).all() if grad_norms
                else torch.tensor(True, device=device),
                torch.tensor(not stop.requested, device=device)]))
            stop_now = not go_on
            finite = loss_ok and grads_ok
            if loss_ok and not grads_ok and scaler is not None:
                # fp16 overflow: nothing moves and the step is not taken; a smaller scale, the next batch
                scaler.update()
                overflows += 1
                if overflows > MAX_OVERFLOWS_IN_A_ROW:
                    raise TrainingDiverged(_divergence_message(run, step, out, batch, skipped))
                log.overflow(step, scaler.get_scale())
                if stop_now:  # the scale and the data position moved: saved with the unchanged weights
                    _save(run, step, skipped, position)
                    break
                continue
            if finite:
                optimizer.step()
                if scaler is not None:
                    scaler.update()
                overflows = 0
                task.commit(sched["momentum"])
                step += 1
                log.step(step, out, sched, grad_norms, data_wait=waited)
            elif run.on_nonfinite == "skip" and skipped < run.max_skipped_steps:
                # nothing moves: no optimizer step, no commit (the forward's pending updates are dropped; the gradients
                # of this step are discarded at the next zero_grad)
                skipped += 1
                step += 1
                log.skipped(step, out, skipped)
            else:
                raise TrainingDiverged(_divergence_message(run, step, out, batch, skipped))
            if step % run.checkpoint_every == 0 or step == run.end_step or stop_now:
                _save(run, step, skipped, position)
            if stop_now:
                break
    if run.dist.enabled:
        _check_ranks_identical(task, run.device, buffers_only=run.sharded)
    result = TrainResult(run.dir, run.start_step, step, run.total_steps, time.perf_counter() - t_start, log.first_loss,
                         log.last_loss, log.history, _peak_memory_mb(run.device), stop.requested, run.trainable_params,
                         run.total_params)
    if result.finished:
        _export(run)
    barrier()
    return result


def _export(run: Run) -> None:
    """RUN_DIR/backbone: the EMA teacher (the student when distilling), LoRA merged. Written beside it and renamed
    into place, so a crash leaves the earlier export or none, never half of one."""
    backbone = run.task.export_backbone
    if run.sharded:  # collective: the full weights gathered on the main process, loaded into an unsharded copy
        assert run.rebuild_backbone is not None  # build_run sets it for every sharded run
        prefix = next(name for name, m in run.task.named_modules() if m is backbone) + "."
        full = full_state_dict(run.task)
        if not run.dist.is_main:
            return
        backbone = run.rebuild_backbone()
        backbone.load_state_dict({k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)})
    elif not run.dist.is_main:
        return
    final = run.dir / "backbone"
    tmp = run.dir / f".backbone.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_export(backbone, tmp, run.preprocessing)
    if final.exists():
        old = run.dir / f".backbone.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _divergence_message(run: Run, step: int, out: StepOutput, batch: Batch, skipped: int) -> str:
    """What happened, what is safe on disk (only what is true), and where to look: the rows of the batch."""
    breakdown = ", ".join(f"{k}={v.item():.4g}" for k, v in out.terms.items())
    saved = list_checkpoints(run.dir)
    kept = (f"the last checkpoint ('{saved[0].name}') is intact" if saved
            else "no checkpoint had been written yet")
    rows = ""
    if run.table is not None and batch.index is not None:
        index = batch.index.tolist()
        shown = [f"row {run.table.row_numbers[i]} ({run.table.paths[i].name})" for i in index[:8]]
        more = f" and {len(index) - 8} more" if len(index) > 8 else ""
        rows = f" The batch held {run.table.source.name} {', '.join(shown)}{more}."
    budget = f" ({skipped} step(s) skipped before, train.max_skipped_steps={run.max_skipped_steps})" if skipped else ""
    hint = "raise train.max_skipped_steps" if run.on_nonfinite == "skip" else "set train.on_nonfinite: skip"
    return (f"training stopped at step {step}: the loss or its gradient is not finite ({breakdown}){budget}; {kept}."
            f"{rows} Lower optim.lr, use train.precision=fp32, check those images and their metadata, or {hint}.")


def _clip(groups: dict[str, list[torch.nn.Parameter]], max_norm: float) -> dict[str, torch.Tensor]:
    """Clip each group's gradient norm to `max_norm` (0: no clipping); returns the norms before clipping, as tensors
    on the device (read on the host only when logged)."""
    limit = max_norm if max_norm > 0 else math.inf
    norms = {f"grad_norm/{name}": torch.nn.utils.clip_grad_norm_(params, limit) for name, params in groups.items()
             if params}
    # FSDP: the norm of sharded gradients is a DTensor (already the global norm); its value as a plain tensor
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in norms.items()}


def _save(run: Run, step: int, skipped: int, position: int) -> None:
    rng = gather_rng(run.device)  # collective: every rank takes part
    if run.sharded:
        _save_sharded(run, step, skipped, position, rng)
        return
    if run.dist.is_main:
        state = {"task": run.task.state_dict(), "optimizer": run.optimizer.state_dict(), "rng": rng,
                 "skipped_steps": skipped, "data_position": position,
                 "scaler": None if run.scaler is None else run.scaler.state_dict(), **run.checkpoint_meta}
        try:
            save_checkpoint(run.dir, step, state, keep=run.keep_checkpoints)
        except (OSError, RuntimeError) as e:  # torch reports a full disk as RuntimeError("... file write failed")
            reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
            kept = list_checkpoints(run.dir)
            then = (f"the earlier checkpoint '{kept[0].name}' is intact: free space and continue with --resume" if kept
                    else "no earlier checkpoint exists: free space and run the same command again")
            raise UserError(f"could not write the checkpoint of step {step} into '{checkpoint_dir(run.dir)}' ({reason}; "
                            f"is the disk full or read-only?); {then}.") from None
    barrier()


def _save_sharded(run: Run, step: int, skipped: int, position: int, rng: Any) -> None:
    """FSDP: every rank writes its shards (a DCP folder), the main process the meta and the `latest` pointer."""
    meta = {"schema_version": SCHEMA_VERSION, "step": step, "rng": rng, "skipped_steps": skipped,
            "data_position": position, "scaler": None if run.scaler is None else run.scaler.state_dict(),
            **run.checkpoint_meta}
    path = sharded_checkpoint_path(run.dir, step)
    try:
        checkpoint_dir(run.dir).mkdir(parents=True, exist_ok=True)
        save_sharded(path, run.task, run.optimizer, meta, is_main=run.dist.is_main)
        if run.dist.is_main:
            point_latest(run.dir, path, keep=run.keep_checkpoints)
    except (OSError, RuntimeError) as e:
        raise UserError(f"could not write the sharded checkpoint of step {step} into '{path}' "
                        f"({getattr(e, 'strerror', None) or str(e).strip().splitlines()[0]}); free space and resume.") from None
    barrier()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _check_ranks_identical(task: torch.nn.Module, device: torch.device, *, buffers_only: bool = False) -> None:
    """DDP keeps replicas in sync; verify it (student, EMA teacher, guide heads, centres and prototype banks) so
    that silent divergence cannot go unnoticed. Under FSDP each rank holds other shards of the parameters: the
    replicated state (centres, prototype banks, batch-norm statistics) is checked."""
    tensors = [*task.buffers()] if buffers_only else [*task.parameters(), *task.buffers()]
    if not tensors:
        return
    with torch.no_grad():
        local = torch.stack([t.double().sum() for t in tensors]).to(device)
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
    if any(not torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError("DDP replicas diverged: parameters or buffers differ across ranks after training")
