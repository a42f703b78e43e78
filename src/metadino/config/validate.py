"""Cross-field checks of a built :class:`~metadino.config.schema.Config`, one function per section.

The loader has already checked every value's type; these reject impossible values and combinations before any
compute. Each message names the key to change (tests match on the key). A rule that spans sections lives with
the section whose key it names.
"""

from __future__ import annotations

import math
import typing

from metadino.config.schema import Config, PhotometricPreset
from metadino.errors import UserError

PHOTOMETRIC_CHOICES: tuple[str, ...] = typing.get_args(PhotometricPreset)


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise UserError(f"config key '{key}': {message}")


def _check_range(pair: tuple[float, float], key: str, lo: float, hi: float) -> None:
    a, b = pair
    _check(lo <= a <= b <= hi, key, f"expected {lo} <= min <= max <= {hi}, got [{a}, {b}].")


def validate_data(cfg: Config) -> None:
    _check(bool(cfg.data.table), "data.table", "is required: the CSV or Parquet file listing your images.")
    _check(bool(cfg.data.image_column), "data.image_column", "must name the column holding image paths.")
    # The loader already rejects other names (a Literal); this covers a Config built in code.
    _check(cfg.data.bad_images in ("strict", "skip"), "data.bad_images",
           f"unknown policy '{cfg.data.bad_images}'; choose strict or skip.")
    f = cfg.data.max_bad_fraction
    _check(0.0 <= f <= 1.0, "data.max_bad_fraction", f"must be a share in [0, 1], got {f}.")
    _validate_layout(cfg)
    _validate_read(cfg)


_TILE_KEYS = ("x", "y", "size", "width", "height", "level")  # metadino.data.sources.TILE_KEYS (a test keeps them equal)


def _validate_layout(cfg: Config) -> None:
    d = cfg.data
    template, channels = d.image_template, d.channels
    _check(template is None or not d.channel_columns, "data.channel_columns",
           "cannot be combined with data.image_template; name the channel files one way.")
    if template is not None:
        _check(bool(template.strip()), "data.image_template", "is empty; give a path template or null.")
        _check("{" in template, "data.image_template",
               f"'{template}' names no column; write fields such as '{{Id}}_{{channel}}.png'.")
        _check("{channel}" not in template or bool(channels), "data.channels",
               f"must list the channel names that replace {{channel}} in data.image_template '{template}'.")
    if channels is not None:
        _check(len(channels) > 0, "data.channels", "is empty; list the channel names, or null.")
        _check(len(set(channels)) == len(channels), "data.channels", f"names a channel twice: {channels}.")
        if template is None or "{channel}" not in template:
            _check(len(channels) == cfg.model.in_chans, "data.channels",
                   f"names {len(channels)} channels but model.in_chans={cfg.model.in_chans}.")
    if d.channel_columns is not None:
        _check(len(d.channel_columns) > 0, "data.channel_columns", "is empty; list one column per channel, or null.")
        _check(len(set(d.channel_columns)) == len(d.channel_columns), "data.channel_columns",
               f"names a column twice: {d.channel_columns}.")
    tiles = d.tile_columns
    if tiles:
        unknown = sorted(set(tiles) - set(_TILE_KEYS))
        _check(not unknown, "data.tile_columns", f"unknown key(s) {unknown}; use {', '.join(_TILE_KEYS)}.")
        _check("x" in tiles and "y" in tiles, "data.tile_columns", "needs the columns of x and y.")
        _check(("size" in tiles) != ("width" in tiles or "height" in tiles), "data.tile_columns",
               "needs either size, or width and height.")
        _check("size" in tiles or ("width" in tiles and "height" in tiles), "data.tile_columns",
               "needs both width and height.")


def _validate_read(cfg: Config) -> None:
    r = cfg.data.read
    for key in ("series", "level"):
        _check(getattr(r, key) >= 0, f"data.read.{key}", f"must be >= 0, got {getattr(r, key)}.")
    for key in ("z", "t"):
        v = getattr(r, key)
        _check(v is None or v >= 0, f"data.read.{key}", f"must be >= 0 or null, got {v}.")
    _check(r.max_pixels >= 1, "data.read.max_pixels", f"must be at least 1, got {r.max_pixels}.")
    _check(r.nodata in ("error", "fill", "mean"), "data.read.nodata",
           f"unknown policy '{r.nodata}'; choose error, fill or mean.")
    _check(math.isfinite(r.fill_value), "data.read.fill_value", f"must be a finite number, got {r.fill_value}.")
    _check(r.nodata_value is None or not math.isnan(r.nodata_value), "data.read.nodata_value",
           "NaN is always no-data; give another value or null.")


def validate_model(cfg: Config) -> None:
    m = cfg.model
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


