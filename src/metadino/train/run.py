"""A built run: everything the loop drives, assembled from the config in one place (:func:`build_run`).

The loop (``train/loop.py``) reads only a :class:`Run`, never the config. Building follows a fixed order that
exact resume depends on: shared seed -> initial weights and heads on every rank -> (resume: saved states and
RNG | new: per-rank seed) -> data loader (its own generator, so loader start-up never touches the global RNG).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from metadino.config import (
    RESUMABLE_CHANGES,
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
    read_yaml,
    save_config,
)
from metadino.data.batch import Batch
from metadino.data.dataset import SSLDataset, StepSampler, collate_crops
from metadino.data.preflight import (
    SKIPPED_ROWS_FILE,
    BadRow,
    Preflight,
    available_cores,
    check_images,
    write_skipped_rows,
)
from metadino.data.regions import load_regions
from metadino.data.table import MetadataTable, load_table
from metadino.data.targets import ColumnEncoder, TableTargets, save_vocab
from metadino.device import resolve_device, usable_cores
from metadino.errors import UserError
from metadino.models.adapt import count_parameters
from metadino.models.preprocessing import Preprocessing
from metadino.train.checkpoint import list_checkpoints, load_latest_checkpoint, remove_orphans
from metadino.train.distributed import DistInfo, all_ranks_true, barrier, init_distributed
from metadino.train.factory import (
    adapt_backbone,
    build_augmentation,
    build_backbone_from_config,
    build_encoders,
    build_guides,
    build_layout,
    build_optimizer,
    build_read_options,
    build_schedule,
    build_task,
    preprocessing_from_config,
    resolve_num_workers,
)
from metadino.train.fsdp import is_sharded, load_full, load_sharded, shard_task
from metadino.train.lock import RunLock
from metadino.train.provenance import provenance
from metadino.train.rng import restore_rng
from metadino.train.schedules import StepSchedule
from metadino.train.task import SSLTask
from metadino.train.watch import DataWaitWatch, UniformTargetWatch

__all__ = ["RUN_MARKER", "Run", "build_run", "saved_config"]

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
RUN_MARKER = ".metadino-run"  # a folder holding it is a run directory (train may write into it)
STALE_ON_RESTART = ("metrics.jsonl", SKIPPED_ROWS_FILE)  # an earlier run's log when it never reached a checkpoint


@dataclass
class Run:
    """What one training process drives: the task, its optimizer and schedule, the batches, the steps to run,
    and what a checkpoint and the final export record."""

    dir: Path
    device: torch.device
    dist: DistInfo
    task: SSLTask
    optimizer: torch.optim.Optimizer
    schedule: StepSchedule
    batches: Iterable[Batch]
    autocast: Callable[[], AbstractContextManager[Any]]
    clip_groups: dict[str, list[torch.nn.Parameter]]
    clip_grad: float  # 0: no clipping (norms are still logged)
    start_step: int
    end_step: int
    total_steps: int
    global_batch: int
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    checkpoint_meta: dict[str, Any]  # config, backbone config, data fingerprint: saved with every checkpoint
    preprocessing: Preprocessing  # written next to the exported backbone
    watch: UniformTargetWatch | None  # the DINO term's ln K watch (None when the DINO term is off)
    trainable_params: int
    total_params: int
    summary: str  # one line for the console: what trains
    lock: RunLock | None = None  # held by the main process while the run writes (released by the loop)
    on_nonfinite: str = "stop"  # or "skip" (up to max_skipped_steps)
    max_skipped_steps: int = 0
    skipped_steps: int = 0  # non-finite steps skipped before this process (from the checkpoint): one budget per run
    table: MetadataTable | None = None  # the training rows: the divergence message names a batch's rows
    scaler: torch.amp.GradScaler | None = None  # fp16: the dynamic loss scale (its state is in every checkpoint)
    tensorboard_dir: Path | None = None  # train.log_to: tensorboard -> RUN_DIR/tensorboard
    sharded: bool = False  # FSDP: checkpoints are DCP folders, the export gathers the full teacher first
    rebuild_backbone: Callable[[], Any] | None = None  # FSDP: an unsharded backbone to load the gathered export into
    data_position: int = 0  # batches used before this process: the step, plus fp16 overflow steps (their batches)
    data_watch: DataWaitWatch | None = None  # on an accelerator: warns once when the steps wait for the loader


def _check_run_dir(run_dir: Path, *, resume: bool, stop_after: int | None) -> None:
    if stop_after is not None and stop_after < 1:
        raise UserError(f"--stop-after must be at least 1, got {stop_after}.")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out '{run_dir}' is a file; give a folder for the run.")
    has_run = bool(list_checkpoints(run_dir)) if run_dir.exists() else False
    if resume and not has_run:
        raise UserError(f"--resume was given but '{run_dir}' holds no checkpoint to resume from.")
    if not resume and has_run:
        raise UserError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --out.")
    if not resume and run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / RUN_MARKER).is_file():
        raise UserError(f"--out '{run_dir}' is not empty and holds no metadino run; choose another --out (a run never "
                        "writes into a folder of yours).")


def _open_run_dir(run_dir: Path, *, resume: bool) -> RunLock:
    """Create the run directory, mark it as a run and lock it. A fresh run in the folder of one that was killed
    before its first checkpoint starts clean: the earlier run's log and manifests go (nothing else is touched)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        (run_dir / RUN_MARKER).write_text("written by metadino train; the run's files are listed in README.md\n")
    except OSError as e:
        raise UserError(f"cannot write the run directory '{run_dir}': {e.strerror or e}; choose a writable --out.") from None
    if not resume and list_checkpoints(run_dir):  # another run got here first (checked again under the lock)
        lock.release()
        raise UserError(f"'{run_dir}' already holds a run; pass --resume to continue it or choose another --out.")
    if not resume:
        for name in STALE_ON_RESTART:
            (run_dir / name).unlink(missing_ok=True)
    remove_orphans(run_dir)
    for leftover in [*run_dir.glob(".backbone.tmp-*"), *run_dir.glob(".backbone.old-*")]:  # a killed final export
        shutil.rmtree(leftover, ignore_errors=True)
    return lock


