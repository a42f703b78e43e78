"""Gram anchoring (ssl.gram, DINOv3 §4) wired into the task, the factory and the loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import yaml

from metadino.config import config_from_dict
from metadino.data.batch import Batch
from metadino.losses import GramLoss
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.factory import build_backbone_from_config, build_task
from metadino.train.loop import train
from metadino.train.optim import build_param_groups
from testkit import tiny_config


def _assert_states_equal(a, b) -> None:
    """Nested dicts/lists of tensors and plain values, bit for bit (as tests/train/test_loop.py)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_states_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_states_equal(x, y)
    elif torch.is_tensor(a):
        assert torch.equal(a, b)
    else:
        assert a == b


def _batch(masked: bool, B: int = 4, N: int = 16):
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(2 * B, N, dtype=torch.bool)
    if masked:
        masks[::2, :5] = True
    return Batch(torch.randn(2 * B, 3, 32, 32, generator=g), torch.randn(2 * B, 3, 16, 16, generator=g), masks)


def _task(image_table, **ssl):
    cfg = config_from_dict(tiny_config(image_table, ssl=ssl, model={"drop_path_rate": 0.0}))
    torch.manual_seed(0)
    return build_task(cfg, build_backbone_from_config(cfg.model, image_size=32)).train()


def test_off_by_default_no_gram_teacher_and_no_term(image_table):
    task = _task(image_table)
    assert task.gram_teacher is None
    assert "gram" not in task.training_step(_batch(masked=True), teacher_temp=0.07).terms
    assert not any(k.startswith("gram_teacher.") for k in task.state_dict())


def test_gram_term_value_total_and_frozen_teacher(image_table):
    task = _task(image_table, gram={"weight": 0.5})
    gram = task.gram_teacher
    assert gram is not None and not gram.training  # train() keeps it in eval mode
    assert all(not p.requires_grad for p in gram.parameters())
    student_ids = {id(p) for p in task.student.parameters()} | {id(p) for p in task.teacher.parameters()}
    assert not any(id(p) in student_ids for p in gram.parameters())  # a copy, shared with neither
    assert all(id(t) not in {id(p) for p in gram.parameters()} for pair in task.ema_pairs() for t in pair)
    groups = build_param_groups(task.student.backbone, [("dino_head", task.student.dino_head)], layer_decay=0.9,
                                patch_embed_lr_mult=0.2, train_patch_embed=True, freeze_tokens=True, unfreeze_last_n_blocks=0)
    assert not any(id(p) in {id(q) for q in gram.parameters()} for g in groups for p in g["params"])

    batch = _batch(masked=True)
    terms = task.training_step(batch, teacher_temp=0.07).terms
    out = task.student(batch.global_crops, batch.local_crops, batch.masks, mask_inputs=True)
    expected = GramLoss()(out["global_patches"], gram(batch.global_crops).patches)
    torch.testing.assert_close(terms["gram"], expected)
    assert terms["gram"] > 0  # masked tokens differ from the unmasked ones, even with equal weights
    torch.testing.assert_close(terms["total"], terms["dino"] + terms["ibot"] + 0.1 * terms["koleo"] + 0.5 * terms["gram"])
    terms["total"].backward()
    assert all(p.grad is None for p in gram.parameters())
    assert task.student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_gram_is_exactly_zero_when_the_student_sees_what_the_gram_teacher_sees(image_table):
    # Same weights (step 0), no masked token, no drop-path: identical patch tokens, identical Gram matrices.
    task = _task(image_table, gram={"weight": 1.0})
    assert task.training_step(_batch(masked=False), teacher_temp=0.07).terms["gram"].item() == 0.0