def validate_crops(cfg: Config) -> None:
    m, c = cfg.model, cfg.crops
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
    # The loader already rejects other names (a Literal); this covers a Config built in code.
    _check(
        c.photometric in PHOTOMETRIC_CHOICES,
        "crops.photometric",
        f"unknown preset '{c.photometric}'; choose one of {', '.join(PHOTOMETRIC_CHOICES)}.",
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
    _validate_label_guided(cfg)


def _validate_label_guided(cfg: Config) -> None:
    lg = cfg.crops.label_guided
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


def validate_ssl(cfg: Config) -> None:
    s = cfg.ssl
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
    _check(s.sigreg.weight >= 0, "ssl.sigreg.weight", "must be >= 0.")
    _check(s.sigreg.num_slices >= 1, "ssl.sigreg.num_slices", "must be at least 1.")
    _check(s.gram.weight >= 0, "ssl.gram.weight", "must be >= 0 (0 disables Gram anchoring).")
    teacher = s.distill.teacher
    if teacher is not None:
        _check(bool(teacher.strip()), "ssl.distill.teacher", "must be a backbone spec, or null.")
        _check(
            not teacher.startswith("builtin:"),
            "ssl.distill.teacher",
            f"'{teacher}' would be a randomly initialised model; pass a pretrained hf:<id>, export or run directory.",
        )


def validate_optim(cfg: Config) -> None:
    o = cfg.optim
    _check(o.lr >= 0 and o.min_lr >= 0, "optim.lr", "learning rates must be >= 0.")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0.")
    _check(o.weight_decay >= 0 and o.weight_decay_end >= 0, "optim.weight_decay", "must be >= 0.")
    _check(0.0 < o.layer_decay <= 1.0, "optim.layer_decay", "must be in (0, 1].")
    _check(o.patch_embed_lr_mult >= 0, "optim.patch_embed_lr_mult", "must be >= 0.")
    _check(o.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables clipping).")
    _check(all(0.0 <= b < 1.0 for b in o.betas), "optim.betas", "must be in [0, 1).")


def validate_train(cfg: Config) -> None:
    t = cfg.train
    _check("jsonl" in t.log_to, "train.log_to", "must include jsonl (metrics.jsonl feeds the report and the resume).")
    _check(len(set(t.log_to)) == len(t.log_to), "train.log_to", f"names a destination twice: {t.log_to}.")
    _check(t.steps >= 1, "train.steps", f"must be at least 1, got {t.steps}.")
    _check(t.batch_size >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}.")
    _check(t.num_workers == "auto" or t.num_workers >= 0, "train.num_workers", "must be auto or >= 0.")
    _check(t.checkpoint_every >= 1, "train.checkpoint_every", "must be at least 1.")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be at least 1.")
    _check(t.log_every >= 1, "train.log_every", "must be at least 1.")
    _check(t.max_skipped_steps >= 0, "train.max_skipped_steps", f"must be >= 0, got {t.max_skipped_steps}.")
    dev = t.device
    _check(
        dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit()),
        "train.device",
        f"unknown device '{dev}'; use auto, cpu, cuda, cuda:N or mps.",
    )


def validate_guidance(cfg: Config) -> None:
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
    seen: set[str] = set()  # columns of the guides before; filled by _validate_guide
    for i in range(len(g.guides)):
        _validate_guide(cfg, i, seen)


def _validate_guide(cfg: Config, i: int, seen: set[str]) -> None:
    guide, key = cfg.guidance.guides[i], f"guidance.guides[{i}]"
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


def validate_stages(cfg: Config) -> None:
    st = cfg.stages
    for key in ("heads_only_steps", "ramp_steps"):
        v = getattr(st, key)
        _check(v is None or v >= 0, f"stages.{key}", "must be >= 0.")
    _check(st.unfreeze_last_n_blocks >= 0, "stages.unfreeze_last_n_blocks", "must be >= 0.")
    if cfg.adapt.mode != "full":
        _check(
            st.unfreeze_last_n_blocks == 0,
            "stages.unfreeze_last_n_blocks",
            f"cannot be combined with adapt.mode: {cfg.adapt.mode}; use adapt.freeze_blocks = depth - N instead.",
        )


def validate_adapt(cfg: Config) -> None:
    a = cfg.adapt
    _check(a.freeze_blocks >= 0, "adapt.freeze_blocks", "must be >= 0.")
    if a.mode == "full":
        _check(a.freeze_blocks == 0, "adapt.freeze_blocks", "only applies with adapt.mode: freeze or lora.")
    if a.mode == "freeze":
        _check(a.freeze_blocks >= 1, "adapt.freeze_blocks", "adapt.mode: freeze needs the number of blocks to freeze (>= 1).")
    _check(a.lora.rank >= 1, "adapt.lora.rank", f"must be at least 1, got {a.lora.rank}.")
    _check(a.lora.alpha > 0, "adapt.lora.alpha", "must be > 0.")
    _check(0.0 <= a.lora.dropout < 1.0, "adapt.lora.dropout", "must be in [0, 1).")
    _check(bool(a.lora.target_modules), "adapt.lora.target_modules", "must name at least one layer kind (e.g. [qkv]).")


# The order in which sections are checked: the first failing check is the one reported.
SECTION_CHECKS = (
    validate_data,
    validate_model,
    validate_crops,
    validate_ssl,
    validate_optim,
    validate_train,
    validate_guidance,
    validate_stages,
    validate_adapt,
)


def validate(cfg: Config) -> None:
    """Reject impossible combinations before any compute (raises UserError naming the key)."""
    for check in SECTION_CHECKS:
        check(cfg)
