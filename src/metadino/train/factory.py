"""Factories: the only place that reads the config to build components."""

from __future__ import annotations

import copy
import os

import torch

from metadino.config import Config, GuideConfig, HeadConfig, ModelConfig
from metadino.data.crops import MultiCropAugmentation
from metadino.data.photometric import build_photometric
from metadino.data.reading import ReadOptions
from metadino.data.sources import ImageLayout
from metadino.data.table import MetadataTable
from metadino.data.targets import ColumnEncoder, Kind, build_encoder
from metadino.device import usable_cores
from metadino.errors import UserError
from metadino.guidance import GuideHead, MLPClassifier, MLPRegressor, PrototypeBank
from metadino.guidance.guides import GuideSet, GuideSpec
from metadino.guidance.schedule import lambda_ramp_start
from metadino.models.adapt import apply_lora, freeze_backbone
from metadino.models.backbone import Backbone
from metadino.models.heads import DINOHead
from metadino.models.preprocessing import Preprocessing
from metadino.models.registry import build_backbone
from metadino.train.distill import build_distill_pair, check_teacher_compatible
from metadino.train.optim import build_param_groups
from metadino.train.schedules import StepSchedule
from metadino.train.task import SSLModel, SSLTask


def preprocessing_from_config(cfg: Config, backbone: Backbone) -> Preprocessing:
    """What ``preprocessing.json`` records for a backbone trained with `cfg` (evaluation and embedding read it)."""
    c = cfg.crops
    names = build_layout(cfg).channel_names()
    return Preprocessing(image_size=c.global_size, in_chans=cfg.model.in_chans, patch_size=backbone.patch_size,
                         photometric=c.photometric, mean=None if c.mean is None else list(c.mean),
                         std=None if c.std is None else list(c.std), embed_dim=backbone.embed_dim,
                         channels=None if names is None else list(names))


def build_layout(cfg: Config) -> ImageLayout:
    """How the table names each row's image (``data.image_column`` / ``image_template`` / ``channel_columns`` …)."""
    d = cfg.data
    return ImageLayout(image_column=d.image_column, image_template=d.image_template,
                       channels=None if d.channels is None else tuple(d.channels),
                       channel_columns=None if d.channel_columns is None else tuple(d.channel_columns),
                       index_column=d.index_column, tile_columns=dict(d.tile_columns))


def build_read_options(cfg: Config) -> ReadOptions:
    """How files are decoded (``data.read``)."""
    r = cfg.data.read
    return ReadOptions(series=r.series, level=r.level, z=r.z, t=r.t, max_pixels=r.max_pixels, nodata=r.nodata,
                       nodata_value=r.nodata_value, fill_value=r.fill_value, voi_window=r.voi_window)


def build_backbone_from_config(model: ModelConfig, *, image_size: int) -> Backbone:
    return build_backbone(
        model.backbone,
        in_chans=model.in_chans,
        patch_size=model.patch_size,
        image_size=image_size,
        drop_path_rate=model.drop_path_rate,
        embed_dim=model.embed_dim,
        depth=model.depth,
        num_heads=model.num_heads,
        num_registers=model.num_registers,
        channel_expansion=model.channel_expansion,
        layerscale_init=model.layerscale_init,
    )


def adapt_backbone(cfg: Config, backbone: Backbone) -> None:
    """Apply `adapt.mode` to the (student) backbone in place: LoRA adapters or frozen layers.

    Frozen parameters get ``requires_grad=False``, so they never enter the optimizer; the stage flags
    (heads_only_steps, train_patch_embed, freeze_tokens) act on the trainable ones only.
    """
    a = cfg.adapt
    if a.mode == "full":
        return
    if a.freeze_blocks > backbone.depth:
        raise UserError(f"config key 'adapt.freeze_blocks': {a.freeze_blocks} exceeds the {backbone.depth} blocks of "
                        f"the backbone '{cfg.model.backbone}'; use at most {backbone.depth}.")
    if a.mode == "freeze":
        freeze_backbone(backbone, a.freeze_blocks)
    else:
        lo = a.lora
        apply_lora(backbone, rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, targets=lo.target_modules,
                   skip_blocks=a.freeze_blocks, train_norm=a.train_norm)


