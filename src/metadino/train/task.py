"""The SSL task: what one training step computes, and the teacher-side state it commits.

The task owns its step: :meth:`SSLTask.training_step` returns the loss, its named terms and logging metrics;
:meth:`SSLTask.commit` applies the teacher-side updates (softmax centre, prototype banks, EMA balancing, EMA
teacher) once the step is known finite and the optimizer has stepped. It also names its parameter and clip
groups and prepares itself for DDP. Layout follows DINOv2 (crop-major rows ``crop * B + b``): the teacher sees
the unmasked global crops in eval mode, the student sees the masked global crops and the local crops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from metadino.data.batch import Batch, Target
from metadino.guidance.guides import GuideSet
from metadino.losses import DINOLoss, GramLoss, IBOTPatchLoss, KoLeoLoss, SIGReg, SoftmaxCenter, sinkhorn_knopp
from metadino.models.backbone import Backbone
from metadino.models.heads import DINOHead


class SSLModel(nn.Module):
    """Backbone + DINO head (+ iBOT head). Under DDP the student is wrapped together with the guide heads.

    ``proj`` (distillation into a narrower student) maps backbone tokens to the heads' input width; the
    returned ``global_cls`` stays the backbone's own CLS.
    """

    def __init__(self, backbone: Backbone, dino_head: DINOHead, ibot_head: DINOHead | None,
                 proj: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head
        self.proj = proj

    def forward(
        self, global_crops: Tensor, local_crops: Tensor | None, masks: Tensor | None, *, mask_inputs: bool
    ) -> dict[str, Tensor]:
        """global_crops [n_g*B, C, G, G]; local_crops [n_l*B, C, L, L] or None; masks bool [n_g*B, N].

        With ``mask_inputs`` (student) the masked patches are replaced by the mask token; the teacher
        passes ``mask_inputs=False`` and reads its iBOT targets at the same positions.
        Returns ``global_cls`` [n_g*B, D], ``global_patches`` [n_g*B, N, D] (the backbone's patch tokens of the
        global crops, masked ones included), ``dino_logits`` [(n_g+n_l)*B, K] (global rows first),
        ``bottleneck`` [n_g*B, bottleneck] and, with an iBOT head, ``ibot_logits`` [M, K].
        """
        g = self.backbone(global_crops, masks if mask_inputs else None)
        cls = [g.cls]
        if local_crops is not None:
            cls.append(self.backbone(local_crops).cls)
        feats = torch.cat(cls)
        if self.proj is not None:
            feats = self.proj(feats)
        logits, bottleneck = self.dino_head(feats, return_bottleneck=True)
        out = {"global_cls": g.cls, "global_patches": g.patches, "dino_logits": logits,
               "bottleneck": bottleneck[: g.cls.shape[0]]}
        if self.ibot_head is not None and masks is not None:
            # An empty selection still runs the head, so DDP sees every parameter used.
            patches = g.patches[masks]
            out["ibot_logits"] = self.ibot_head(self.proj(patches) if self.proj is not None else patches)
        return out


@dataclass
class StepOutput:
    """One training step: the loss to backpropagate, its named terms (``total`` included) and logging metrics."""

    loss: Tensor
    terms: dict[str, Tensor]
    metrics: dict[str, float | Tensor]


class _Online(nn.Module):
    """The modules that receive gradients: the student and the guide heads, called as one module so that one
    DDP wrapper averages the gradients of both."""

    def __init__(self, student: SSLModel, guides: GuideSet | None):
        super().__init__()
        self.student = student
        self.guides = guides

    def forward(
        self, glob: Tensor, local: Tensor | None, masks: Tensor | None, *, mask_inputs: bool, n_global: int,
        targets: dict[str, Target], guide_lambda: float,
    ) -> tuple[dict[str, Tensor], tuple[Tensor, dict[str, Tensor], dict[str, float | Tensor]] | None]:
        out = self.student(glob, local, masks, mask_inputs=mask_inputs)
        if self.guides is None:
            return out, None
        # Guides see the student CLS of the (masked) global crops (FINO) and, for prototype-space guides, the
        # DINO-head logits of the same crops.
        B = glob.shape[0] // n_global
        cls = out["global_cls"].view(n_global, B, -1)
        logits = out["dino_logits"].float()[: n_global * B].view(n_global, B, -1)
        return out, self.guides(cls, logits, targets, guide_lambda)


class SSLTask(nn.Module):
    """DINOv1 (DINO + softmax centering) or DINOv2 (DINO + iBOT + KoLeo, Sinkhorn-Knopp).

    With ``distill`` the teacher's backbone is a frozen, separate model (``train/distill.py``): the EMA
    only reaches the teacher's heads, prototype banks learn from the student CLS, and the student is
    the model that gets exported.

    With ``gram_teacher`` (Gram anchoring, DINOv3 §4) a frozen backbone — the starting weights of the student —
    embeds the unmasked global crops, and the Gram matrices of its patch tokens anchor those of the student's
    masked global-crop forward (``gram`` term). It is a submodule, so it is saved in checkpoints, but it is
    outside the student, the EMA and the optimizer, never gets gradients and is always in eval mode.
    """

    # Set with object.__setattr__ (outside the module tree, see __init__), declared here for the type checker.
    _online: _Online
    _online_call: Callable[..., tuple[dict[str, Tensor], Any]]
    _pending: list[Callable[[], None]]

    def __init__(
        self,
        student: SSLModel,
        teacher: SSLModel,
        *,
        method: str,
        n_global: int,
        student_temp: float,
        dino_loss_weight: float,
        ibot_loss_weight: float,
        koleo_loss_weight: float,
        center_momentum: float,
        ignore_diagonal: bool,
        sigreg_weight: float = 0.0,
        sigreg_koleo_too: bool = False,
        sigreg_num_slices: int = 1024,
        sigreg_reference_scaling: bool = False,
        guides: GuideSet | None = None,
        distill: bool = False,
        gram_teacher: Backbone | None = None,
        gram_weight: float = 0.0,
        gram_clip_negatives: str = "none",
    ):
        super().__init__()
        self.distill = distill
        self.student = student
        self.teacher = teacher
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.method = method
        self.n_global = n_global
        self.dino_loss = DINOLoss(student_temp=student_temp, ignore_diagonal=ignore_diagonal)
        self.ibot_loss = IBOTPatchLoss(student_temp=student_temp)
        self.koleo_loss = KoLeoLoss()
        out_dim = student.dino_head.last_layer.out_features
        self.dino_center = SoftmaxCenter(out_dim, momentum=center_momentum) if method == "dinov1" else None
        self.sigreg = SIGReg(num_slices=sigreg_num_slices, reference_scaling=sigreg_reference_scaling) if sigreg_weight > 0 else None
        if self.sigreg is not None and not sigreg_koleo_too:
            koleo_loss_weight = 0.0  # SIGReg replaces KoLeo (reference: koleo_too false)
        if (gram_teacher is not None) != (gram_weight > 0):
            raise ValueError("a Gram teacher needs gram_weight > 0, and gram_weight > 0 needs a Gram teacher")
        self.gram_teacher = gram_teacher
        if gram_teacher is not None:
            gram_teacher.requires_grad_(False)
            gram_teacher.eval()
        self.gram_loss = GramLoss(gram_clip_negatives) if gram_teacher is not None else None  # type: ignore[arg-type]
        self.weights = {"dino": dino_loss_weight, "ibot": ibot_loss_weight, "koleo": koleo_loss_weight, "sigreg": sigreg_weight,
                        "gram": gram_weight}
        self.guides = guides
        # Student + guide heads as one callable (DDP-wrapped by prepare_distributed). Set through object.__setattr__
        # so that neither it nor the DDP wrapper enters the module tree: the state dict keeps one copy of each weight.
        online = _Online(student, guides)
        object.__setattr__(self, "_online", online)
        object.__setattr__(self, "_online_call", online)
        # Teacher-side state updates (softmax centre, prototype banks, EMA balancing) wait for commit(), after the
        # step is known finite, so a NaN batch can never poison persistent buffers.
        object.__setattr__(self, "_pending", [])
        self._dino_stats: dict[str, Tensor] = {}

    def prepare_distributed(self, device: torch.device) -> None:
        """Wrap the student and the guide heads in one DDP module (call once, after ``.to(device)``, under torchrun)."""
        ddp = DistributedDataParallel(self._online, device_ids=[device.index] if device.type == "cuda" else None)
        object.__setattr__(self, "_online_call", ddp)

    def compile_backbones(self) -> None:
        """torch.compile the student's and the teacher's backbones in place (``nn.Module.compile``: parameter names,
        checkpoints and exports stay as they are)."""
        self.student.backbone.compile()
        self.teacher.backbone.compile()

    def named_heads(self) -> list[tuple[str, nn.Module]]:
        """The trained modules besides the backbone, by name: DINO head, a separate iBOT head, the distillation
        projection, the guide heads. The optimizer's parameter groups are built from these."""
        s = self.student
        heads: list[tuple[str, nn.Module]] = [("dino_head", s.dino_head)]
        if s.ibot_head is not None and s.ibot_head is not s.dino_head:
            heads.append(("ibot_head", s.ibot_head))
        if s.proj is not None:
            heads.append(("proj", s.proj))
        if self.guides is not None:
            heads.append(("guides", self.guides))
        return heads

    def clip_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters clipped together: the backbone and each head separately, as in DINOv2; the guide
        heads are not clipped (as in FINO)."""
        groups = {"backbone": list(self.student.backbone.parameters())}
        groups.update({name: list(m.parameters()) for name, m in self.named_heads() if name != "guides"})
        return {k: [p for p in v if p.requires_grad] for k, v in groups.items()}

    def train(self, mode: bool = True) -> SSLTask:
        super().train(mode)
        self.teacher.eval()  # no drop-path, no RoPE jitter on the teacher, ever
        if self.gram_teacher is not None:
            self.gram_teacher.eval()
        return self

    @torch.no_grad()
    def _teacher_targets(self, batch: Batch, teacher_temp: float) -> dict[str, Tensor]:
        out = self.teacher(batch.global_crops, None, batch.masks, mask_inputs=False)
        logits = out["dino_logits"].float()
        center = self.dino_center
        if center is not None:
            probs = center.probs(logits, teacher_temp)
            self._pending.append(lambda: center.update(logits))
        else:
            probs = sinkhorn_knopp(logits, teacher_temp)
        targets = {"dino": probs, "cls": out["global_cls"]}
        # Logged to see the uniform fixed point coming (train/watch.py): entropy of the targets (ln K when
        # uniform) and the spread of the teacher's logits across prototypes. Tensors: read only on logged steps.
        self._dino_stats = {
            "dino_target_entropy": -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean(),
            "dino_teacher_logit_std": logits.std(dim=-1).mean(),
        }
        if "ibot_logits" in out:
            targets["ibot"] = sinkhorn_knopp(out["ibot_logits"], teacher_temp)  # upcasts inside: no fp32 copy
        return targets

    def commit(self, momentum: float) -> None:
        """After a finite step and the optimizer step: the teacher-side updates of that step's forward (softmax
        centre, prototype banks, EMA balancing), then the EMA teacher with `momentum`."""
        for update in self._pending:
            update()
        self._pending.clear()
        self.update_teacher(momentum)

    def training_step(
        self, batch: Batch, *, teacher_temp: float, step: int = 0, guide_lambda: float = 0.0
    ) -> StepOutput:
        """One step's loss. Terms: dino_local, dino_global, dino, [ibot], [gram], [koleo], [sigreg],
        [guide/<column>], total. Metrics: DINO target statistics and the guides' logging scalars.

        `step` seeds SIGReg's random projections (the same on every rank and both crops).
        """
        self._pending.clear()
        glob, local, masks = batch.global_crops, batch.local_crops, batch.masks
        n_g = self.n_global
        B = glob.shape[0] // n_g
        use_masks = self.method == "dinov2"
        targets = self._teacher_targets(batch, teacher_temp)
        out, guided = self._online_call(glob, local, masks if use_masks else None, mask_inputs=use_masks, n_global=n_g,
                                        targets=batch.targets, guide_lambda=guide_lambda)

        logits = out["dino_logits"].float()
        K = logits.shape[-1]
        student_global = logits[: n_g * B].view(n_g, B, K)
        student_local = logits[n_g * B :].view(-1, B, K) if local is not None else None
        terms = self.dino_loss(student_global, student_local, targets["dino"].view(n_g, B, K))
        total = self.weights["dino"] * terms["dino"]

        if use_masks and "ibot_logits" in out:
            counts = masks.sum(dim=1).clamp(min=1)
            masks_weight = (1.0 / counts.float()).unsqueeze(1).expand_as(masks)[masks]
            # bf16 logits as they are: the loss upcasts them by blocks, bit for bit as .float() would
            terms["ibot"] = self.ibot_loss(out["ibot_logits"], targets["ibot"], masks_weight, n_images=n_g * B)
            total = total + self.weights["ibot"] * terms["ibot"]
        if self.gram_teacher is not None and self.gram_loss is not None:
            # DINOv3 conventions: the student's patch tokens of its (masked) global-crop forward, every token
            # (`tokens_used: all`), against the frozen model's tokens of the same crops, unmasked.
            with torch.no_grad():
                anchor = self.gram_teacher(glob).patches
            terms["gram"] = self.gram_loss(out["global_patches"], anchor)
            total = total + self.weights["gram"] * terms["gram"]
        if self.sigreg is not None:
            # FINO's code: weight x n_global x mean over global crops, on the pre-norm bottleneck.
            per_crop = [self.sigreg(z, seed_step=step) for z in out["bottleneck"].chunk(n_g)]
            terms["sigreg"] = torch.stack(per_crop).mean() * n_g
            total = total + self.weights["sigreg"] * terms["sigreg"]
        if self.method == "dinov2" and self.weights["koleo"] > 0:
            # Reference: weight x n_global x mean over global crops of the per-crop KoLeo.
            per_crop = [self.koleo_loss(c) for c in out["global_cls"].float().chunk(n_g)]
            terms["koleo"] = torch.stack(per_crop).mean() * n_g
            total = total + self.weights["koleo"] * terms["koleo"]
        metrics: dict[str, float | Tensor] = dict(self._dino_stats)
        if guided is not None:
            guide_total, contributions, guide_metrics = guided
            metrics.update(guide_metrics)
            for name, value in contributions.items():
                terms[f"guide/{name}"] = value
            total = total + guide_total
            # Distillation: the frozen teacher's CLS lives in another space than the student's guides.
            teacher_cls = (out["global_cls"].detach() if self.distill else targets["cls"]).view(n_g, B, -1)
            guides = self.guides
            if guides is not None:
                self._pending.append(lambda: guides.update(teacher_cls, batch.targets))
        terms["total"] = total
        return StepOutput(total, terms, metrics)

    @property
    def export_backbone(self) -> Backbone:
        """The backbone a finished run exports: the EMA teacher's, or the student's when distilling."""
        return self.student.backbone if self.distill else self.teacher.backbone

    def ema_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(teacher, student) parameters the EMA updates, matched by name: every trainable student
        parameter except those shared with the teacher (frozen base weights under LoRA/freezing); with
        ``distill`` only the heads (the teacher's backbone is frozen)."""
        teacher = dict(self.teacher.named_parameters())
        pairs = []
        for name, s in self.student.named_parameters():
            if not s.requires_grad or (self.distill and name.startswith("backbone.")):
                continue
            t = teacher.get(name)
            if t is not None and t is not s:
                pairs.append((t, s))
        return pairs

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA: teacher <- m * teacher + (1 - m) * student, over :meth:`ema_pairs`."""
        pairs = self.ema_pairs()
        if not pairs:
            return
        t: list[Tensor] = [tp for tp, _ in pairs]
        s = [sp.detach() for _, sp in pairs]
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1.0 - momentum)
