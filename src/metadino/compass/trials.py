"""Running the compass's trials: what each trial directory already holds (done, evaluate only, resume, new), one
trial (train + evaluate on the validation rows), and the scheduler (in this process on one device; with several
devices, one worker per device, each trial in a fresh process on its device).

Each trial is an ordinary run directory (``metadino train`` could resume it, ``metadino eval`` could read it);
``compass-trial.json`` in it, written last and atomically, marks it finished and holds its scores.
"""

from __future__ import annotations

import json
import queue
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from metadino.compass.plan import Plan, config_digest
from metadino.config import config_from_dict
from metadino.config.loader import read_yaml
from metadino.errors import UserError
from metadino.files import atomic_write_text
from metadino.train.checkpoint import list_checkpoints

RECORD = "compass-trial.json"
ERROR = "compass-error.txt"
REPORT = "report"  # the trial's evaluation folder inside its run directory


class SweepStopped(UserError):
    """A trial stopped before its last step (Ctrl-C / SIGTERM): rerun the same command to resume."""


@dataclass(frozen=True)
class TrialJob:
    """Everything one trial needs, as plain data (it travels to a worker process)."""

    name: str
    column: str | None
    role: str | None
    seed: int
    dir: Path
    config: dict[str, Any]
    digest: str
    label_column: str
    train_rows: dict[str, Any]
    val_rows: dict[str, Any]
    group_column: str | None
    metrics: tuple[str, ...]


@dataclass
class TrialState:
    status: str  # done | evaluate | resume | new
    step: int = 0  # steps already trained (the newest checkpoint's)
    record: dict[str, Any] | None = None


@dataclass
class Outcome:
    job: TrialJob
    status: str  # done | skipped | failed
    record: dict[str, Any] | None = None
    error: str = ""
    device: str = ""
    started: float = 0.0
    ended: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def jobs_of(plan: Plan) -> list[TrialJob]:
    return [TrialJob(name=t.name, column=t.column, role=t.role, seed=t.seed, dir=plan.trial_dir(t),
                     config=plan.trial_config(t), digest=plan.digest(t), label_column=plan.label_column,
                     train_rows=plan.train_rows, val_rows=plan.val_rows, group_column=plan.group_column,
                     metrics=plan.metrics) for t in plan.trials]


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.split("_")[-1])
    except ValueError:
        return 0


def trial_state(job: TrialJob) -> TrialState:
    """What `job.dir` holds. A trial run with another config is refused (never reused, never overwritten)."""
    record_path = job.dir / RECORD
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("digest") != job.digest:
            raise UserError(f"trial '{job.dir}' was run with another config than this sweep's (other --steps, "
                            "config or overrides?); use another --out, or delete that trial folder to rerun it.")
        return TrialState("done", int(record.get("steps", 0)), record)
    saved = job.dir / "config.yaml"
    checkpoints = list_checkpoints(job.dir) if job.dir.is_dir() else []
    if not checkpoints:
        return TrialState("new")
    if saved.is_file() and config_digest(read_yaml(saved)) != job.digest:
        raise UserError(f"trial '{job.dir}' was started with another config than this sweep's (other --steps, "
                        "config or overrides?); use another --out, or delete that trial folder to rerun it.")
    if (job.dir / "backbone").is_dir():
        return TrialState("evaluate", int(job.config["train"]["steps"]))
    return TrialState("resume", _step_of(checkpoints[0]))


def _scores(metrics: dict[str, Any], names: Sequence[str]) -> dict[str, float]:
    out = {}
    for name in names:
        probe, key = name.split("/")
        value = metrics.get(probe, {}).get(key)
        if value is not None:
            out[name] = float(value)
    return out


