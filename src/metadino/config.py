"""Typed, strict run configuration.

A config is a tree of dataclasses. It is read from YAML, then dotted command-line overrides
(`train.steps=200`) are applied, then cross-field checks run — all before any compute. Unknown
keys, wrong types and impossible values raise :class:`~metadino.errors.UserError` naming the key
path. Only factories read this object; components take explicit arguments.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from metadino.errors import UserError

Precision = Literal["fp32", "bf16"]
SSLMethod = Literal["dinov1", "dinov2"]


@dataclass
class DataConfig:
    """Where the images and their metadata live."""

    table: str = ""
    """CSV or Parquet file, one row per image (required)."""
    image_column: str = "path"
    """Column holding image paths, relative to `root` unless absolute."""
    root: str | None = None
    """Folder that relative image paths start from (default: the table's folder)."""
    rows: dict[str, Any] = field(default_factory=dict)
    """Row filter, e.g. {split: train}; a value may be a list of accepted values."""
    missing_values: list[str] = field(default_factory=lambda: ["", "NA", "NaN", "nan", "None", "null"])
    """Cell values that mean 'unknown' in metadata columns."""


@dataclass
class ModelConfig:
    """The backbone being adapted."""

    backbone: str = "builtin:vit-small"
    """builtin:vit-tiny|vit-small|vit-base, hf:<hub id or local dir>, or a run/export directory."""
    in_chans: int = 3
    """Channels of the input images; a 3-channel checkpoint is expanded to this many."""
    patch_size: int = 16
    """Patch size of the built-in ViT (HF checkpoints bring their own)."""
    embed_dim: int | None = None
    """Built-in ViT width override (null: the preset's)."""
    depth: int | None = None
    """Built-in ViT depth override."""
    num_heads: int | None = None
    """Built-in ViT heads override."""
    num_registers: int = 0
    """Register tokens of the built-in ViT."""
    layerscale_init: float | None = 1e-5
    """Built-in ViT LayerScale init: 1e-5 as DINOv2, null for none (DINOv1); short from-scratch runs learn faster
    with larger values."""
    drop_path_rate: float = 0.1
    """Stochastic depth of the student (built-in ViT)."""
    channel_expansion: Literal["mean"] = "mean"
    """How new input channels of a pretrained patch embedding are initialised (reference §8)."""
    grad_checkpointing: bool = False
    """Activation checkpointing in the student backbone (saves memory, costs time)."""


@dataclass
class HeadConfig:
    """A DINO-style projection head: MLP -> L2-normalised bottleneck -> prototypes."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    norm_last_layer: bool = True
    """L2-normalised prototypes (DINOv1/v2 weight norm); false = plain linear prototypes as in DINOv3."""
    batchnorm: bool | None = None
    """Batch norm after each hidden layer of the MLP, over the global batch (DINOv1's use_bn_in_head). Unset: on
    for the DINO head, off for the iBOT head (not measured there). Without it the CLS tokens of a fresh network,
    ~90 % alike, give the teacher uniform targets and the DINO term never leaves ln K (README)."""


@dataclass
class IBOTConfig:
    """iBOT masked-patch objective (dinov2 only)."""

    loss_weight: float = 1.0
    separate_head: bool = True
    head: HeadConfig = field(default_factory=HeadConfig)
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    """Share of patch tokens masked in a masked global crop, drawn uniformly in this range."""
    mask_probability: float = 0.5
    """Share of global crops that are masked at all."""


@dataclass
class SIGRegConfig:
    """SIGReg on the DINO-head bottleneck of the global crops (reference §6)."""

    weight: float = 0.0
    """0 disables it; the reference recipes use 0.05 (term = weight x 2 x mean over the 2 global crops)."""
    koleo_too: bool = False
    """Keep KoLeo alongside SIGReg (the reference replaces it)."""
    num_slices: int = 1024
    reference_scaling: bool = False
    """Reproduce the reference's 1/world_size gradient under DDP instead of the true global-batch gradient."""


@dataclass
class GramConfig:
    """Gram anchoring (DINOv3 §4): the patch-similarity structure of the student is held to a frozen copy of the
    starting backbone (the published remedy for dense features degrading in continued SSL)."""

    weight: float = 0.0
    """0 disables it. Term = weight x mean over the global-crop images of (1/N²)‖X_s X_sᵀ − X_g X_gᵀ‖²_F, X the
    L2-normalised patch tokens (student: its masked global-crop forward; Gram teacher: the unmasked crops).
    DINOv3 ramps it to 2 in its Gram stage."""
    clip_negatives: Literal["none", "both", "teacher"] = "none"
    """Negative similarities set to 0 before the difference: none (DINOv3's default), both matrices (DINOv3
    remove_neg), or the teacher's (remove_only_teacher_neg: the student's only where both are negative)."""


@dataclass
class DistillConfig:
    """Distillation: a larger frozen model provides the DINO/iBOT targets instead of the EMA teacher."""

    teacher: str | None = None
    """Backbone spec of the frozen teacher (same forms as model.backbone); null: the usual EMA teacher."""


@dataclass
class SSLConfig:
    """The self-supervised objective."""

    method: SSLMethod = "dinov2"
    """dinov1: DINO loss + softmax centering. dinov2: DINO + iBOT + KoLeo with Sinkhorn-Knopp."""
    dino_loss_weight: float = 1.0
    head: HeadConfig = field(default_factory=HeadConfig)
    ibot: IBOTConfig = field(default_factory=IBOTConfig)
    koleo_loss_weight: float = 0.1
    """KoLeo on the student CLS of the global crops (dinov2; 0 disables it)."""
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    """DINOv1's default; DINOv2 warms up from 0.04 to 0.07. 0.07 from the first step left the targets of a fresh
    network uniform in every measured small run."""
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup_steps: int = 0
    """Linear teacher-temperature warm-up from warmup_teacher_temp (DINOv2: 30 of 100 epochs)."""
    center_momentum: float = 0.9
    """Softmax-centering momentum (dinov1)."""
    ignore_diagonal: bool = True
    """Do not compare a global crop with itself in the DINO loss."""
    ema_momentum: float = 0.994
    """Teacher EMA momentum at step 0; cosine to ema_momentum_end at the last step."""
    ema_momentum_end: float = 1.0
    freeze_last_layer_steps: int | None = None
    """Prototype layers get LR 0 for this many steps. Unset: 30 % of the steps from scratch (builtin backbones), 2 %
    from pretrained weights (FINO: 450 of 20 000). Trainable prototypes fold into a subspace early on, which flattens
    the targets (README)."""
    sigreg: SIGRegConfig = field(default_factory=SIGRegConfig)
    gram: GramConfig = field(default_factory=GramConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class LabelGuidedConfig:
    """DINO-LG: centre a share of the local crops on an annotated region of the image."""

    share: float = 0.0
    """Share of local crops centred on the region (0 disables; rows without a region use plain crops)."""
    bbox_columns: list[str] = field(default_factory=list)
    """Four columns x0, y0, x1, y1 of a bounding box, in pixels of the original image."""
    mask_column: str | None = None
    """Column holding the path of a mask image (non-zero = region), relative like the image paths."""


@dataclass
class CropsConfig:
    """Multi-crop augmentation."""

    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    hflip: bool = True
    vflip: bool = False
    photometric: str = "natural"
    """natural (DINO colour pipeline, RGB) | microscopy (per-channel jitter, channel dropout,
    self-normalisation) | xray (windowing, gamma; grayscale) | satellite (90° rotations, flips, per-band
    jitter) | none."""
    mean: list[float] | None = None
    """Per-channel normalisation mean (natural: ImageNet by default)."""
    std: list[float] | None = None
    label_guided: LabelGuidedConfig = field(default_factory=LabelGuidedConfig)


@dataclass
class OptimConfig:
    """AdamW with warm-up + cosine learning rate and a cosine weight-decay schedule."""

    lr: float = 5e-4
    """Peak learning rate (absolute: not rescaled by batch size)."""
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    layer_decay: float = 0.9
    """Layer-wise LR decay: block i of L gets layer_decay**(L+1-layer_id)."""
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0
    """Max gradient norm, applied separately to backbone and heads (0 disables)."""
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class TrainConfig:
    """The run itself."""

    steps: int = 1000
    batch_size: int = 32
    """Images per process per step."""
    seed: int = 0
    device: str = "auto"
    """auto | cpu | cuda | cuda:N | mps."""
    num_workers: int = 2
    precision: Precision = "fp32"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10


@dataclass
class GuideConfig:
    """One metadata column driving a guide head."""

    column: str = ""
    role: Literal["informative", "spurious"] = "informative"
    """informative: pulled into the representation; spurious: pushed out by gradient reversal."""
    head: Literal["classification", "regression", "prototypical"] = "classification"
    weight: float = 0.1
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256])
    """MLP widths of classification/regression heads (prototypical heads have no parameters)."""
    dropout: float = 0.0
    multilabel: bool | None = None
    """BCE over a multi-hot target; null: inferred from the column (cells like 'a|b')."""
    separator: str = "|"
    output_activation: Literal["none", "sigmoid", "tanh"] = "none"
    target_min: float | None = None
    """Regression target range for normalisation; null: the column's min/max in the table."""
    target_max: float | None = None
    temperature: float = 0.07
    """Prototype base temperature (initial per-class concentration)."""
    momentum: float = 0.999
    """EMA momentum of prototype centroids and concentrations."""
    phi_min: float = 0.01
    grl_space: Literal["embedding", "prototype"] = "embedding"
    """Where a classification/regression guide reads: the CLS embedding, or the DINO-head logits."""
    given: list[str] = field(default_factory=list)
    """Conditional suppression (spurious guides): the adversary also sees these columns."""


@dataclass
class LambdaConfig:
    schedule: Literal["sigmoid", "linear", "constant"] = "sigmoid"
    """Gradient-reversal / guide strength over the run: DANN sigmoid, linear, or constant 1."""
    warmup_steps: int = 0
    """λ = 0 for this many steps, then the schedule runs over the remaining steps."""
    start: Literal["step0", "unfreeze"] = "step0"
    """step0: the ramp starts at warmup_steps (released code). unfreeze: at the later of warmup_steps and the end of
    the heads-only stage (stages.heads_only_steps, resolved), λ = 0 before: the FINO paper's ramp counted from the
    unfreeze point."""


@dataclass
class GuidanceConfig:
    """Metadata guidance (FINO)."""

    lambda_: LambdaConfig = field(default_factory=LambdaConfig, metadata={"key": "lambda"})
    balance: bool = False
    """Equalise guide gradient norms at the CLS token to their geometric mean."""
    balance_per_rank: bool = False
    """Reference behaviour under DDP (norms of each rank's local batch); default: the global batch."""
    balance_momentum: float = 0.0
    """0: balance each step's gradient norms (released code). >0: balance an EMA of each guide's norm with this
    momentum (FINO paper: 0.99), started from the guide's first non-zero norm; saved in checkpoints."""
    spurious_weight_divisor: float = 10.0
    """The reference divides a spurious guide's weight by 10 (w_eff = weight / 10); 1 disables the rule."""
    guides: list[GuideConfig] = field(default_factory=list)


@dataclass
class StagesConfig:
    """Two-stage finetune (reference §8): heads first, then the backbone."""

    heads_only_steps: int | None = None
    """Backbone LR 0 for this many steps (Adam moments stay warm); null: 10% of the run for a pretrained
    backbone, 0 from scratch."""
    ramp_steps: int | None = None
    """Linear backbone LR ramp after stage 1; null: 5% of the run for a pretrained backbone, 0 otherwise."""
    train_patch_embed: bool = True
    """The patch embedding trains in stage 1 (reference recipes)."""
    freeze_tokens: bool = True
    """cls/mask/register tokens are frozen in stage 1."""
    unfreeze_last_n_blocks: int = 0
    """>0: only the last N blocks ever train (patch embedding, tokens and the final norm stay frozen)."""


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft) on the backbone's linear layers."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["qkv"])
    """Layers that get adapters: qkv (attention input projections, under whatever name the transformers
    version uses: query/key/value or q_proj/k_proj/v_proj), proj (attention output), mlp, or literal
    module-name suffixes."""


