"""What a run shows and records per step: the progress bar, ``metrics.jsonl``, the history and the ln K watch."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import torch
from tqdm import tqdm

from metadino.errors import UserError
from metadino.files import atomic_write_text
from metadino.train.distributed import mean_across_ranks
from metadino.train.task import StepOutput
from metadino.train.watch import DataWaitWatch, UniformTargetWatch

__all__ = ["StepLog"]


class StepLog:
    """Every `log_every` steps (and at the last one) one record — loss terms, metrics averaged over ranks, scheduled
    values, gradient norms, images/s — goes to the history, to ``metrics.jsonl`` (main process) and to the bar."""

    def __init__(self, path: Path, *, start_step: int, end_step: int, log_every: int, global_batch: int,
                 device: torch.device, is_main: bool, progress: bool, watch: UniformTargetWatch | None,
                 guide_columns: tuple[str, ...] = (), tensorboard: Path | None = None,
                 data_watch: DataWaitWatch | None = None):
        self.path, self.start_step, self.end_step, self.log_every = path, start_step, end_step, log_every
        self.global_batch, self.device, self.is_main, self.watch = global_batch, device, is_main, watch
        self.guide_columns = set(guide_columns)
        self.data_watch = data_watch
        self.history: list[dict[str, float]] = []
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self._bar = tqdm(total=end_step, initial=start_step, disable=not (progress and is_main), desc="train", unit="step",
                         dynamic_ncols=True, file=sys.stderr)
        self._file: IO[str] | None = None
        self._tensorboard_dir = tensorboard
        self._writer: Any = None  # torch.utils.tensorboard.SummaryWriter on the main process, with train.log_to
        self._t_last = time.perf_counter()
        self._images = 0
        self._waited = 0.0
        self._dino: list[tuple[int, torch.Tensor]] = []  # the DINO term of the steps since the last record
        self._last: torch.Tensor | None = None

    def __enter__(self) -> StepLog:
        if self.is_main:
            self._truncate()
            self._file = open(self.path, "a")
            if self._tensorboard_dir is not None:
                self._writer = open_tensorboard(self._tensorboard_dir, purge_step=self.start_step + 1)
        return self

    def _truncate(self) -> None:
        """Keep only the records up to the step the run (re)starts from: a resumed run logs no step twice (a run
        stopped after its last checkpoint had logged steps that it now repeats)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if int(json.loads(line)["step"]) <= self.start_step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line of a killed run
        atomic_write_text(self.path, "".join(kept))

    def __exit__(self, *exc: Any) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._last is not None:
            self.last_loss = float(self._last)  # the last step's loss, also when it was not a logged step
        self._flush_watch()
        if self._file is not None:
            self._file.close()
        self._bar.close()

    def skipped(self, step: int, out: StepOutput, total_skipped: int) -> None:
        """A non-finite step that was skipped (``train.on_nonfinite: skip``): one record and one line, always."""
        terms = {k: float(v.detach()) for k, v in out.terms.items()}
        record = {"step": step, "skipped": 1.0, "skipped_total": float(total_skipped), **terms}
        self.history.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self.is_main:
            tqdm.write(f"warning: step {step} skipped, its loss is not finite ({total_skipped} skipped so far)", file=sys.stderr)
        self._bar.update(1)

    def overflow(self, step: int, scale: float) -> None:
        """An fp16 step whose gradients overflowed: skipped, the loss scale lowered to `scale` (one record)."""
        record = {"step": step, "overflow": 1.0, "loss_scale": float(scale)}
        self.history.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def step(self, step: int, out: StepOutput, sched: dict[str, float], grad_norms: dict[str, torch.Tensor], *,
             data_wait: float = 0.0) -> None:
        """After optimizer step `step` (1-based count of steps done); `data_wait`: seconds it waited for its batch.

        Values stay on the device between records (no host sync per step): the ln K watch is fed and the last loss
        read when a record is written."""
        self._images += self.global_batch
        self._waited += data_wait
        if self.watch is not None:
            self._dino.append((step, out.terms["dino"].detach()))
        self._last = out.loss.detach()
        if self.first_loss is None:
            self.first_loss = float(self._last)
        self._bar.update(1)
        if step % self.log_every == 0 or step == self.end_step:
            self._flush_watch()
            self._record(step, out, sched, grad_norms)

    def _flush_watch(self) -> None:
        if self.watch is None or not self._dino:
            return
        values = torch.stack([t.float() for _, t in self._dino]).tolist()  # one sync for the window
        for (step, _), value in zip(self._dino, values):
            warning = self.watch.update(step, value)
            if warning and self.is_main:
                tqdm.write(warning, file=sys.stderr)
        self._dino.clear()

    def _record(self, step: int, out: StepOutput, sched: dict[str, float], grad_norms: dict[str, torch.Tensor]) -> None:
        now = time.perf_counter()
        self.last_loss = float(out.loss.detach())
        norms = dict(zip(grad_norms, torch.stack(list(grad_norms.values())).float().tolist())) if grad_norms else {}
        values = {k: float(v.detach()) for k, v in out.terms.items()}
        values = mean_across_ranks({**values, **{k: float(v) for k, v in out.metrics.items()}}, self.device)
        elapsed = max(now - self._t_last, 1e-9)
        record = {"step": step, **values, **sched, **norms, "images_per_s": self._images / elapsed,
                  "data_wait_share": min(self._waited / elapsed, 1.0)}
        self._t_last, self._images, self._waited = now, 0, 0.0
        if self.data_watch is not None:
            warning = self.data_watch.update(step, record["data_wait_share"])
            if warning and self.is_main:
                tqdm.write(warning, file=sys.stderr)
        self.history.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._writer is not None:
            for name, value in record.items():
                if name != "step":
                    self._writer.add_scalar(_tensorboard_tag(name), value, step)
            self._writer.flush()
        postfix = {"loss": f"{values['total']:.3f}", "img_s": f"{record['images_per_s']:.1f}", "lr": f"{sched['lr']:.2e}"}
        if self.guide_columns:
            postfix["λ"] = f"{sched['guide_lambda']:.2f}"
            # the guide columns' own terms only (not guide/lambda or guide/grad_norm_target)
            postfix.update({name[len("guide/"):]: f"{value:.3f}" for name, value in values.items()
                            if name.startswith("guide/") and name[len("guide/"):] in self.guide_columns})
        self._bar.set_postfix(postfix)


def open_tensorboard(folder: Path, *, purge_step: int) -> Any:
    """A SummaryWriter into `folder`; events after `purge_step` from an earlier (resumed) run are dropped."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch ships the writer, tensorboard the event format
        raise UserError("train.log_to includes tensorboard, but the tensorboard package is not installed; "
                        "`pip install tensorboard` or remove it from train.log_to") from err
    return SummaryWriter(log_dir=str(folder), purge_step=purge_step)


def _tensorboard_tag(name: str) -> str:
    """Group the scalars: losses/…, guide/…, schedule/…, grad_norm/…, data/…."""
    if "/" in name:
        return name
    if name in ("lr", "weight_decay", "momentum", "teacher_temp", "last_layer_lr", "backbone_scale", "guide_lambda"):
        return f"schedule/{name}"
    if name in ("images_per_s", "data_wait_share"):
        return f"data/{name}"
    return f"loss/{name}"