def run_job(job: TrialJob, device: str, *, progress: bool = False) -> dict[str, Any]:
    """Train (or resume) and evaluate one trial on `device`; returns its record (also written to ``RECORD``)."""
    import torch

    from metadino.eval.evaluate import evaluate
    from metadino.export import load_model
    from metadino.train.factory import build_layout, build_read_options
    from metadino.train.loop import train

    state = trial_state(job)
    if state.status == "done" and state.record is not None:
        return state.record
    plain = json.loads(json.dumps(job.config))
    plain["train"]["device"] = device
    cfg = config_from_dict(plain)
    train_seconds, trained = 0.0, 0
    if state.status in ("new", "resume"):
        result = train(cfg, job.dir, resume=state.status == "resume", progress=progress)
        if not result.finished:
            raise SweepStopped(f"trial {job.name} stopped at step {result.end_step} of {result.total_steps} (its "
                               "checkpoint is saved); run the same command again to resume the sweep.")
        train_seconds, trained = result.seconds, result.end_step - result.start_step
    t0 = time.perf_counter()
    threads = torch.get_num_threads()  # the k-NN probe may set OpenMP's thread count process-wide (faiss)
    try:
        metrics = evaluate(
            str(job.dir), partial(load_model, str(job.dir)), table=cfg.data.table, label_column=job.label_column,
            train_rows=job.train_rows, test_rows=job.val_rows, group_column=job.group_column, probes=("knn", "linear"),
            out=job.dir / REPORT, image_column=cfg.data.image_column, root=cfg.data.root, layout=build_layout(cfg),
            read=build_read_options(cfg), device=device, cache_dir=None, seed=job.seed, progress=False, report=False,
            title=f"metadino compass: {job.name}",
        )
    finally:
        torch.set_num_threads(threads)  # the next trial trains with the threads this one did
    record = {
        "trial": job.name, "column": job.column, "role": job.role, "seed": job.seed, "digest": job.digest,
        "steps": int(job.config["train"]["steps"]), "trained_steps": trained, "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2), "device": device,
        "scores": _scores(metrics, job.metrics),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (job.dir / ERROR).unlink(missing_ok=True)
    atomic_write_text(job.dir / RECORD, json.dumps(record, indent=1) + "\n")
    return record


# --------------------------------------------------------------------------------------------- scheduling

Runner = Callable[[TrialJob, str], dict[str, Any]]


def in_process_runner(progress: bool = False) -> Runner:
    """One trial in this process (CPU, or a single device)."""
    return partial(_run_in_process, progress=progress)


def _run_in_process(job: TrialJob, device: str, *, progress: bool) -> dict[str, Any]:
    return run_job(job, device, progress=progress)


def _child(job: TrialJob, device: str) -> None:  # pragma: no cover - runs in a spawned process (GPU machines)
    try:
        run_job(job, device, progress=False)
    except BaseException as e:  # noqa: BLE001 - any failure is reported to the parent through the trial folder
        job.dir.mkdir(parents=True, exist_ok=True)
        text = str(e) if isinstance(e, UserError) else traceback.format_exc()
        (job.dir / ERROR).write_text(f"{type(e).__name__}: {text}\n")
        sys.exit(3 if isinstance(e, SweepStopped) else 1)


def process_runner(job: TrialJob, device: str) -> dict[str, Any]:  # pragma: no cover - needs several GPUs
    """One trial in a fresh (spawned) process on `device`: each process has its own CUDA context, global RNG and
    thread settings, so concurrent trials cannot disturb each other's seeding."""
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=_child, args=(job, device), name=job.name)
    process.start()
    process.join()
    if process.exitcode != 0:
        message = (job.dir / ERROR).read_text().strip() if (job.dir / ERROR).is_file() else f"exit code {process.exitcode}"
        raise (SweepStopped if process.exitcode == 3 else UserError)(f"trial {job.name} on {device}: {message}")
    record: dict[str, Any] = json.loads((job.dir / RECORD).read_text())
    return record


