"""The compass's plan: the request checked before any compute, the candidate columns, and one trial per
(column, role, seed) plus the shared no-guide trial per seed, each with its full config.

Pairing: every trial of seed ``s`` is the base config with ``train.seed = s`` (same start, same data stream, same
crops, same steps); the only difference between two trials of one seed is the single guide.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metadino.audit.roles import PROTOTYPICAL_MIN_CLASSES, WEIGHTS, TableAudit, audit_table
from metadino.config import Config, config_from_dict, config_to_dict
from metadino.data.table import MetadataTable, infer_column_kind, load_table
from metadino.data.values import category_label, is_missing
from metadino.errors import UserError
from metadino.train.factory import build_layout, build_read_options

ROLES = ("encouraged", "suppressed")
SCHEMA_ROLE = {"encouraged": "informative", "suppressed": "spurious"}  # compass words -> guidance.guides[].role
CANDIDATE_ROLES = ("informative", "spurious", "review")  # audit roles offered as default candidates
METRICS = ("knn/accuracy", "knn/balanced_accuracy", "knn/macro_f1", "linear/accuracy", "linear/balanced_accuracy",
           "linear/macro_f1")
GROUP_METRICS = ("knn/worst_group_accuracy", "linear/worst_group_accuracy")
# keys that do not change a trial's result (train allows them to change on resume): left out of the digest
NEUTRAL_TRAIN_KEYS = ("device", "num_workers", "checkpoint_every", "keep_checkpoints", "log_every")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Trial:
    """One short adaptation: `column` guided in `role` (None: no guide) from the base config with seed `seed`."""

    column: str | None
    role: str | None  # encouraged | suppressed | None
    seed: int

    @property
    def arm(self) -> str:
        """The arm this trial belongs to: ``none`` or ``<column>-<role>`` (the directory spelling)."""
        return "none" if self.column is None else f"{safe_name(self.column)}-{self.role}"

    @property
    def name(self) -> str:
        return f"{self.arm}-seed{self.seed}"


@dataclass
class Plan:
    """Everything the compass will do, decided (and checked) before any compute."""

    base: Config  # the request's config with --steps applied, its own guides removed
    base_guides: list[dict[str, Any]]  # the config's own guides (their settings are reused per column)
    label_column: str
    train_rows: dict[str, Any]
    val_rows: dict[str, Any]
    group_column: str | None
    columns: list[str]
    seeds: list[int]
    metric: str
    out: Path
    audit: TableAudit
    kinds: dict[str, str]  # column -> categorical | continuous | multilabel
    trials: list[Trial] = field(default_factory=list)
    guides: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (column, role) -> the trial's guide

    @property
    def steps(self) -> int:
        return self.base.train.steps

    @property
    def metrics(self) -> tuple[str, ...]:
        return METRICS + (GROUP_METRICS if self.group_column else ())

    def trial_dir(self, trial: Trial) -> Path:
        return self.out / "trials" / trial.name

    def trial_config(self, trial: Trial) -> dict[str, Any]:
        """The plain config of `trial`: the base, seed `trial.seed`, and its one guide (none for the no-guide run)."""
        cfg = config_to_dict(self.base)
        cfg["train"]["seed"] = trial.seed
        cfg["guidance"]["guides"] = ([] if trial.column is None or trial.role is None
                                     else [copy.deepcopy(self.guides[(trial.column, trial.role)])])
        return cfg

    def digest(self, trial: Trial) -> str:
        """What makes a finished trial reusable: its config minus the keys that do not change the result."""
        return config_digest(self.trial_config(trial))


def config_digest(plain: Mapping[str, Any]) -> str:
    """A short hash of a config (normalised through the schema, so defaults spelled out or left out agree) without
    the keys that do not change a run's result."""
    cfg = config_to_dict(config_from_dict({k: v for k, v in plain.items() if k != "_run"}))
    for key in NEUTRAL_TRAIN_KEYS:
        cfg["train"].pop(key, None)
    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def safe_name(column: str) -> str:
    """A column name as a folder-name part (other characters become '_')."""
    return _UNSAFE.sub("_", column).strip("_") or "column"


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """``2`` -> [0, 1] (a count); ``3,7`` -> [3, 7] (a list); a sequence of ints as given."""
    if isinstance(text, int):
        values: list[int] = list(range(text)) if text >= 1 else []
    elif isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            numbers = [int(p) for p in parts]
        except ValueError:
            raise UserError(f"--seeds '{text}' is neither a count (2: seeds 0 and 1) nor a comma list of seeds "
                            "(3,7).") from None
        values = list(range(numbers[0])) if len(numbers) == 1 else numbers
    else:
        values = [int(s) for s in text]
    if not values:
        raise UserError(f"--seeds must give at least one seed (a count >= 1 or a comma list), got '{text}'.")
    if len(set(values)) != len(values):
        raise UserError(f"--seeds lists a seed twice: {', '.join(map(str, values))}.")
    if any(s < 0 for s in values):
        raise UserError(f"--seeds must be >= 0, got {', '.join(map(str, values))}.")
    return values