def saved_config(run_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """The config `run_dir` was started with (its config.yaml) plus `overrides`: what ``--resume`` continues, so the
    command line need not repeat the original config file and overrides."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"'{run_dir}' has no config.yaml to resume with; give the CONFIG file it was started with.")
    data = read_yaml(path)
    data.pop("_run", None)  # provenance, not config
    return config_from_dict(apply_overrides(data, list(overrides)))


def _check_resume_compatible(saved: dict[str, Any], cfg: Config, run_dir: Path, table: MetadataTable,
                             world_size: int = 1) -> None:
    changed = [k for k in diff_configs(saved["config"], config_to_dict(cfg)) if k not in RESUMABLE_CHANGES]
    saved_global = int(saved["config"]["train"]["batch_size"]) * len(saved.get("rng", [None]))
    if saved.get("sharded") and "train.batch_size" in changed and saved_global == cfg.train.batch_size * world_size:
        changed.remove("train.batch_size")  # FSDP on another number of ranks, the same global batch: the same data
    if changed:
        shown = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
        raise UserError(
            f"cannot resume '{run_dir}' with a different configuration: these keys differ from the saved run: {shown}; "
            f"revert them or start a new run with another --out (only {', '.join(sorted(RESUMABLE_CHANGES))} may change)."
        )
    if saved.get("data_fingerprint") not in (table.fingerprint(), table.legacy_fingerprint()):
        raise UserError(
            f"cannot resume '{run_dir}': the table '{table.source}' or its row selection changed since the run started; "
            "restore it or start a new run with another --out."
        )


def _load_data(cfg: Config, device: torch.device, *,
               progress: bool = True) -> tuple[MetadataTable, dict[str, ColumnEncoder], Any, list[BadRow]]:
    """The table, the encoders of guided columns, the label-guided regions and the rows skipped for bad images
    (``data.bad_images: skip``; the caller lists them in the run directory): every data error (file, row, column,
    image) surfaces here, before any compute.

    The files are checked once per node: the node's first process stats and decodes them on all the node's cores and
    writes the pre-check cache; the other processes wait for it and read the cache. A data error stops every rank."""
    d, lg = cfg.data, cfg.crops.label_guided
    first_on_node = int(os.environ.get("LOCAL_RANK", "0")) == 0
    main = int(os.environ.get("RANK", "0")) == 0
    options = build_read_options(cfg)

    def check(table: MetadataTable) -> Preflight:
        return check_images(table, in_chans=cfg.model.in_chans, policy=d.bad_images, max_bad_fraction=d.max_bad_fraction,
                            options=options, global_size=cfg.crops.global_size, batch_size=cfg.train.batch_size,
                            workers=available_cores(), progress=None if main and progress else False)

    failed: UserError | None = None
    checked = None
    try:
        table = load_table(d.table, root=d.root, rows=d.rows, missing_values=d.missing_values, layout=build_layout(cfg),
                           read=options, check_files=first_on_node)
        encoders = build_encoders(cfg, table)  # column errors first: they cost no decoding
        if first_on_node:
            checked = check(table)
    except UserError as e:
        failed = e
    if not all_ranks_true(failed is None, device):  # every rank stops, rather than waiting for one that stopped
        raise failed or UserError("another process of this run found a problem with the data (its message says what).")
    if checked is None:
        checked = check(table)  # the node's first process has checked every file: this reads its cache
    if main:
        for line in checked.warnings:
            print(line, file=sys.stderr)
    if checked.bad:  # skipped (strict has raised): the rows trained on are the table's fingerprint from here on
        table = checked.table
        encoders = build_encoders(cfg, table)
    regions = None
    if lg.share > 0:
        regions = load_regions(table, bbox_columns=lg.bbox_columns, mask_column=lg.mask_column, root=d.root)
    return table, encoders, regions, checked.bad


def _build_task(cfg: Config, encoders: dict[str, ColumnEncoder], device: torch.device) -> SSLTask:
    torch.manual_seed(cfg.train.seed)  # identical initial weights (and prototype banks) on every rank
    backbone = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size)
    for key, size in (("crops.global_size", cfg.crops.global_size), ("crops.local_size", cfg.crops.local_size)):
        if size % backbone.patch_size:
            raise UserError(f"config key '{key}': {size} is not a multiple of the backbone's patch size {backbone.patch_size}.")
    guides = build_guides(cfg, encoders, embed_dim=backbone.embed_dim, dino_out_dim=cfg.ssl.head.out_dim)
    return build_task(cfg, backbone, guides).to(device)


def _restore(run_dir: Path, task: SSLTask, optimizer: torch.optim.Optimizer, cfg: Config, table: MetadataTable,
             device: torch.device, info: DistInfo, scaler: torch.amp.GradScaler | None) -> tuple[int, int, int]:
    """Load the newest checkpoint into `task`, `optimizer` and `scaler`, restore this rank's RNG; returns its step,
    the number of non-finite steps skipped so far and the data position (batches used)."""
    sharded_task = is_sharded(task)
    state = load_latest_checkpoint(run_dir, gather=not sharded_task)
    _check_resume_compatible(state, cfg, run_dir, table, info.world_size)
    if "sharded_path" in state:  # this run's shards read their part of an FSDP checkpoint (any number of ranks)
        load_sharded(state["sharded_path"], task, optimizer)
    elif state.get("sharded"):  # an FSDP checkpoint gathered for one unsharded process
        load_full(task, optimizer, state["task"], state["optimizer"])
    else:
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    if len(rng) != info.world_size and not state.get("sharded"):
        raise UserError(f"cannot resume '{run_dir}' exactly: it was saved with {len(rng)} process(es), now {info.world_size}; "
                        "a run with train.parallel: fsdp can continue on another number of processes.")
    if info.rank < len(rng):
        restore_rng(rng[info.rank], device)
    else:  # a rank the saved run did not have: its own streams (drop-path draws are per rank anyway)
        torch.manual_seed(cfg.train.seed + 1_000_003 * (info.rank + 1) + int(state["step"]))
    step = int(state["step"])
    return step, int(state.get("skipped_steps", 0)), int(state.get("data_position", step))


def _loader(cfg: Config, table: MetadataTable, encoders: dict[str, ColumnEncoder], regions: Any, patch_size: int,
            device: torch.device, info: DistInfo, start: int, end_step: int, workers: int) -> DataLoader[Any]:
    """Batches from data position `start`; under fp16 without end (an overflow step uses a batch, not a step: the
    loop stops at its end step)."""
    t = cfg.train
    sampler = StepSampler(len(table), batch_size=t.batch_size, total_steps=None if t.precision == "fp16" else end_step,
                          seed=t.seed, start_step=start, rank=info.rank, world_size=info.world_size)
    targets = TableTargets.from_table(table, encoders) if encoders else None
    dataset = SSLDataset(table, build_augmentation(cfg, patch_size), seed=t.seed, in_chans=cfg.model.in_chans,
                         targets=targets, regions=regions, options=build_read_options(cfg))
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_crops,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global RNG untouched by loader start-up (exact resume)
        prefetch_factor=2 if workers > 0 else None,
    )


def _summary(task: SSLTask, cfg: Config) -> tuple[int, int, str]:
    trainable, total = count_parameters([task.student] + ([task.guides] if task.guides is not None else []))
    bb_trainable, bb_total = count_parameters(task.student.backbone)
    line = (f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%); "
            f"backbone {bb_trainable:,} of {bb_total:,} (adapt.mode: {cfg.adapt.mode})")
    return trainable, total, line


def build_run(cfg: Config, run_dir: str | Path, *, resume: bool = False, stop_after: int | None = None,
              progress: bool = True) -> Run:
    """Everything `train` needs, from the config: checks the output folder, loads and checks the data, builds the
    task, optimizer and schedule, restores a checkpoint (``resume``), writes config.yaml and vocab.json."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir, resume=resume, stop_after=stop_after)
    device = resolve_device(cfg.train.device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    info = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    table, encoders, regions, skipped = _load_data(cfg, device, progress=progress)
    task = _build_task(cfg, encoders, device)
    sharded = cfg.train.parallel == "fsdp" and info.enabled
    if sharded:  # before the optimizer: sharding replaces the parameters by DTensors
        shard_task(task, precision=cfg.train.precision, reshard_after_forward=cfg.train.fsdp_reshard_after_forward)
    if cfg.train.compile:
        task.compile_backbones()
    optimizer = build_optimizer(cfg, task)
    trainable, total_params, summary = _summary(task, cfg)
    scaler = _grad_scaler(device, sharded) if cfg.train.precision == "fp16" else None
    if resume:
        start_step, skipped_steps, data_position = _restore(run_dir, task, optimizer, cfg, table, device, info, scaler)
    else:
        start_step, skipped_steps, data_position = 0, 0, 0
        torch.manual_seed(cfg.train.seed + 1_000_003 * (info.rank + 1))  # per-rank drop-path streams, after the init
    total = cfg.train.steps
    end_step = min(total, stop_after) if stop_after is not None else total
    fingerprint = table.fingerprint()
    lock, failed = None, None
    if info.is_main:
        try:
            lock = _open_run_dir(run_dir, resume=resume)
            if skipped:
                write_skipped_rows(run_dir / SKIPPED_ROWS_FILE, skipped)
            save_config(cfg, run_dir / "config.yaml", provenance(fingerprint, info.world_size))
            if encoders:
                save_vocab(run_dir / "vocab.json", encoders)
        except UserError as e:
            failed = e
    if not all_ranks_true(failed is None, device):  # every rank stops, rather than waiting for rank 0 forever
        raise failed or UserError(f"the main process could not open the run directory '{run_dir}' (its message says why).")
    barrier()
    if info.enabled and not sharded:
        task.prepare_distributed(device)

    precision = cfg.train.precision
    workers = resolve_num_workers(cfg, device)
    return Run(
        dir=run_dir, device=device, dist=info, task=task, optimizer=optimizer, schedule=build_schedule(cfg),
        batches=_loader(cfg, table, encoders, regions, task.student.backbone.patch_size, device, info, data_position,
                        end_step, workers),
        autocast=lambda: torch.autocast(device_type=device.type, dtype=_AUTOCAST.get(precision, torch.float32),
                                        enabled=precision in _AUTOCAST),
        clip_groups=task.clip_groups(), clip_grad=cfg.optim.clip_grad,
        start_step=start_step, end_step=end_step, total_steps=total, global_batch=cfg.train.batch_size * info.world_size,
        log_every=cfg.train.log_every, checkpoint_every=cfg.train.checkpoint_every, keep_checkpoints=cfg.train.keep_checkpoints,
        checkpoint_meta={"config": config_to_dict(cfg), "backbone_config": task.student.backbone.config_dict(),
                         "data_fingerprint": fingerprint},
        preprocessing=preprocessing_from_config(cfg, task.export_backbone),
        watch=UniformTargetWatch(cfg.ssl.head.out_dim, window=min(100, max(total // 4, 10)))
        if cfg.ssl.dino_loss_weight > 0 else None,
        trainable_params=trainable, total_params=total_params, summary=summary, lock=lock,
        on_nonfinite=cfg.train.on_nonfinite, max_skipped_steps=cfg.train.max_skipped_steps, table=table,
        skipped_steps=skipped_steps, scaler=scaler, data_position=data_position, sharded=sharded,
        tensorboard_dir=run_dir / "tensorboard" if "tensorboard" in cfg.train.log_to else None,
        rebuild_backbone=(lambda: _unsharded_export_backbone(cfg)) if sharded else None,
        data_watch=_data_watch(device, workers),
    )


def _data_watch(device: torch.device, workers: int) -> DataWaitWatch | None:
    """On a GPU (or MPS) a step that waits for data wastes the device: watch for it. On a CPU the loader and the model
    share the cores, so waiting is expected and only logged (data_wait_share)."""
    if device.type == "cpu":
        return None
    return DataWaitWatch(workers, usable_cores())


def _grad_scaler(device: torch.device, sharded: bool) -> torch.amp.GradScaler:
    """fp16's dynamic loss scale. Sharded: each rank sees only its shards' gradients, so whether one overflowed is
    agreed across ranks (ShardedGradScaler all-reduces it) and every rank keeps the same scale."""
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


def _unsharded_export_backbone(cfg: Config) -> Any:
    """A fresh, unsharded backbone of the run's architecture, LoRA adapters included (the FSDP export loads the
    gathered weights into it, then merges them)."""
    backbone = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size)
    adapt_backbone(cfg, backbone)
    return backbone