@dataclass
class AdaptConfig:
    """Which backbone parameters train (DINO-MX adaptation modes)."""

    mode: Literal["full", "lora", "freeze"] = "full"
    """full: every parameter; lora: only adapters (+ heads, + final norm if train_norm); freeze: the patch
    embedding and the first freeze_blocks blocks are frozen."""
    freeze_blocks: int = 0
    """freeze and lora modes: the first N blocks get no gradients (lora: no adapters there)."""
    train_norm: bool = True
    """lora mode: the final norm of the backbone trains as well."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)


# Keys that may change when a run is resumed; anything else must match the saved config.
RESUMABLE_CHANGES = frozenset(
    {"train.steps", "train.num_workers", "train.device", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every"}
)


# ----------------------------------------------------------------------------------------------
# Building a config from plain data


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) if a is not type(None) else "null" for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists -> tuples etc.)."""
    origin = typing.get_origin(tp)
    bad = UserError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}.")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except UserError:
                continue
        raise bad
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"config key '{key}': expected a list of {len(args)} values, got {value!r}.")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def _key(f: dataclasses.Field) -> str:
    """The YAML key of a field (`lambda` is a Python keyword, so its field is `lambda_`)."""
    return f.metadata.get("key", f.name)


def _unknown_key(cls: type, name: str, prefix: str) -> UserError:
    known = [_key(f) for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Known keys here: {', '.join(known)}."
    return UserError(f"unknown config key '{prefix}{name}'.{hint}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    by_key = {_key(f): f.name for f in dataclasses.fields(cls)}
    dot = f"{prefix}." if prefix else ""
    kwargs = {}
    for name, value in data.items():
        if not isinstance(name, str) or name not in by_key:
            raise _unknown_key(cls, str(name), dot)
        kwargs[by_key[name]] = _convert(value, hints[by_key[name]], f"{dot}{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field (no default) is missing
        raise UserError(f"config section '{prefix or '(top level)'}' is incomplete: {e}.") from None


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from nested plain data (as read from YAML)."""
    if not isinstance(data, dict):
        raise UserError("the config must be a mapping of sections (data, model, ssl, crops, optim, train).")
    # `_run` holds provenance in saved configs; a saved config can be used as-is.
    cfg = _build(Config, {k: v for k, v in data.items() if k != "_run"}, "")
    validate(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {_key(f): plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], parsed value). The value is parsed as YAML (so 3 is an int)."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key.sub=value (e.g. train.steps=200).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{text}' has an empty key; write it as key.sub=value.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise UserError(f"override '{text}': the value '{raw}' is not valid YAML.") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to nested plain data. Key existence is checked when the config is built."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"override '{text}': '{'.'.join(path[: i + 1])}' is a value, not a section.")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist.")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"config file '{p}' is not valid YAML{where}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file '{p}' cannot be read: {e}.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{p}' must hold a mapping of sections, not {type(data).__name__}.")
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """YAML file (or defaults when None) + dotted overrides -> validated config.

    A relative `data.table` in the YAML file is resolved against the file's folder, so configs
    can travel with their data.
    """
    data = read_yaml(path) if path is not None else {}
    table = (data.get("data") or {}).get("table") if isinstance(data.get("data"), dict) else None
    if path is not None and isinstance(table, str) and table and not Path(table).is_absolute():
        data["data"]["table"] = str((Path(path).parent / table).resolve())
    data = apply_overrides(data, list(overrides))
    table = data.get("data", {}).get("table") if isinstance(data.get("data"), dict) else None
    if isinstance(table, str) and table:  # overrides are relative to the working directory
        data["data"]["table"] = str(Path(table).resolve())
    return config_from_dict(data)


def save_config(cfg: Config, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved config (plus provenance under `_run`) as YAML."""
    data = config_to_dict(cfg)
    if extra:
        data["_run"] = extra
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


# Keys added after runs had been saved, at the value that reproduces the behaviour from before they existed: a saved
# config without them (an older run being resumed) does not differ from one holding that value.
NEUTRAL_NEW_KEYS: dict[str, Any] = {
    "ssl.gram.weight": 0.0,
    "ssl.gram.clip_negatives": "none",
    "guidance.balance_momentum": 0.0,
    "guidance.lambda.start": "step0",
}


def _neutral(path: str, value: Any) -> bool:
    if isinstance(value, dict):
        return all(_neutral(f"{path}.{k}", v) for k, v in value.items())
    return path in NEUTRAL_NEW_KEYS and NEUTRAL_NEW_KEYS[path] == value


def diff_configs(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts (a key of :data:`NEUTRAL_NEW_KEYS` missing on
    one side counts as its neutral value)."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key.startswith("_"):
            continue
        va, vb = a.get(key), b.get(key)
        path = f"{prefix}{key}"
        if (key not in a and _neutral(path, vb)) or (key not in b and _neutral(path, va)):
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, f"{path}.")
        elif va != vb:
            out.append(path)
    return out


# ----------------------------------------------------------------------------------------------
# Cross-field checks


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise UserError(f"config key '{key}': {message}")


def _check_range(pair: tuple[float, float], key: str, lo: float, hi: float) -> None:
    a, b = pair
    _check(lo <= a <= b <= hi, key, f"expected {lo} <= min <= max <= {hi}, got [{a}, {b}].")


def validate(cfg: Config) -> None:
    """Reject impossible combinations before any compute."""
    from metadino.data.photometric import PHOTOMETRIC_PRESETS  # data layer owns the preset names

    m, c, s, o, t = cfg.model, cfg.crops, cfg.ssl, cfg.optim, cfg.train
    _check(bool(cfg.data.table), "data.table", "is required: the CSV or Parquet file listing your images.")
    _check(bool(cfg.data.image_column), "data.image_column", "must name the column holding image paths.")
    _check(m.in_chans >= 1, "model.in_chans", f"must be at least 1, got {m.in_chans}.")
    _check(m.patch_size >= 1, "model.patch_size", f"must be at least 1, got {m.patch_size}.")
    _check(0.0 <= m.drop_path_rate < 1.0, "model.drop_path_rate", f"must be in [0, 1), got {m.drop_path_rate}.")
    for name in ("embed_dim", "depth", "num_heads"):
        v = getattr(m, name)
        _check(v is None or v >= 1, f"model.{name}", f"must be at least 1, got {v}.")
    if m.embed_dim is not None and m.num_heads is not None:
        _check(m.embed_dim % m.num_heads == 0, "model.embed_dim", f"{m.embed_dim} is not divisible by model.num_heads={m.num_heads}.")
    _check(m.num_registers >= 0, "model.num_registers", "must be >= 0.")
    _check(m.layerscale_init is None or m.layerscale_init > 0, "model.layerscale_init", "must be > 0, or null for none.")

    _check(c.global_size >= 1, "crops.global_size", "must be positive.")
    _check(c.local_size >= 1, "crops.local_size", "must be positive.")
    _check(
        c.local_size <= c.global_size,
        "crops.local_size",
        f"a local crop ({c.local_size}) cannot be larger than the global crop (crops.global_size={c.global_size}).",
    )
    if m.backbone.startswith("builtin:"):
        for key, size in (("crops.global_size", c.global_size), ("crops.local_size", c.local_size)):
            _check(size % m.patch_size == 0, key, f"{size} is not a multiple of model.patch_size={m.patch_size}.")
    _check(c.n_local >= 0, "crops.n_local", "must be >= 0.")
    _check_range(c.global_scale, "crops.global_scale", 1e-4, 1.0)
    _check_range(c.local_scale, "crops.local_scale", 1e-4, 1.0)
    _check(
        c.photometric in PHOTOMETRIC_PRESETS,
        "crops.photometric",
        f"unknown preset '{c.photometric}'; choose one of {', '.join(PHOTOMETRIC_PRESETS)}.",
    )
    if c.photometric == "natural":
        _check(
            m.in_chans == 3,
            "crops.photometric",
            f"'natural' is the RGB colour pipeline but model.in_chans={m.in_chans}; use 'xray' (grayscale), "
            "'satellite' (multi-band), 'microscopy' or 'none'.",
        )
    for key, vals in (("crops.mean", c.mean), ("crops.std", c.std)):
        if vals is not None:
            _check(len(vals) == m.in_chans, key, f"has {len(vals)} values but model.in_chans={m.in_chans}.")
    if c.std is not None:
        _check(all(v > 0 for v in c.std), "crops.std", "values must be > 0.")

    for key, head in (("ssl.head", s.head), ("ssl.ibot.head", s.ibot.head)):
        _check(head.out_dim >= 2, f"{key}.out_dim", "must be at least 2.")
        _check(head.nlayers >= 1, f"{key}.nlayers", "must be at least 1.")
        _check(head.hidden_dim >= 1 and head.bottleneck_dim >= 1, key, "hidden_dim and bottleneck_dim must be positive.")
    if s.method == "dinov2" and not s.ibot.separate_head:
        _check(s.ibot.head == s.head, "ssl.ibot.head", "must equal ssl.head when ssl.ibot.separate_head is false.")
    _check_range(s.ibot.mask_ratio, "ssl.ibot.mask_ratio", 0.0, 1.0)
    _check(0.0 <= s.ibot.mask_probability <= 1.0, "ssl.ibot.mask_probability", "must be in [0, 1].")
    for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        _check(getattr(s, key) > 0, f"ssl.{key}", "must be > 0.")
    for key in ("ema_momentum", "ema_momentum_end", "center_momentum"):
        _check(0.0 <= getattr(s, key) <= 1.0, f"ssl.{key}", "must be in [0, 1].")
    for key in ("dino_loss_weight", "koleo_loss_weight"):
        _check(getattr(s, key) >= 0, f"ssl.{key}", "must be >= 0.")
    _check(s.ibot.loss_weight >= 0, "ssl.ibot.loss_weight", "must be >= 0.")
    _check(s.teacher_temp_warmup_steps >= 0 and (s.freeze_last_layer_steps or 0) >= 0, "ssl", "step counts must be >= 0.")

    _check(o.lr >= 0 and o.min_lr >= 0, "optim.lr", "learning rates must be >= 0.")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0.")
    _check(o.weight_decay >= 0 and o.weight_decay_end >= 0, "optim.weight_decay", "must be >= 0.")
    _check(0.0 < o.layer_decay <= 1.0, "optim.layer_decay", "must be in (0, 1].")
    _check(o.patch_embed_lr_mult >= 0, "optim.patch_embed_lr_mult", "must be >= 0.")
    _check(o.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables clipping).")
    _check(all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", "must be in [0, 1).")

    _validate_guidance(cfg)
    st = cfg.stages
    for key in ("heads_only_steps", "ramp_steps"):
        v = getattr(st, key)
        _check(v is None or v >= 0, f"stages.{key}", "must be >= 0.")
    _check(st.unfreeze_last_n_blocks >= 0, "stages.unfreeze_last_n_blocks", "must be >= 0.")
    _check(s.sigreg.weight >= 0, "ssl.sigreg.weight", "must be >= 0.")
    _check(s.gram.weight >= 0, "ssl.gram.weight", "must be >= 0 (0 disables Gram anchoring).")
    _validate_adaptation(cfg)
    _check(s.sigreg.num_slices >= 1, "ssl.sigreg.num_slices", "must be at least 1.")

    _check(t.steps >= 1, "train.steps", f"must be at least 1, got {t.steps}.")
    _check(t.batch_size >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}.")
    _check(t.num_workers >= 0, "train.num_workers", "must be >= 0.")
    _check(t.checkpoint_every >= 1, "train.checkpoint_every", "must be at least 1.")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1.")
    _check(t.log_every >= 1, "train.log_every", "must be at least 1.")
    dev = t.device
    _check(
        dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit()),
        "train.device",
        f"unknown device '{dev}'; use auto, cpu, cuda, cuda:N or mps.",
    )


def _validate_adaptation(cfg: Config) -> None:
    a, lg = cfg.adapt, cfg.crops.label_guided
    _check(a.freeze_blocks >= 0, "adapt.freeze_blocks", "must be >= 0.")
    if a.mode == "full":
        _check(a.freeze_blocks == 0, "adapt.freeze_blocks", "only applies with adapt.mode: freeze or lora.")
    if a.mode == "freeze":
        _check(a.freeze_blocks >= 1, "adapt.freeze_blocks", "adapt.mode: freeze needs the number of blocks to freeze (>= 1).")
    _check(a.lora.rank >= 1, "adapt.lora.rank", f"must be at least 1, got {a.lora.rank}.")
    _check(a.lora.alpha > 0, "adapt.lora.alpha", "must be > 0.")
    _check(0.0 <= a.lora.dropout < 1.0, "adapt.lora.dropout", "must be in [0, 1).")
    _check(bool(a.lora.target_modules), "adapt.lora.target_modules", "must name at least one layer kind (e.g. [qkv]).")
    _check(0.0 <= lg.share <= 1.0, "crops.label_guided.share", f"must be in [0, 1], got {lg.share}.")
    if lg.bbox_columns:
        _check(len(lg.bbox_columns) == 4, "crops.label_guided.bbox_columns", "must list four columns: x0, y0, x1, y1.")
    _check(
        not (lg.bbox_columns and lg.mask_column),
        "crops.label_guided",
        "give either bbox_columns or mask_column, not both.",
    )
    _check(
        lg.share == 0 or cfg.crops.n_local > 0,
        "crops.label_guided.share",
        "is > 0 but crops.n_local is 0: label guidance only moves local crops; add local crops or set share to 0.",
    )
    if lg.share > 0:
        _check(
            bool(lg.bbox_columns) or lg.mask_column is not None,
            "crops.label_guided.share",
            "is > 0 but no region is given: set crops.label_guided.bbox_columns or mask_column.",
        )
    if a.mode != "full":
        _check(
            cfg.stages.unfreeze_last_n_blocks == 0,
            "stages.unfreeze_last_n_blocks",
            f"cannot be combined with adapt.mode: {a.mode}; use adapt.freeze_blocks = depth - N instead.",
        )
    teacher = cfg.ssl.distill.teacher
    if teacher is not None:
        _check(bool(teacher.strip()), "ssl.distill.teacher", "must be a backbone spec, or null.")
        _check(
            not teacher.startswith("builtin:"),
            "ssl.distill.teacher",
            f"'{teacher}' would be a randomly initialised model; pass a pretrained hf:<id>, export or run directory.",
        )


def _validate_guidance(cfg: Config) -> None:
    g = cfg.guidance
    _check(g.lambda_.warmup_steps >= 0, "guidance.lambda.warmup_steps", "must be >= 0.")
    _check(g.spurious_weight_divisor > 0, "guidance.spurious_weight_divisor", "must be > 0.")
    _check(0.0 <= g.balance_momentum < 1.0, "guidance.balance_momentum", f"must be in [0, 1), got {g.balance_momentum}.")
    if g.balance_momentum > 0:
        _check(g.balance, "guidance.balance_momentum", "only applies with guidance.balance: true.")
        _check(
            not g.balance_per_rank,
            "guidance.balance_momentum",
            "cannot be combined with guidance.balance_per_rank: true (the averaged norms must be identical on every "
            "rank, so they are computed from the global batch).",
        )
    seen: set[str] = set()
    for i, guide in enumerate(g.guides):
        key = f"guidance.guides[{i}]"
        _check(bool(guide.column), f"{key}.column", "is required: the metadata column that drives this guide.")
        _check(guide.column not in seen, f"{key}.column", f"'{guide.column}' already has a guide.")
        seen.add(guide.column)
        _check(guide.column != cfg.data.image_column, f"{key}.column", "cannot be the image column.")
        _check(guide.weight >= 0, f"{key}.weight", "must be >= 0.")
        _check(0.0 <= guide.dropout < 1.0, f"{key}.dropout", "must be in [0, 1).")
        _check(all(h >= 1 for h in guide.hidden_dims), f"{key}.hidden_dims", "widths must be >= 1.")
        _check(guide.temperature > 0 and guide.phi_min > 0, f"{key}.temperature", "temperature and phi_min must be > 0.")
        _check(0.0 <= guide.momentum <= 1.0, f"{key}.momentum", "must be in [0, 1].")
        if guide.head == "prototypical":
            _check(guide.grl_space == "embedding", f"{key}.grl_space", "prototypical guides read the embedding only.")
            _check(not guide.multilabel, f"{key}.multilabel", "prototypical guides need one class per image.")
        if guide.given:
            _check(guide.role == "spurious", f"{key}.given", "conditioning only applies to spurious guides.")
            _check(guide.column not in guide.given, f"{key}.given", "a guide cannot be conditioned on its own column.")
            _check(guide.head != "prototypical", f"{key}.given", "conditioning needs a classification or regression head.")
        if guide.target_min is not None and guide.target_max is not None:
            _check(guide.target_min < guide.target_max, f"{key}.target_min", "must be smaller than target_max.")
