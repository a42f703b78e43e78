"""Adaptation modes wired through the factory and the loop (LoRA, freezing), and cross-training: any SSL
method on any backbone."""

from __future__ import annotations

import pytest
import torch

from metadino.config import config_from_dict
from metadino.errors import UserError
from metadino.export import backbone_from_run, export_run
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.factory import build_backbone_from_config, build_task
from metadino.train.loop import train
from metadino.train.optim import build_param_groups
from testkit import tiny_config

LORA = {"mode": "lora", "lora": {"rank": 2, "alpha": 4.0, "target_modules": ["qkv", "mlp"]}}


def _cfg(table, **sections):
    sections.setdefault("model", {})
    sections["model"].setdefault("drop_path_rate", 0.0)
    return config_from_dict(tiny_config(table, **sections))


def _task(cfg):
    torch.manual_seed(cfg.train.seed)
    return build_task(cfg, build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size))


def _groups(task, cfg):
    return build_param_groups(task.student.backbone, [("dino_head", task.student.dino_head), ("ibot_head", task.student.ibot_head)],
                              layer_decay=0.5, patch_embed_lr_mult=0.2, train_patch_embed=cfg.stages.train_patch_embed)


def _init_backbone(cfg) -> dict[str, torch.Tensor]:
    """The student's initial weights: the loop seeds with train.seed right before building the backbone."""
    torch.manual_seed(cfg.train.seed)
    return build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size).state_dict()


def _opt_names(state) -> list[str]:
    return [n for g in state["optimizer"]["param_groups"] for n in g["param_names"]]


def test_lora_task_shares_frozen_base_and_layer_decay_reaches_adapters(image_table):
    cfg = _cfg(image_table, adapt=LORA)
    task = _task(cfg)
    s, t = dict(task.student.named_parameters()), dict(task.teacher.named_parameters())
    base = "backbone.blocks.1.attn.qkv.base_layer.weight"
    adapter = "backbone.blocks.1.attn.qkv.lora_A.default.weight"
    assert s[base] is t[base] and not s[base].requires_grad  # frozen base: one tensor for both
    assert s[adapter] is not t[adapter] and torch.equal(s[adapter], t[adapter])
    assert {id(tp) for tp, _ in task.ema_pairs()} == {id(t[n]) for n, p in s.items() if p.requires_grad}
    by_name = {n: g for g in _groups(task, cfg) for n in g["param_names"]}
    backbone_names = sorted(n for n in by_name if n.startswith("backbone."))
    assert all("lora_" in n or n.startswith("backbone.norm.") for n in backbone_names)
    assert len([n for n in backbone_names if "lora_" in n]) == 2 * 2 * 3  # 2 blocks x (qkv, fc1, fc2) x (A, B)
    # layer-wise decay (L = 2): block 1 -> 0.5 ** (2 + 1 - 2); adapters are decayed like weights, and are
    # backbone parameters for the two-stage schedule
    assert by_name["backbone." + adapter[len("backbone."):]]["lr_mult"] == pytest.approx(0.5)
    assert by_name["backbone.blocks.0.mlp.fc1.lora_B.default.weight"]["lr_mult"] == pytest.approx(0.25)
    assert by_name["backbone." + adapter[len("backbone."):]]["wd_mult"] == 1.0
    assert by_name["backbone." + adapter[len("backbone."):]]["stage_frozen"]


def test_full_mode_shares_nothing_and_ema_covers_every_parameter(image_table):
    task = _task(_cfg(image_table))
    student = list(task.student.parameters())
    assert all(p.requires_grad for p in student)
    assert not {id(p) for p in student} & {id(p) for p in task.teacher.parameters()}
    assert len(task.ema_pairs()) == len(student)