def build_distill_teacher(cfg: Config) -> Backbone:
    """The frozen distillation teacher of `ssl.distill.teacher` (eval mode, no gradients; the config has checked that
    it is a pretrained model)."""
    spec = cfg.ssl.distill.teacher
    if spec is None:
        raise ValueError("ssl.distill.teacher is not set")
    m = cfg.model
    teacher = build_backbone(spec, in_chans=m.in_chans, patch_size=m.patch_size, image_size=cfg.crops.global_size,
                             channel_expansion=m.channel_expansion)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def frozen_copy(backbone: Backbone) -> Backbone:
    """A frozen snapshot of `backbone` as it is now (the Gram teacher of `ssl.gram`): requires_grad False, eval
    mode. Parameters that are already frozen (LoRA base weights, frozen blocks) are shared, not copied: they can
    never change, and sharing halves their memory, as for the EMA teacher."""
    shared = {id(p): p for p in backbone.parameters() if not p.requires_grad}
    snapshot = copy.deepcopy(backbone, shared)
    snapshot.requires_grad_(False)
    return snapshot.eval()


def is_pretrained(model: ModelConfig) -> bool:
    """Training starts from released weights (hf:, metadino:, a directory) rather than a random builtin: preset."""
    return not model.backbone.startswith("builtin:")


def resolve_stages(cfg: Config) -> tuple[int, int]:
    """(heads_only_steps, ramp_steps). Unset values default to a two-stage finetune for pretrained
    backbones (10% heads only, 5% ramp: released weights come without DINO/iBOT heads, and random
    heads would otherwise push noise into the backbone) and to single-stage training from scratch."""
    pretrained = is_pretrained(cfg.model)
    st, steps = cfg.stages, cfg.train.steps
    heads_only = st.heads_only_steps if st.heads_only_steps is not None else (round(0.10 * steps) if pretrained else 0)
    ramp = st.ramp_steps if st.ramp_steps is not None else (round(0.05 * steps) if pretrained else 0)
    return heads_only, ramp


def resolve_num_workers(cfg: Config, device: torch.device) -> int:
    """`train.num_workers`, with auto resolved: 2 on a CPU or MPS; beside a GPU the cores this process may use shared
    among the node's training processes (torchrun's LOCAL_WORLD_SIZE), less one for the process itself, at most 16."""
    n = cfg.train.num_workers
    if n != "auto":
        return n
    if device.type != "cuda":
        return 2
    per_process = usable_cores() // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(1, min(16, per_process - 1))


def resolve_freeze_last_layer(cfg: Config) -> int:
    """Steps with frozen prototypes: `ssl.freeze_last_layer_steps`, or when unset 30 % of the run from scratch
    (measured: the DINO term leaves ln K and k-NN improves most) and 2 % from pretrained weights (FINO's 450 of
    20 000 iterations; the backbone's CLS tokens already differ, the heads-only stage does the rest)."""
    steps = cfg.ssl.freeze_last_layer_steps
    if steps is not None:
        return steps
    share = 0.02 if is_pretrained(cfg.model) else 0.30
    return round(share * cfg.train.steps)


def build_schedule(cfg: Config) -> StepSchedule:
    """The run's schedules (learning rate, weight decay, EMA momentum, teacher temperature, stages, frozen
    prototypes, guidance λ) as one pure function of the step."""
    o, s, lam = cfg.optim, cfg.ssl, cfg.guidance.lambda_
    heads_only, ramp = resolve_stages(cfg)
    return StepSchedule(
        total=cfg.train.steps, lr=o.lr, min_lr=o.min_lr, warmup_steps=o.warmup_steps,
        weight_decay=o.weight_decay, weight_decay_end=o.weight_decay_end,
        ema_momentum=s.ema_momentum, ema_momentum_end=s.ema_momentum_end,
        teacher_temp=s.teacher_temp, warmup_teacher_temp=s.warmup_teacher_temp,
        teacher_temp_warmup_steps=s.teacher_temp_warmup_steps,
        freeze_last_layer_steps=resolve_freeze_last_layer(cfg), heads_only_steps=heads_only, ramp_steps=ramp,
        guide_lambda_schedule=lam.schedule,
        guide_lambda_start=lambda_ramp_start(lam.warmup_steps, start=lam.start, unfreeze_step=heads_only),
    )


