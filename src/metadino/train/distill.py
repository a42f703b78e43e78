"""Distillation: a larger frozen model provides the DINO/iBOT targets instead of the EMA teacher.

Design (``ssl.distill.teacher: <backbone spec>``):

- The teacher backbone is built from the spec (a pretrained HF checkpoint, export or run directory),
  frozen (``requires_grad=False``), always in ``eval()``, never updated: no EMA reaches it.
- Released backbones come without DINO/iBOT heads, so the heads live in the teacher's width: the student
  heads take inputs of width ``D_teacher``, and when the widths differ the student's CLS and patch tokens
  go through a learned ``Linear(D_student, D_teacher)`` projection (``SSLModel.proj``) first. The
  teacher's heads start as copies of the student heads and then follow them by EMA (the usual momentum
  schedule), applied to the frozen teacher's features. So the targets are ``EMA-heads(frozen teacher)``,
  the student learns to reproduce them through its own backbone + projection + heads.
- Everything else of the student side is unchanged: KoLeo reads the student's own CLS, metadata guides
  read the student CLS (student width) as in normal training; prototype banks, which the EMA teacher's
  CLS updates in normal training, are updated from the (detached) student CLS, because the frozen
  teacher's features live in another space.
- The exported model is the student backbone (there is no EMA copy of it).
- Patch sizes must match when iBOT is on (targets are per patch of the same grid); crop sizes must be
  multiples of the teacher's patch size in any case.
"""

from __future__ import annotations

import copy

from torch import nn

from metadino.errors import UserError
from metadino.models.backbone import Backbone
from metadino.models.heads import DINOHead
from metadino.train.task import SSLModel

__all__ = ["build_distill_pair", "check_teacher_compatible"]


def check_teacher_compatible(
    student: Backbone, teacher: Backbone, *, spec: str, uses_patch_targets: bool, crop_sizes: tuple[int, ...]
) -> None:
    """Raise UserError when the frozen teacher cannot produce targets for the student's crops."""
    key = "config key 'ssl.distill.teacher'"
    if teacher.in_chans != student.in_chans:
        raise UserError(f"{key}: {spec!r} takes {teacher.in_chans} input channels but the student takes "
                        f"{student.in_chans}; use a teacher with as many or fewer channels (it is expanded)")
    if uses_patch_targets and teacher.patch_size != student.patch_size:
        raise UserError(f"{key}: {spec!r} has patch size {teacher.patch_size} but the student has "
                        f"{student.patch_size}; iBOT targets are per patch, so use a teacher with the student's "
                        "patch size (or ssl.method: dinov1, which has no patch targets)")
    for size in crop_sizes:
        if size % teacher.patch_size:
            raise UserError(f"{key}: crop size {size} is not a multiple of the teacher's patch size "
                            f"{teacher.patch_size}; choose crop sizes divisible by both patch sizes")


def build_distill_pair(
    student_backbone: Backbone, teacher_backbone: Backbone, dino_head: DINOHead, ibot_head: DINOHead | None
) -> tuple[SSLModel, SSLModel]:
    """(student, teacher) for distillation. The heads must take the teacher's width as input.

    The student gets a ``Linear(D_student, D_teacher)`` projection when the widths differ; the teacher
    gets copies of the heads (sharing between DINO and iBOT head is kept) and the frozen backbone.
    """
    d_s, d_t = student_backbone.embed_dim, teacher_backbone.embed_dim
    if dino_head.in_dim != d_t:
        raise ValueError(f"the heads take {dino_head.in_dim} inputs but the teacher's width is {d_t}")
    # PyTorch's default Linear init keeps the feature scale roughly (the heads normalise later anyway).
    proj = nn.Linear(d_s, d_t) if d_s != d_t else None
    student = SSLModel(student_backbone, dino_head, ibot_head, proj=proj)
    t_dino, t_ibot = copy.deepcopy((dino_head, ibot_head))
    for p in teacher_backbone.parameters():
        p.requires_grad_(False)
    teacher = SSLModel(teacher_backbone.eval(), t_dino, t_ibot)
    return student, teacher
