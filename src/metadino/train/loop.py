"""The training loop: schedule -> forward -> finite check -> backward -> clip -> step -> commit -> log.

It reads only a built :class:`~metadino.train.run.Run` (``train/run.py`` builds it from the config). Exact resume:
model, teacher, optimizer, centering buffers and every rank's torch RNG are in the checkpoint; schedules are
functions of the step and the data order/augmentations are functions of (seed, step, slot), so
``2N steps == N steps + exit + resume + N steps`` bit for bit on CPU.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from metadino.config import Config
from metadino.errors import UserError
from metadino.models.directory import write_export
from metadino.train.checkpoint import save_checkpoint
from metadino.train.distributed import all_ranks_true, barrier
from metadino.train.log import StepLog
from metadino.train.optim import apply_optim_schedule
from metadino.train.rng import gather_rng
from metadino.train.run import Run, build_run
from metadino.train.stop import StopRequest

__all__ = ["TrainResult", "TrainingDiverged", "fit", "train"]


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
    return fit(build_run(cfg, run_dir, resume=resume, stop_after=stop_after), progress=progress)


def fit(run: Run, *, progress: bool = True) -> TrainResult:
    """Drive `run` from its start step to its end step (or a stop request); export the backbone when finished."""
    task, optimizer = run.task, run.optimizer
    if progress and run.dist.is_main:
        print(run.summary, file=sys.stderr)
    guide_columns = tuple(task.guides.specs) if task.guides is not None else ()
    log = StepLog(run.dir / "metrics.jsonl", start_step=run.start_step, end_step=run.end_step, log_every=run.log_every,
                  global_batch=run.global_batch, device=run.device, is_main=run.dist.is_main, progress=progress,
                  watch=run.watch, guide_columns=guide_columns)
    t_start = time.perf_counter()
    task.train()
    step = run.start_step
    with StopRequest() as stop, log:
        for batch in run.batches:
            sched = run.schedule(step)
            apply_optim_schedule(optimizer, lr=sched["lr"], weight_decay=sched["weight_decay"],
                                 last_layer_lr=sched["last_layer_lr"], backbone_scale=sched["backbone_scale"])
            with run.autocast():
                out = task.training_step(batch.to(run.device, non_blocking=True), teacher_temp=sched["teacher_temp"], step=step,
                                         guide_lambda=sched["guide_lambda"])
            if not all_ranks_true(bool(torch.isfinite(out.loss).item()), run.device):
                breakdown = ", ".join(f"{k}={v.item():.4g}" for k, v in out.terms.items())
                raise TrainingDiverged(
                    f"training stopped at step {step}: the loss is not finite ({breakdown}); the last checkpoint in "
                    f"'{run.dir / 'checkpoints'}' is intact. Lower optim.lr, use train.precision=fp32, or check the images."
                )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()  # type: ignore[no-untyped-call]  # torch.Tensor.backward is unannotated
            grad_norms = _clip(run.clip_groups, run.clip_grad)
            optimizer.step()
            task.commit(sched["momentum"])
            step += 1
            log.step(step, out, sched, grad_norms)
            stop_now = not all_ranks_true(not stop.requested, run.device)
            if step % run.checkpoint_every == 0 or step == run.end_step or stop_now:
                _save(run, step)
            if stop_now:
                break
    if run.dist.enabled:
        _check_ranks_identical(task, run.device)
    result = TrainResult(run.dir, run.start_step, step, run.total_steps, time.perf_counter() - t_start, log.first_loss,
                         log.last_loss, log.history, _peak_memory_mb(run.device), stop.requested, run.trainable_params,
                         run.total_params)
    if result.finished and run.dist.is_main:
        # the EMA teacher, or the student when distilling; LoRA is merged on write
        write_export(task.export_backbone, run.dir / "backbone", run.preprocessing)
    barrier()
    return result


def _clip(groups: dict[str, list[torch.nn.Parameter]], max_norm: float) -> dict[str, float]:
    """Clip each group's gradient norm to `max_norm` (0: no clipping); returns the norms before clipping."""
    limit = max_norm if max_norm > 0 else math.inf
    return {f"grad_norm/{name}": float(torch.nn.utils.clip_grad_norm_(params, limit)) for name, params in groups.items()
            if params}


def _save(run: Run, step: int) -> None:
    rng = gather_rng(run.device)  # collective: every rank takes part
    if run.dist.is_main:
        state = {"task": run.task.state_dict(), "optimizer": run.optimizer.state_dict(), "rng": rng, **run.checkpoint_meta}
        save_checkpoint(run.dir, step, state, keep=run.keep_checkpoints)
    barrier()


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _check_ranks_identical(task: torch.nn.Module, device: torch.device) -> None:
    """DDP keeps replicas in sync; verify it (student, EMA teacher, guide heads, centres and prototype banks) so
    that silent divergence cannot go unnoticed."""
    with torch.no_grad():
        local = torch.stack([t.double().sum() for t in [*task.parameters(), *task.buffers()]]).to(device)
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, local)
    if any(not torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError("DDP replicas diverged: parameters or buffers differ across ranks after training")