def build_optimizer(cfg: Config, task: SSLTask) -> torch.optim.AdamW:
    """AdamW over the task's parameter groups (layer-wise LR decay, stage flags); LRs are set by the schedule."""
    o, st = cfg.optim, cfg.stages
    groups = build_param_groups(
        task.student.backbone, task.named_heads(), layer_decay=o.layer_decay, patch_embed_lr_mult=o.patch_embed_lr_mult,
        train_patch_embed=st.train_patch_embed, freeze_tokens=st.freeze_tokens,
        unfreeze_last_n_blocks=st.unfreeze_last_n_blocks,
    )
    # fused: one kernel for all parameters, on CUDA and on CPU (10x faster than the per-tensor loop for 42M parameters
    # on one CPU core; rounding differs from it by ~1e-7 per step). MPS keeps the default.
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = len(devices) == 1 and devices <= {"cuda", "cpu"}
    return torch.optim.AdamW(groups, lr=0.0, betas=o.betas, fused=fused or None)


def build_augmentation(cfg: Config, patch_size: int) -> MultiCropAugmentation:
    c, ibot = cfg.crops, cfg.ssl.ibot
    photometric = build_photometric(c.photometric, in_chans=cfg.model.in_chans, mean=c.mean, std=c.std)
    return MultiCropAugmentation(
        global_size=c.global_size,
        local_size=c.local_size,
        n_local=c.n_local,
        global_scale=c.global_scale,
        local_scale=c.local_scale,
        hflip=c.hflip,
        vflip=c.vflip,
        photometric=photometric,
        patch_size=patch_size,
        mask_ratio=ibot.mask_ratio,
        mask_probability=ibot.mask_probability,
        label_guided_share=c.label_guided.share,
    )


def build_encoders(cfg: Config, table: MetadataTable) -> dict[str, ColumnEncoder]:
    """Encoders of every guided and conditioning column, built from the training rows."""
    encoders: dict[str, ColumnEncoder] = {}
    for g in cfg.guidance.guides:
        purpose = f"guide '{g.column}'"
        kind: Kind | None
        if g.head == "regression":
            kind = "continuous"
        elif g.multilabel is None:
            kind = None  # inferred: categorical or multilabel (a continuous column is an error below)
        else:
            kind = "multilabel" if g.multilabel else "categorical"
        enc = build_encoder(table, g.column, kind=kind, separator=g.separator, purpose=purpose)
        if g.head != "regression" and enc.kind == "continuous":
            enc = build_encoder(table, g.column, kind="categorical", purpose=purpose)
        encoders[g.column] = enc
    for g in cfg.guidance.guides:
        for column in g.given:
            if column not in encoders:
                encoders[column] = build_encoder(table, column, purpose=f"'given' of guide '{g.column}'")
    return encoders


def _guide_head(g: GuideConfig, enc: ColumnEncoder, in_dim: int) -> GuideHead:
    if g.head == "prototypical":
        return PrototypeBank(in_dim, enc.n_outputs, g.temperature, g.momentum, g.phi_min)
    if g.head == "regression":
        lo = g.target_min if g.target_min is not None else enc.minimum
        hi = g.target_max if g.target_max is not None else enc.maximum
        return MLPRegressor(in_dim, 1, g.hidden_dims, g.dropout, g.output_activation, lo, hi)
    return MLPClassifier(in_dim, enc.n_outputs, g.hidden_dims, g.dropout, multilabel=enc.kind == "multilabel")


def build_guides(cfg: Config, encoders: dict[str, ColumnEncoder], *, embed_dim: int, dino_out_dim: int) -> GuideSet | None:
    gc = cfg.guidance
    if not gc.guides:
        return None
    with torch.random.fork_rng(devices=[]):
        # Own RNG stream: adding guides leaves the DINO/iBOT heads (built next from the global stream) as in a
        # run without them, so arms with and without guidance start from identical SSL weights.
        torch.manual_seed(cfg.train.seed + 4_000_037)
        return _build_guide_set(cfg, encoders, embed_dim=embed_dim, dino_out_dim=dino_out_dim)


