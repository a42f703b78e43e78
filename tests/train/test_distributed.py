"""2-process DDP (gloo on CPU) through torchrun, against one process on the same global batch."""

from __future__ import annotations

import json

import pytest
import yaml

from testkit import tiny_config, torchrun_train


def _torchrun_train(cfg: dict, cfg_path, out, nproc: int = 2) -> None:
    torchrun_train(cfg, cfg_path, out, nproc=nproc)


def _losses(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_two_process_ddp_matches_single_process_batch(tmp_path, image_table):
    # KoLeo is per-rank by design and drop-path draws differ per rank: switch both off so that
    # the global-batch objective is identical. Batch: 2 ranks x 3 == 1 process x 6.
    common = {"ssl": {"koleo_loss_weight": 0.0}, "model": {"drop_path_rate": 0.0}}
    runs = {}
    for name, nproc, batch in (("ddp", 2, 3), ("single", 1, 6)):
        cfg = tiny_config(image_table, train={"steps": 3, "batch_size": batch, "log_every": 1, "checkpoint_every": 3}, **common)
        cfg["ssl"].update(common["ssl"])
        _torchrun_train(cfg, tmp_path / f"{name}.yaml", tmp_path / name, nproc=nproc)
        runs[name] = _losses(tmp_path / name)

    ddp, single = runs["ddp"], runs["single"]
    # Step 1 is computed before any update: same images, same crops, Sinkhorn-Knopp exact across ranks,
    # per-rank means averaged == global mean. So every term agrees up to float summation order.
    for key in ("dino_local", "dino_global", "ibot", "total"):
        assert ddp[0][key] == pytest.approx(single[0][key], rel=1e-5, abs=1e-6), key
    # The first backward: DDP-averaged gradients == single-process gradients, through the DINO head's batch norm
    # over the global batch too. (Its statistics over 6 near-identical tiny-network CLS tokens make the gradients
    # large — norms ~4e4 before clipping — so float summation order shows up at ~1e-4.)
    for key in ("grad_norm/backbone", "grad_norm/dino_head", "grad_norm/ibot_head"):
        assert ddp[0][key] == pytest.approx(single[0][key], rel=3e-4), key
    # Later steps follow the same trajectory; that conditioning amplifies rounding, hence the wider tolerance.
    for d, s in zip(ddp[1:], single[1:]):
        assert d["total"] == pytest.approx(s["total"], rel=2e-2)
    saved = yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text())
    assert saved["_run"]["world_size"] == 2


@pytest.mark.integration
def test_two_process_guided_run_keeps_replicas_identical(tmp_path):
    """Guides (prototype bank sync, balancing, guide-gradient averaging, SIGReg) under 2-process DDP."""
    from metadino.data.synthetic import generate_dataset

    table = generate_dataset(tmp_path / "syn", n_images=48, image_size=32, channels=4, seed=2)
    cfg = tiny_config(table, model={"in_chans": 4, "drop_path_rate": 0.1}, crops={"photometric": "microscopy"},
                      train={"steps": 3, "batch_size": 4, "checkpoint_every": 3})
    cfg["ssl"]["sigreg"] = {"weight": 0.05}
    cfg["guidance"] = {"balance": True, "guides": [
        {"column": "antibody", "head": "prototypical"},
        {"column": "plate", "role": "spurious", "hidden_dims": [16], "given": ["cell_line"]},
    ]}
    # the loop raises if any parameter (student, teacher, guide heads) differs across ranks at the end
    _torchrun_train(cfg, tmp_path / "cfg.yaml", tmp_path / "run")
    logged = _losses(tmp_path / "run")
    assert all("guide/plate/scale" in r for r in logged)


@pytest.mark.integration
def test_two_process_lora_student_distilled_keeps_replicas_identical(tmp_path, image_table):
    """LoRA (adapters on the last block, dropout) + distillation from a frozen wider teacher + a prototype
    guide under 2-process DDP: frozen shared weights, the projection and the teacher heads stay in sync."""
    import torch

    from metadino.models.registry import build_backbone
    from metadino.train.checkpoint import load_latest_checkpoint

    torch.manual_seed(1)
    teacher = build_backbone("builtin:vit-tiny", patch_size=8, image_size=32, embed_dim=48, depth=2, num_heads=2)
    teacher.save_pretrained(tmp_path / "teacher")
    cfg = tiny_config(image_table, train={"steps": 3, "batch_size": 3, "checkpoint_every": 3},
                      adapt={"mode": "lora", "freeze_blocks": 1, "lora": {"dropout": 0.1}},
                      ssl={"distill": {"teacher": str(tmp_path / "teacher")}},
                      guidance={"guides": [{"column": "label", "head": "prototypical"}]})
    _torchrun_train(cfg, tmp_path / "cfg.yaml", tmp_path / "run")  # the loop checks replicas at the end
    state = load_latest_checkpoint(tmp_path / "run")["task"]
    assert all(torch.equal(state[f"teacher.backbone.{k}"], v) for k, v in teacher.state_dict().items())
    assert state["student.proj.weight"].shape == (48, 32)


@pytest.mark.integration
def test_two_process_gram_anchoring_and_ema_balancing_match_one_process(tmp_path, image_table):
    """Gram anchoring is a per-image mean (no collective): the 2-rank term and first gradients equal one process on
    the same global batch. EMA balancing starts from the all-reduced norms, identical on both ranks (the loop
    checks every parameter and buffer — Gram teacher and averages included — across ranks at the end)."""
    runs = {}
    for name, nproc, batch in (("ddp", 2, 3), ("single", 1, 6)):
        cfg = tiny_config(image_table, train={"steps": 3, "batch_size": batch, "log_every": 1, "checkpoint_every": 3},
                          model={"drop_path_rate": 0.0})
        cfg["ssl"].update({"koleo_loss_weight": 0.0, "gram": {"weight": 1.0}})
        # constant λ: the guides have a gradient at step 0, so the averages start from identical models
        cfg["guidance"] = {"balance": True, "balance_momentum": 0.99, "lambda": {"schedule": "constant"}, "guides": [
            {"column": "label", "hidden_dims": [16]},
            {"column": "split", "role": "spurious", "hidden_dims": [16]},
        ]}
        _torchrun_train(cfg, tmp_path / f"{name}.yaml", tmp_path / name, nproc=nproc)
        runs[name] = _losses(tmp_path / name)
    ddp, single = runs["ddp"][0], runs["single"][0]
    assert single["gram"] > 0  # masked student tokens vs the unmasked Gram teacher, already at step 0
    keys = ["gram", "total", "guide/label/grad_norm", "guide/split/grad_norm", "guide/label/grad_norm_ema",
            "guide/split/grad_norm_ema", "guide/label/scale"]
    for key in keys:
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-7), key
    assert ddp["guide/label/grad_norm_ema"] == ddp["guide/label/grad_norm"] > 0  # started at the first norms
    for key in ("grad_norm/backbone", "grad_norm/dino_head"):
        assert ddp[key] == pytest.approx(single[key], rel=3e-4), key