def test_freeze_mode_excludes_embedding_and_first_blocks_even_with_stage_flags(image_table):
    cfg = _cfg(image_table, adapt={"mode": "freeze", "freeze_blocks": 1}, stages={"train_patch_embed": True})
    task = _task(cfg)
    names = {n for g in _groups(task, cfg) for n in g["param_names"]}
    assert not any(n.startswith(("backbone.patch_embed", "backbone.blocks.0.", "backbone.cls_token", "backbone.pos_embed",
                                 "backbone.mask_token")) for n in names)
    assert "backbone.blocks.1.attn.qkv.weight" in names and "backbone.norm.weight" in names
    assert task.student.backbone.patch_embed.proj.weight is task.teacher.backbone.patch_embed.proj.weight


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ({"adapt": LORA, "stages": {"unfreeze_last_n_blocks": 1}}, "stages.unfreeze_last_n_blocks"),
        ({"adapt": {"mode": "freeze", "freeze_blocks": 3}}, r"adapt.freeze_blocks': 3 exceeds the 2 blocks"),
        ({"adapt": {**LORA, "lora": {"target_modules": ["q_proj"]}}}, r"'q_proj' matches no linear layer.*attn.qkv"),
    ],
)
def test_contradictory_adaptation_settings_are_user_errors(image_table, sections, match):
    with pytest.raises(UserError, match=match):
        _task(_cfg(image_table, **sections))


def test_freeze_mode_frozen_parameters_never_change_and_have_no_optimizer_state(tmp_path, image_table):
    cfg = _cfg(image_table, adapt={"mode": "freeze", "freeze_blocks": 1}, train={"steps": 3})
    init = _init_backbone(cfg)
    result = train(cfg, tmp_path / "run", progress=False)
    state = load_latest_checkpoint(tmp_path / "run")
    frozen = [k for k in init if k.startswith(("patch_embed", "blocks.0.", "cls_token", "pos_embed", "mask_token"))]
    for who in ("student", "teacher"):
        for k in frozen:
            assert torch.equal(state["task"][f"{who}.backbone.{k}"], init[k]), (who, k)
    assert not torch.equal(state["task"]["student.backbone.blocks.1.attn.qkv.weight"], init["blocks.1.attn.qkv.weight"])
    names = _opt_names(state)
    assert not any(n.removeprefix("backbone.") in frozen for n in names)
    assert len(state["optimizer"]["state"]) == len(names)  # Adam state exists only for trainable parameters
    assert 0 < result.trainable_params < result.total_params


def test_lora_trains_adapters_only_and_teacher_tracks_them(tmp_path, image_table):
    cfg = _cfg(image_table, adapt=LORA, train={"steps": 3})
    init = _init_backbone(cfg)
    train(cfg, tmp_path / "run", progress=False)
    task_state = load_latest_checkpoint(tmp_path / "run")["task"]
    for k, v in init.items():
        if k.startswith("norm."):
            continue
        key = k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias") \
            if any(s in k for s in ("attn.qkv.", "mlp.fc1.", "mlp.fc2.")) else k
        for who in ("student", "teacher"):
            assert torch.equal(task_state[f"{who}.backbone.{key}"], v), (who, key)
    b = "backbone.blocks.0.mlp.fc2.lora_B.default.weight"
    assert task_state[f"student.{b}"].abs().sum() > 0 and task_state[f"teacher.{b}"].abs().sum() > 0
    assert not torch.equal(task_state[f"student.{b}"], task_state[f"teacher.{b}"])  # EMA, not a copy
    names = _opt_names(load_latest_checkpoint(tmp_path / "run"))
    assert all("lora_" in n or n.startswith(("backbone.norm.", "dino_head.", "ibot_head.")) for n in names)
    # the finished run exported the merged teacher: a plain backbone equal to the adapted one
    merged, _ = backbone_from_run(tmp_path / "run")
    assert not any("lora" in k for k in merged.state_dict())