def _load(cfg: Config, rows: Mapping[str, Any], required: Sequence[str], check_files: bool) -> MetadataTable:
    return load_table(cfg.data.table, image_column=cfg.data.image_column, root=cfg.data.root, rows=rows,
                      required_columns=required, missing_values=cfg.data.missing_values, check_files=check_files,
                      layout=build_layout(cfg), read=build_read_options(cfg))


def _distinct(values: Sequence[Any]) -> int:
    return len({category_label(v) for v in values if not is_missing(v)})


def _head(role: str, kind: str, cardinality: int) -> str:
    """The audit's head rule (``metadino.audit.roles``): regression for numbers; a prototype bank for an encouraged
    column with many classes; classification otherwise (gradient reversal needs an MLP head)."""
    if kind == "continuous":
        return "regression"
    if role == "encouraged" and kind == "categorical" and cardinality >= PROTOTYPICAL_MIN_CLASSES:
        return "prototypical"
    return "classification"


def trial_guide(column: str, role: str, kind: str, cardinality: int,
                configured: Mapping[str, Any] | None) -> dict[str, Any]:
    """The one guide of a (column, role) trial: the config's own guide on `column` when it has one (its head, weight
    and head settings; its `given` is dropped: the trial measures the role alone), else the audit's choice."""
    schema_role = SCHEMA_ROLE[role]
    if configured is not None and not (role == "suppressed" and configured.get("head") == "prototypical"):
        guide = copy.deepcopy(dict(configured))
        guide.update(role=schema_role, given=[])
        return guide
    head = _head(role, kind, cardinality)
    return {"column": column, "role": schema_role, "head": head, "weight": WEIGHTS[head]}


