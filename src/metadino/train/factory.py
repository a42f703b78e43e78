"""Factories: the only place that reads the config to build components."""

from __future__ import annotations

import copy

from metadino.config import Config, ModelConfig
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


def build_task(cfg: Config, backbone: Backbone) -> SSLTask:
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
    )