def _gram_run_cfg(image_table, **train_extra):
    # No masked crops and no drop-path, so the student's global forward at step 0 equals the Gram teacher's; no LR
    # warm-up, so the student moves at step 0 already.
    return tiny_config(image_table, ssl={"gram": {"weight": 1.0}, "ibot": {"mask_probability": 0.0}},
                       model={"drop_path_rate": 0.0}, optim={"warmup_steps": 0},
                       train={"steps": 4, "checkpoint_every": 1, "keep_checkpoints": 5, **train_extra})


def test_run_logs_gram_zero_at_step_0_then_positive_and_the_gram_teacher_never_moves(tmp_path, image_table):
    cfg = config_from_dict(_gram_run_cfg(image_table))
    torch.manual_seed(cfg.train.seed)
    init = build_backbone_from_config(cfg.model, image_size=32).state_dict()
    result = train(cfg, tmp_path / "run", progress=False)
    grams = [h["gram"] for h in result.history]
    assert grams[0] == 0.0 and all(g > 0 for g in grams[1:]), grams  # record 1 = the loss computed at step 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["gram"] for r in logged] == grams
    for path in sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt")):
        state = torch.load(path, weights_only=True)
        gram = {k[len("gram_teacher."):]: v for k, v in state["task"].items() if k.startswith("gram_teacher.")}
        assert gram.keys() == init.keys()
        assert all(torch.equal(gram[k], init[k]) for k in init), path.name
        names = [n for g in state["optimizer"]["param_groups"] for n in g["param_names"]]
        assert not any("gram" in n for n in names)
    student = state["task"]["student.backbone.blocks.0.attn.qkv.weight"]
    assert not torch.equal(student, init["blocks.0.attn.qkv.weight"])  # the student did train


def test_gram_run_under_bf16_is_finite(tmp_path, image_table):
    cfg = config_from_dict(_gram_run_cfg(image_table, steps=2, precision="bf16"))
    result = train(cfg, tmp_path / "run", progress=False)
    assert all(torch.isfinite(torch.tensor(h["gram"])) for h in result.history)


def test_gram_resume_in_new_process_is_bit_exact(tmp_path, image_table):
    """2N steps == N steps, process exit, --resume, N steps, with Gram anchoring on (and masked crops)."""
    cfg_dict = tiny_config(image_table, ssl={"gram": {"weight": 1.0}}, model={"drop_path_rate": 0.2})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_dict))
    train(config_from_dict(cfg_dict), tmp_path / "straight", progress=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "metadino", "train", str(cfg_path), "--out", str(tmp_path / "split"), "--quiet"]
    first = subprocess.run(cli + ["--stop-after", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(cli + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    a, b = load_latest_checkpoint(tmp_path / "straight"), load_latest_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 4 and any(k.startswith("gram_teacher.") for k in a["task"])
    _assert_states_equal(a["task"], b["task"])
    _assert_states_equal(a["optimizer"]["state"], b["optimizer"]["state"])
    _assert_states_equal({"rng": a["rng"]}, {"rng": b["rng"]})
    terms = lambda run: [(r["total"], r["gram"]) for r in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())]
    assert terms("straight") == terms("split")


def test_lora_gram_teacher_shares_the_frozen_base_and_copies_the_adapters(image_table):
    cfg = config_from_dict(tiny_config(image_table, ssl={"gram": {"weight": 1.0}}, model={"drop_path_rate": 0.0},
                                       adapt={"mode": "lora", "lora": {"rank": 2}}))
    torch.manual_seed(0)
    task = build_task(cfg, build_backbone_from_config(cfg.model, image_size=32)).train()
    student = {id(p): p.requires_grad for p in task.student.backbone.parameters()}
    gram_params = list(task.gram_teacher.parameters())
    shared = [p for p in gram_params if id(p) in student]
    assert shared and all(not student[id(p)] for p in shared)  # only frozen base weights are shared
    assert len(shared) < len(gram_params)  # the adapters are copies
    # zero-initialised adapters: the student computes the base model, so with no masked token the term is 0
    assert task.training_step(_batch(masked=False), teacher_temp=0.07).terms["gram"].item() == 0.0
