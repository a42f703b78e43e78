"""Factories: the only place that reads the config to build components."""

from __future__ import annotations

import copy

from metadino.config import Config, GuideConfig, ModelConfig
from metadino.data.table import MetadataTable
from metadino.data.targets import ColumnEncoder, build_encoder
from metadino.guidance.guides import GuideSet, GuideSpec
from metadino.guidance.heads import GuideHead, MLPClassifier, MLPRegressor, PrototypeBank
from metadino.data.crops import MultiCropAugmentation
from metadino.data.photometric import build_photometric
from metadino.models.backbone import Backbone, build_backbone
from metadino.models.heads import DINOHead
from metadino.train.task import SSLModel, SSLTask


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
    )


def resolve_stages(cfg: Config) -> tuple[int, int]:
    """(heads_only_steps, ramp_steps). Unset values default to a two-stage finetune for pretrained
    backbones (10% heads only, 5% ramp: released weights come without DINO/iBOT heads, and random
    heads would otherwise push noise into the backbone) and to single-stage training from scratch."""
    pretrained = not cfg.model.backbone.startswith("builtin:")
    st, steps = cfg.stages, cfg.train.steps
    heads_only = st.heads_only_steps if st.heads_only_steps is not None else (round(0.10 * steps) if pretrained else 0)
    ramp = st.ramp_steps if st.ramp_steps is not None else (round(0.05 * steps) if pretrained else 0)
    return heads_only, ramp


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
    )


def build_encoders(cfg: Config, table: MetadataTable) -> dict[str, ColumnEncoder]:
    """Encoders of every guided and conditioning column, built from the training rows."""
    encoders: dict[str, ColumnEncoder] = {}
    for g in cfg.guidance.guides:
        purpose = f"guide '{g.column}'"
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
    specs, heads = [], {}
    for g in gc.guides:
        weight = g.weight / gc.spurious_weight_divisor if g.role == "spurious" else g.weight
        spec = GuideSpec(g.column, g.role, weight, g.grl_space, tuple(g.given))
        in_dim = (dino_out_dim if g.grl_space == "prototype" else embed_dim) + sum(encoders[c].condition_dim for c in g.given)
        specs.append(spec)
        heads[g.column] = _guide_head(g, encoders[g.column], in_dim)
    conditioners = {c: encoders[c] for g in gc.guides for c in g.given}
    return GuideSet(specs, heads, conditioners, balance=gc.balance, balance_per_rank=gc.balance_per_rank)


def build_task(cfg: Config, backbone: Backbone, guides: GuideSet | None = None) -> SSLTask:
    """Student and teacher share the initial weights; heads come from `ssl.head` / `ssl.ibot.head`."""
    s = cfg.ssl
    if cfg.model.grad_checkpointing:
        backbone.set_grad_checkpointing(True)

    def head(h) -> DINOHead:
        return DINOHead(
            backbone.embed_dim, h.out_dim, hidden_dim=h.hidden_dim, bottleneck_dim=h.bottleneck_dim, nlayers=h.nlayers,
            norm_last_layer=h.norm_last_layer,
        )

    dino_head = head(s.head)
    ibot_head = None
    if s.method == "dinov2":
        ibot_head = head(s.ibot.head) if s.ibot.separate_head else dino_head
    student = SSLModel(backbone, dino_head, ibot_head)
    teacher = copy.deepcopy(student)
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
    )