def _build_guide_set(cfg: Config, encoders: dict[str, ColumnEncoder], *, embed_dim: int, dino_out_dim: int) -> GuideSet:
    gc = cfg.guidance
    specs, heads = [], {}
    for g in gc.guides:
        weight = g.weight / gc.spurious_weight_divisor if g.role == "spurious" else g.weight
        spec = GuideSpec(g.column, g.role, weight, g.grl_space, tuple(g.given))
        in_dim = (dino_out_dim if g.grl_space == "prototype" else embed_dim) + sum(encoders[c].condition_dim for c in g.given)
        specs.append(spec)
        heads[g.column] = _guide_head(g, encoders[g.column], in_dim)
    conditioners = {c: encoders[c] for g in gc.guides for c in g.given}
    return GuideSet(specs, heads, conditioners, balance=gc.balance, balance_per_rank=gc.balance_per_rank,
                    balance_momentum=gc.balance_momentum)


def build_task(
    cfg: Config, backbone: Backbone, guides: GuideSet | None = None, *, distill_teacher: Backbone | None = None
) -> SSLTask:
    """Student and teacher share the initial weights; heads come from `ssl.head` / `ssl.ibot.head`.

    `adapt.mode` is applied to `backbone` here (LoRA / freezing); frozen parameters are shared with the
    EMA teacher rather than copied (identical by construction, half the memory). With
    `ssl.distill.teacher` the teacher is the frozen model `distill_teacher` (built from the spec when None).
    With `ssl.gram.weight > 0` the Gram teacher is a frozen copy of `backbone` as given (the step-0 weights;
    zero-initialised LoRA adapters included, so it computes the base model).
    """
    s = cfg.ssl
    adapt_backbone(cfg, backbone)
    gram_teacher = frozen_copy(backbone) if s.gram.weight > 0 else None
    if cfg.model.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    distill = s.distill.teacher is not None
    if distill and distill_teacher is None:
        distill_teacher = build_distill_teacher(cfg)
    head_dim = distill_teacher.embed_dim if distill_teacher is not None else backbone.embed_dim

    def head(h: HeadConfig, batchnorm_default: bool) -> DINOHead:
        return DINOHead(
            head_dim, h.out_dim, hidden_dim=h.hidden_dim, bottleneck_dim=h.bottleneck_dim, nlayers=h.nlayers,
            norm_last_layer=h.norm_last_layer, batchnorm=batchnorm_default if h.batchnorm is None else h.batchnorm,
        )

    dino_head = head(s.head, True)
    ibot_head = None
    if s.method == "dinov2":
        ibot_head = head(s.ibot.head, False) if s.ibot.separate_head else dino_head
    if distill_teacher is not None:
        check_teacher_compatible(backbone, distill_teacher, spec=str(s.distill.teacher), uses_patch_targets=s.method == "dinov2",
                                 crop_sizes=(cfg.crops.global_size,))
        student, teacher = build_distill_pair(backbone, distill_teacher, dino_head, ibot_head)
    else:
        student = SSLModel(backbone, dino_head, ibot_head)
        shared = {id(p): p for p in student.parameters() if not p.requires_grad}
        teacher = copy.deepcopy(student, shared)
    return SSLTask(
        student,
        teacher,
        method=s.method,
        n_global=2,
        student_temp=s.student_temp,
        dino_loss_weight=s.dino_loss_weight,
        ibot_loss_weight=s.ibot.loss_weight,
        koleo_loss_weight=s.koleo_loss_weight,
        center_momentum=s.center_momentum,
        ignore_diagonal=s.ignore_diagonal,
        sigreg_weight=s.sigreg.weight,
        sigreg_koleo_too=s.sigreg.koleo_too,
        sigreg_num_slices=s.sigreg.num_slices,
        sigreg_reference_scaling=s.sigreg.reference_scaling,
        guides=guides,
        distill=distill,
        gram_teacher=gram_teacher,
        gram_weight=s.gram.weight,
        gram_clip_negatives=s.gram.clip_negatives,
    )