def make_plan(
    cfg: Config, *, label_column: str, train_rows: Mapping[str, Any], val_rows: Mapping[str, Any], out: Path,
    columns: Sequence[str] | None = None, steps: int | None = None, seeds: Sequence[int] = (0, 1),
    group_column: str | None = None, metric: str = "knn/accuracy", check_files: bool = True,
) -> Plan:
    """Check the request (naming the column or flag) and list the trials; raises UserError before any compute."""
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}.")
    if not train_rows or not val_rows:
        raise UserError("--train-rows and --val-rows are required (e.g. --train-rows split=train --val-rows split=val): "
                        "the probes are fitted on the first and scored on the second.")
    seeds = list(seeds)
    if not seeds:
        raise UserError("--seeds must give at least one seed.")
    plain = config_to_dict(cfg)
    base_guides = [dict(g) for g in plain["guidance"]["guides"]]
    plain["guidance"]["guides"] = []
    if steps is not None:
        plain["train"]["steps"] = steps
    plain["train"]["checkpoint_every"] = min(plain["train"]["checkpoint_every"], max(1, plain["train"]["steps"] // 2))
    try:
        base = config_from_dict(plain)
    except UserError as err:
        raise UserError(f"the config with --steps {plain['train']['steps']} is not valid: {err}") from None
    table = _load(base, base.data.rows, [label_column], check_files)  # the training rows (the guides' vocabulary)
    frame = table.frame
    available = [str(c) for c in frame.columns]
    for flag, name in (("--label-column", label_column), ("--group-column", group_column)):
        if name is not None and name not in available:
            raise UserError(f"{flag}: unknown column '{name}'; available columns: {', '.join(available)}.")
    all_metrics = METRICS + (GROUP_METRICS if group_column else ())
    if metric not in all_metrics:
        raise UserError(f"--metric '{metric}' is not one of {', '.join(all_metrics)}"
                        + ("" if group_column else " (worst-group metrics need --group-column)") + ".")
    audit = audit_table(table, labels=[label_column])
    chosen = (list(dict.fromkeys(columns)) if columns
              else [c for c, col in audit.columns.items() if col.role in CANDIDATE_ROLES])
    _check_columns(chosen, table, label_column, available)
    if not chosen:
        raise UserError("no candidate column: the audit found only identifiers, splits and the label in the training "
                        "rows; name the columns with --columns a,b.")
    # evaluation rows: checked now, not after the first trial has trained
    for flag, rows in (("--train-rows", train_rows), ("--val-rows", val_rows)):
        try:
            part = _load(base, rows, [label_column, *([group_column] if group_column else [])], False)
        except UserError as err:
            raise UserError(f"{flag}: {err}") from None
        if flag == "--train-rows" and _distinct(list(part.frame[label_column])) < 2:
            raise UserError(f"--label-column '{label_column}' has fewer than two classes in the --train-rows; a probe "
                            "needs at least two.")
    kinds = {c: infer_column_kind(frame[c]) for c in chosen}
    names = [safe_name(c) for c in chosen]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UserError(f"--columns: {', '.join(c for c in chosen if safe_name(c) in clash)} would share the trial "
                        "folder name(s) " + ", ".join(clash) + "; rename a column or leave one out.")
    plan = Plan(base=base, base_guides=base_guides, label_column=label_column, train_rows=dict(train_rows),
                val_rows=dict(val_rows), group_column=group_column, columns=chosen, seeds=seeds, metric=metric,
                out=Path(out), audit=audit, kinds=kinds)
    configured = {str(g["column"]): g for g in base_guides}
    for column in chosen:
        for role in ROLES:
            plan.guides[(column, role)] = trial_guide(column, role, kinds[column], _distinct(list(frame[column])),
                                                      configured.get(column))
    for seed in seeds:  # seed-major: an interrupted sweep has complete pairs of its first seeds
        plan.trials.append(Trial(None, None, seed))
        plan.trials += [Trial(column, role, seed) for column in chosen for role in ROLES]
    for trial in plan.trials[: 1 + 2 * len(chosen)]:  # every trial config is valid (one seed checks them all)
        try:
            config_from_dict(plan.trial_config(trial))
        except UserError as err:
            raise UserError(f"trial {trial.name}: {err}") from None
    return plan


def _check_columns(columns: Sequence[str], table: MetadataTable, label_column: str, available: list[str]) -> None:
    """Refuse candidates that cannot be a guide, naming the column (the training rows decide)."""
    for column in columns:
        if column not in available:
            raise UserError(f"--columns: unknown column '{column}'; available columns: {', '.join(available)}.")
        if column == label_column:
            raise UserError(f"--columns: '{column}' is the --label-column; the task label is never a guide (it is "
                            "what the compass measures).")
        if column == table.image_column:
            raise UserError(f"--columns: '{column}' is the image column, not metadata.")
        distinct = _distinct(list(table.frame[column]))
        if distinct < 2:
            raise UserError(f"--columns: '{column}' has {distinct} distinct known value(s) in the training rows "
                            f"({len(table.frame)} rows); a guide needs at least two.")


__all__ = ["METRICS", "config_digest", "GROUP_METRICS", "ROLES", "SCHEMA_ROLE", "Plan", "Trial", "make_plan", "parse_seeds",
           "safe_name", "trial_guide"]
