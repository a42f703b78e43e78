"""`metadino compass`: measure, per metadata column, what encouraging it and suppressing it does — FINO's
per-factor study as one command — and suggest a ``guidance:`` block that follows the measured effects.

For each candidate column and each role (encouraged: a guide head pulls it in; suppressed: gradient reversal pushes
it out), plus one shared run with no guide, a short adaptation from the config's start, same data stream and steps,
seeds paired (trial seed s = ``train.seed`` s in every arm); each evaluated with k-NN and linear probes fitted on
``--train-rows`` and scored on ``--val-rows``. Modules: :mod:`~metadino.compass.plan` (checks, trials, configs),
:mod:`~metadino.compass.trials` (skip / resume, one trial, the device pool, the estimate),
:mod:`~metadino.compass.suggest` (paired effects -> the block), :mod:`~metadino.compass.report` (table, figure,
dependence, warnings).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metadino.compass.plan import Plan, Trial, make_plan, parse_seeds
from metadino.compass.report import build_report
from metadino.compass.trials import (
    Outcome,
    Runner,
    SweepStopped,
    estimate,
    in_process_runner,
    jobs_of,
    process_runner,
    run_pool,
)
from metadino.config import load_config
from metadino.errors import UserError

MARKER = ".metadino-compass"


def compass_devices(train_device: str, requested: Sequence[str] | None = None) -> list[str]:
    """The devices trials run on: `requested`; else every CUDA device when the config says auto/cuda and there
    are several; else the config's one device."""
    import torch

    from metadino.device import resolve_device

    if requested:
        return [str(resolve_device(d, key="--devices")) for d in requested]
    if train_device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [str(resolve_device(train_device))]


def _claim(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a folder for the compass.")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserError(f"--out '{out}' is not empty and was not written by metadino compass; choose another folder.")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by metadino compass; a rerun skips the finished trials under trials/\n")


def run_compass(
    config: str | Path, *, label_column: str, train_rows: Mapping[str, Any], val_rows: Mapping[str, Any],
    out: str | Path, overrides: Sequence[str] = (), columns: Sequence[str] | None = None, steps: int | None = None,
    seeds: Sequence[int] = (0, 1), group_column: str | None = None, metric: str = "knn/accuracy",
    devices: Sequence[str] | None = None, dry_run: bool = False, step_seconds: float | None = None,
    runner: Runner | None = None, progress: bool = True, print_fn: Any = print,
) -> dict[str, Any]:
    """Plan (every check before compute), then either list the trials with an estimate (`dry_run`) or run the ones
    not finished and write the report. `runner` replaces the real trial runner (tests)."""
    t0 = time.perf_counter()
    cfg = load_config(config, overrides)
    out = Path(out)
    plan = make_plan(cfg, label_column=label_column, train_rows=train_rows, val_rows=val_rows, out=out,
                     columns=columns, steps=steps, seeds=seeds, group_column=group_column, metric=metric)
    devs = compass_devices(cfg.train.device, devices)
    jobs = jobs_of(plan)
    if dry_run:
        rows, wall, how = estimate(jobs, out, devs, step_seconds, None)
        print_fn(f"{len(jobs)} trials ({len(plan.columns)} column(s) × 2 roles + no guide, × {len(plan.seeds)} "
                 f"seed(s)), {plan.steps} steps each, on {', '.join(devs)}; candidates: {', '.join(plan.columns)}")
        for r in rows:
            est = "" if r["seconds"] is None else f"  ~{r['seconds']:.0f} s"
            print_fn(f"  {r['trial']:<40} {r['state']:<9} {r['steps_left']:>6} steps left{est}")
        print_fn(f"estimate: {'unknown' if wall is None else f'{wall / 60:.1f} min'} ({how})")
        return {"trials": rows, "estimate_seconds": wall, "how": how, "devices": devs, "columns": plan.columns}
    _claim(out)
    if runner is None:
        runner = in_process_runner(progress) if len(devs) == 1 else process_runner
    total = len(jobs)
    done_count = [0]

    def event(kind: str, o: Outcome) -> None:
        if kind == "start":
            state = o.extra.get("state", "new")
            what = {"resume": f"resuming from step {o.extra.get('from_step')}", "evaluate": "evaluating"}.get(
                state, f"training {o.job.config['train']['steps']} steps")
            print_fn(f"[{done_count[0] + 1}/{total}] {o.job.name} on {o.device}: {what} ...")
            return
        done_count[0] += 1
        if kind == "skipped":
            print_fn(f"[{done_count[0]}/{total}] {o.job.name}: finished earlier, skipped")
        elif kind == "done" and o.record is not None:
            score = o.record["scores"].get(plan.metric)
            print_fn(f"    {o.job.name}: {plan.metric} {score:.3f} ({o.ended - o.started:.0f} s)" if score is not None
                     else f"    {o.job.name}: done")
        else:
            print_fn(f"    {o.job.name}: {kind}: {o.error}")

    outcomes = run_pool(jobs, devs, runner, on_event=event)
    records = {o.job.name: o.record for o in outcomes if o.record is not None}
    failed = {o.job.name: o.error for o in outcomes if o.status == "failed"}
    stopped = [o for o in outcomes if o.status == "stopped"]
    data = build_report(plan, records, config_name=Path(config).name, failed=failed,
                        seconds=time.perf_counter() - t0)
    print_fn(f"\nwrote {out / 'compass.md'}, compass.json, compass.png and guidance.yaml")
    if stopped:
        raise SweepStopped(stopped[0].error)
    return data


__all__ = ["MARKER", "Plan", "Trial", "compass_devices", "make_plan", "parse_seeds", "run_compass"]