def run_pool(jobs: Sequence[TrialJob], devices: Sequence[str], runner: Runner, *,
             on_event: Callable[[str, Outcome], None] | None = None) -> list[Outcome]:
    """Run `jobs` with at most one at a time per device. One device: in order, in this thread. Several: one worker
    per device takes the next job from the queue. A finished trial is skipped; a failed one (UserError) is
    recorded and the others go on; a stopped one (:class:`SweepStopped`) ends the sweep after the running ones.
    Outcomes come back in the order of `jobs`."""
    if not devices:
        raise ValueError("run_pool needs at least one device")
    outcomes: list[Outcome | None] = [None] * len(jobs)
    stop = threading.Event()
    free: queue.Queue[str] = queue.Queue()
    for d in devices:
        free.put(d)

    def one(i: int) -> None:
        job = jobs[i]
        if stop.is_set():
            return
        state = trial_state(job)
        if state.status == "done":
            outcomes[i] = Outcome(job, "skipped", state.record)
            if on_event:
                on_event("skipped", outcomes[i])  # type: ignore[arg-type]
            return
        device = free.get()
        out = Outcome(job, "done", device=device, started=time.perf_counter(), extra={"state": state.status,
                                                                                      "from_step": state.step})
        try:
            if on_event:
                on_event("start", out)
            out.record = runner(job, device)
        except SweepStopped as e:
            stop.set()
            out.status, out.error = "stopped", str(e)
        except UserError as e:
            out.status, out.error = "failed", str(e)
        finally:
            out.ended = time.perf_counter()
            free.put(device)
        outcomes[i] = out
        if on_event:
            on_event(out.status, out)

    if len(devices) == 1:
        for i in range(len(jobs)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="compass") as pool:
            for future in [pool.submit(one, i) for i in range(len(jobs))]:
                future.result()
    return [o for o in outcomes if o is not None]


# --------------------------------------------------------------------------------------------- estimate

def measured_times(out: Path) -> tuple[float | None, float | None, int]:
    """(median seconds per training step, median seconds per evaluation, trials measured) from the finished trials
    under OUT/trials (any config: a rough guide)."""
    per_step, per_eval = [], []
    for path in sorted((out / "trials").glob(f"*/{RECORD}")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("trained_steps"):
            per_step.append(record["train_seconds"] / record["trained_steps"])
        if record.get("eval_seconds") is not None:
            per_eval.append(float(record["eval_seconds"]))
    return (statistics.median(per_step) if per_step else None, statistics.median(per_eval) if per_eval else None,
            len(per_step))


def estimate(jobs: Sequence[TrialJob], out: Path, devices: Sequence[str], step_seconds: float | None,
             eval_seconds: float | None) -> tuple[list[dict[str, Any]], float | None, str]:
    """Per trial: state, steps left and estimated seconds; the wall-time estimate; how it was estimated."""
    measured_step, measured_eval, n = measured_times(out)
    if step_seconds is not None:
        how = f"configured --step-seconds {step_seconds:g}"
        per_step = step_seconds
    elif measured_step is not None:
        how = f"measured: median {measured_step:.3f} s per step over {n} finished trial(s) in {out / 'trials'}"
        per_step = measured_step
    else:
        how = "no step time known: pass --step-seconds S, or run one trial (its time is measured and used here)"
        per_step = None
    per_eval = eval_seconds if eval_seconds is not None else measured_eval
    if per_step is not None:
        how += (f"; evaluation {per_eval:.1f} s per trial (measured)" if per_eval is not None
                else "; evaluation time not included (not measured yet)")
    rows, total = [], 0.0
    for job in jobs:
        state = trial_state(job)
        steps = int(job.config["train"]["steps"])
        left = 0 if state.status in ("done", "evaluate") else steps - state.step
        seconds = None
        if per_step is not None:
            seconds = 0.0 if state.status == "done" else left * per_step + (per_eval or 0.0)
            total += seconds
        rows.append({"trial": job.name, "state": state.status, "steps_left": left, "seconds": seconds})
    wall = None if per_step is None else total / max(1, len(devices))
    if wall is not None and len(devices) > 1:
        how += f"; wall time = total / {len(devices)} devices"
    return rows, wall, how


__all__ = ["RECORD", "REPORT", "Outcome", "Runner", "SweepStopped", "TrialJob", "TrialState", "estimate",
           "in_process_runner", "jobs_of", "measured_times", "process_runner", "run_job", "run_pool", "trial_state"]
