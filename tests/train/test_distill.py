"""Distillation from a frozen teacher: a tiny built-in teacher (width 48) and a tinier student (width 32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metadino.config import config_from_dict
from metadino.data.batch import Batch
from metadino.errors import UserError
from metadino.export import backbone_from_run, load_model
from metadino.losses import sinkhorn_knopp
from metadino.models.registry import build_backbone
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.factory import build_backbone_from_config, build_task
from metadino.train.loop import train
from testkit import tiny_config


@pytest.fixture
def teacher_dir(tmp_path) -> Path:
    torch.manual_seed(123)
    teacher = build_backbone("builtin:vit-tiny", patch_size=8, image_size=32, embed_dim=48, depth=2, num_heads=2)
    teacher.save_pretrained(tmp_path / "teacher")
    return tmp_path / "teacher"


def _cfg(table, teacher: Path, **sections):
    sections.setdefault("ssl", {})["distill"] = {"teacher": str(teacher)}
    sections.setdefault("model", {}).setdefault("drop_path_rate", 0.0)
    return config_from_dict(tiny_config(table, **sections))


def _batch(B=4, G=32, L=16, N=16):
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2 * B, N, dtype=torch.bool)
    masks[::2, :5] = True
    return Batch(torch.randn(2 * B, 3, G, G, generator=g), torch.randn(2 * B, 3, L, L, generator=g), masks)


def _task(cfg):
    torch.manual_seed(cfg.train.seed)
    return build_task(cfg, build_backbone_from_config(cfg.model, image_size=32)).train()


def test_targets_come_from_the_frozen_teacher_and_its_weights_never_change(image_table, teacher_dir):
    task = _task(_cfg(image_table, teacher_dir))
    reference = build_backbone(str(teacher_dir)).eval()  # the teacher as saved on disk
    assert task.teacher.backbone.embed_dim == 48 and task.student.backbone.embed_dim == 32
    assert (task.student.proj.in_features, task.student.proj.out_features) == (32, 48)
    assert task.student.dino_head.in_dim == task.teacher.dino_head.in_dim == 48
    assert not any(p.requires_grad for p in task.teacher.parameters())
    assert task.export_backbone is task.student.backbone

    opt = torch.optim.AdamW([p for p in task.student.parameters() if p.requires_grad], lr=1e-2)
    batch, losses = _batch(), []
    for _ in range(3):
        heads_before = {k: v.clone() for k, v in task.teacher.dino_head.state_dict().items()}
        terms = task.training_step(batch, teacher_temp=0.07).terms
        assert torch.isfinite(terms["total"])
        losses.append(float(terms["total"].detach()))
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
        task.update_teacher(0.9)
        # the EMA reaches the teacher heads only: t <- 0.9 t + 0.1 s
        for k, v in task.teacher.dino_head.state_dict().items():
            torch.testing.assert_close(v, 0.9 * heads_before[k] + 0.1 * task.student.dino_head.state_dict()[k])
    for k, v in reference.state_dict().items():
        assert torch.equal(task.teacher.backbone.state_dict()[k], v), k
    assert losses[-1] < losses[0]

    # targets == a direct computation: saved teacher backbone -> teacher heads -> Sinkhorn-Knopp
    with torch.no_grad():
        targets = task._teacher_targets(batch, teacher_temp=0.07)
        tok = reference(batch.global_crops)
        direct_dino = sinkhorn_knopp(task.teacher.dino_head(tok.cls).float(), 0.07)
        direct_ibot = sinkhorn_knopp(task.teacher.ibot_head(tok.patches[batch.masks]).float(), 0.07)
    torch.testing.assert_close(targets["dino"], direct_dino)
    torch.testing.assert_close(targets["ibot"], direct_ibot)


def test_distillation_run_with_a_guide_exports_the_student(tmp_path, image_table, teacher_dir):
    guides = {"guides": [{"column": "label", "head": "prototypical", "weight": 0.1}]}
    cfg = _cfg(image_table, teacher_dir, guidance=guides, train={"steps": 3})
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.finished and all(torch.isfinite(torch.tensor(h["total"])) for h in result.history)
    assert all("guide/label" in h for h in result.history)  # metadata guides act on the student
    state = load_latest_checkpoint(tmp_path / "run")["task"]
    saved = build_backbone(str(teacher_dir)).state_dict()
    assert all(torch.equal(state[f"teacher.backbone.{k}"], v) for k, v in saved.items())
    # the exported model is the (32-wide) student, from the run dir and from its final export alike
    student, pre = backbone_from_run(tmp_path / "run")
    assert student.embed_dim == 32 and pre.embed_dim == 32
    assert all(torch.equal(student.state_dict()[k], state[f"student.backbone.{k}"]) for k in student.state_dict())
    exported, _ = load_model(str(tmp_path / "run"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(x).cls, student(x).cls)


def test_equal_widths_need_no_projection_and_lora_students_distill(image_table, teacher_dir):
    lora = {"mode": "lora", "lora": {"rank": 2, "target_modules": ["qkv"]}}
    task = _task(_cfg(image_table, teacher_dir, model={"embed_dim": 48}, adapt=lora))
    assert task.student.proj is None
    terms = task.training_step(_batch(), teacher_temp=0.07).terms
    terms["total"].backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    pairs = task.ema_pairs()
    assert pairs and all(not any(tp is p for p in task.teacher.backbone.parameters()) for tp, _ in pairs)


def test_teacher_must_fit_the_student(tmp_path, image_table, teacher_dir):
    torch.manual_seed(0)
    p16 = build_backbone("builtin:vit-tiny", patch_size=16, image_size=32, embed_dim=48, depth=1, num_heads=2)
    p16.save_pretrained(tmp_path / "p16")
    with pytest.raises(UserError, match="ssl.distill.teacher.*patch size 16 but the student has 8"):
        _task(_cfg(image_table, tmp_path / "p16"))
    # dinov1 has no patch targets; the global crop must still be a multiple of the teacher's patch
    task = _task(_cfg(image_table, tmp_path / "p16", ssl={"method": "dinov1"}))
    assert torch.isfinite(task.training_step(_batch(), teacher_temp=0.07).terms["total"])
    with pytest.raises(UserError, match="randomly initialised"):
        _task(config_from_dict(tiny_config(image_table, ssl={"distill": {"teacher": "builtin:vit-small"}})))
