"""train.compile: the compiled backbone computes what the eager one does (within float tolerance), and a run with it
compiles both backbones and keeps the checkpoint layout.

Losses are not compared across the two: a fresh network's CLS tokens are ~90 % alike, and the teacher's sharp
Sinkhorn-Knopp targets (temperature 0.04) turn last-bit differences of its outputs into 1e-3 differences of the loss."""

from __future__ import annotations

import copy

import pytest
import torch

from metadino.config import config_from_dict
from metadino.models.vit import VisionTransformer
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.loop import fit, train
from metadino.train.run import build_run
from testkit import tiny_config


@pytest.mark.integration
def test_compiled_backbone_equals_eager():
    torch.manual_seed(0)
    eager = VisionTransformer(image_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=2, num_heads=2,
                              drop_path_rate=0.0).eval()
    compiled = copy.deepcopy(eager)
    compiled.compile()
    images, masks = torch.randn(4, 3, 32, 32), torch.zeros(4, 16, dtype=torch.bool)
    masks[0, :5] = True
    with torch.no_grad():
        a, b = eager(images, masks), compiled(images, masks)
    torch.testing.assert_close(b.cls, a.cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.patches, a.patches, rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_a_compiled_run_trains_and_keeps_the_checkpoint_layout(tmp_path, image_table):
    cfg = tiny_config(image_table, train={"steps": 1, "checkpoint_every": 1})
    train(config_from_dict(cfg), tmp_path / "eager", progress=False)
    cfg["train"]["compile"] = True
    run = build_run(config_from_dict(cfg), tmp_path / "compiled", progress=False)
    assert run.task.student.backbone._compiled_call_impl is not None
    assert run.task.teacher.backbone._compiled_call_impl is not None
    assert fit(run, progress=False).finished
    ea, co = load_latest_checkpoint(tmp_path / "eager")["task"], load_latest_checkpoint(tmp_path / "compiled")["task"]
    assert ea.keys() == co.keys()  # nn.Module.compile: the same parameter names, checkpoints load either way