def test_lora_resume_is_exact(tmp_path, image_table):
    cfg = _cfg(image_table, adapt={**LORA, "lora": {**LORA["lora"], "dropout": 0.1}}, model={"drop_path_rate": 0.1})
    straight = train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", stop_after=2, progress=False)
    resumed = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert [h["total"] for h in straight.history] == [h["total"] for h in train_history(tmp_path / "split")]
    assert resumed.start_step == 2
    a, b = load_latest_checkpoint(tmp_path / "straight"), load_latest_checkpoint(tmp_path / "split")
    assert a["task"].keys() == b["task"].keys()
    for k in a["task"]:
        assert torch.equal(a["task"][k], b["task"][k]), k
    for i, st in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][i][n]) for n, v in st.items())


def train_history(run_dir):
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dinov1_on_a_dinov2_checkpoint(tmp_path, image_table):
    """DINOv1 (DINO loss + softmax centre, no iBOT) continues a transformers Dinov2 checkpoint."""
    import transformers

    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                       patch_size=8, image_size=32)
    torch.manual_seed(0)
    original = transformers.Dinov2Model(config)
    original.save_pretrained(tmp_path / "dinov2")
    cfg = _cfg(image_table, model={"backbone": f"hf:{tmp_path / 'dinov2'}"}, ssl={"method": "dinov1"},
               stages={"heads_only_steps": 0, "ramp_steps": 0}, train={"steps": 2})
    result = train(cfg, tmp_path / "run", progress=False)
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in result.history)
    assert all("ibot" not in h for h in result.history)
    state = load_latest_checkpoint(tmp_path / "run")["task"]
    assert not any(k.startswith("student.ibot_head") for k in state) and state["dino_center.center"].abs().sum() > 0
    w = "encoder.layer.0.mlp.fc1.weight"
    assert not torch.equal(state[f"student.backbone.model.{w}"], original.state_dict()[w])


def test_dinov2_on_a_dinov1_trained_builtin_export(tmp_path, image_table):
    """The reverse: a built-in ViT trained with DINOv1 is exported, then continued with DINOv2 (iBOT + KoLeo)."""
    first = _cfg(image_table, ssl={"method": "dinov1"}, train={"steps": 2})
    train(first, tmp_path / "v1", progress=False)
    export_run(tmp_path / "v1", tmp_path / "v1_export")
    exported, _ = backbone_from_run(tmp_path / "v1")
    second = _cfg(image_table, model={"backbone": str(tmp_path / "v1_export")}, ssl={"method": "dinov2"},
                  stages={"heads_only_steps": 0, "ramp_steps": 0}, train={"steps": 2})
    task = _task(second)
    for k, v in exported.state_dict().items():  # the DINOv2 run starts from the DINOv1 weights
        assert torch.equal(task.student.backbone.state_dict()[k], v), k
    result = train(second, tmp_path / "v2", progress=False)
    assert all("ibot" in h and "koleo" in h and torch.isfinite(torch.tensor(h["total"])) for h in result.history)


def test_num_workers_auto_is_two_on_a_cpu_and_the_node_cores_shared_beside_gpus(image_table, monkeypatch):
    import os

    from metadino.train.factory import resolve_num_workers

    auto = config_from_dict(tiny_config(image_table, train={"num_workers": "auto"}))
    assert resolve_num_workers(auto, torch.device("cpu")) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resolve_num_workers(auto, torch.device("cuda", 3)) == 7  # 64 cores / 8 processes, one for the process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_num_workers(auto, torch.device("cuda", 0)) == 16  # at most 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert resolve_num_workers(auto, torch.device("cuda", 0)) == 1
    fixed = config_from_dict(tiny_config(image_table, train={"num_workers": 5}))
    assert resolve_num_workers(fixed, torch.device("cuda", 0)) == 5
    with pytest.raises(UserError, match=r"train\.num_workers.*auto"):
        config_from_dict(tiny_config(image_table, train={"num_workers": "many"}))
    with pytest.raises(UserError, match=r"train\.num_workers.*must be auto or >= 0"):
        config_from_dict(tiny_config(image_table, train={"num_workers": -1}))
