from __future__ import annotations

import math

import pytest
import torch

from metadino.train.schedules import linear_warmup, warmup_cosine

RECIPE_T = {"fmow": 25000, "hpa": 67500}


@pytest.mark.parametrize("recipe", ["fmow", "hpa"])
@pytest.mark.parametrize("world", [8, 32])
def test_lr_parity_with_reference(reference_values, recipe, world):
    """Reference §7: LR 0 -> 5e-5 * 4*sqrt(96*W/1024) over 3000 steps then constant; last layer frozen 450 steps."""
    iters = reference_values["sched/iters"].tolist()
    T = RECIPE_T[recipe]
    peak = 5e-5 * 4 * math.sqrt(96 * world / 1024)
    lr = [warmup_cosine(i, total=T, peak=peak, end=peak, warmup=3000) for i in iters]
    last = [0.0 if i < 450 else v for i, v in zip(iters, lr)]
    for name, ours in (("lr", lr), ("last_layer_lr", last)):
        ref = reference_values[f"sched/{recipe}/world{world}/{name}"]
        valid = torch.tensor(iters) < T  # the reference yields NaN past its horizon
        torch.testing.assert_close(torch.tensor(ours, dtype=torch.float64)[valid], ref[valid], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("recipe", ["fmow", "hpa"])
def test_momentum_temperature_wd_parity(reference_values, recipe):
    iters = reference_values["sched/iters"].tolist()
    T = RECIPE_T[recipe]
    valid = torch.tensor(iters) < T
    mom = torch.tensor([warmup_cosine(i, total=T, peak=0.994, end=1.0) for i in iters], dtype=torch.float64)
    torch.testing.assert_close(mom[valid], reference_values[f"sched/{recipe}/momentum"][valid], rtol=0, atol=1e-12)
    temp = torch.tensor([linear_warmup(i, start=0.04, end=0.07, warmup=0) for i in iters], dtype=torch.float64)
    torch.testing.assert_close(temp[valid], reference_values[f"sched/{recipe}/teacher_temp"][valid])
    wd = torch.tensor([warmup_cosine(i, total=T, peak=0.04, end=0.04) for i in iters], dtype=torch.float64)
    torch.testing.assert_close(wd[valid], reference_values[f"sched/{recipe}/weight_decay"][valid])


def test_warmup_cosine_shape():
    vals = [warmup_cosine(s, total=11, peak=1.0, end=0.0, warmup=1, start=0.5) for s in range(14)]
    assert vals[0] == 0.5 and vals[1] == 1.0
    assert vals[10] == pytest.approx(0.0, abs=1e-12) and vals[13] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(vals[1:], vals[2:]))


def test_linear_warmup():
    assert [linear_warmup(s, start=0.04, end=0.07, warmup=3) for s in range(5)] == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07])


def test_backbone_scale_parity(reference_values):
    from metadino.train.schedules import backbone_lr_scale

    iters = reference_values["sched/iters"].tolist()
    ours = torch.tensor([backbone_lr_scale(i, heads_only_steps=10000, ramp_steps=1000) for i in iters], dtype=torch.float64)
    torch.testing.assert_close(ours, reference_values["sched/backbone_effective_scale"], rtol=0, atol=1e-12)
    assert backbone_lr_scale(5, heads_only_steps=0, ramp_steps=0) == 1.0


def _lambda_cfg(lam: dict, stages: dict | None = None, backbone: str = "builtin:vit-tiny", steps: int = 20):
    from pathlib import Path

    from metadino.config import config_from_dict
    from testkit import tiny_config

    cfg = tiny_config(Path("meta.csv"), train={"steps": steps}, model={"backbone": backbone},
                      guidance={"lambda": {"schedule": "sigmoid", **lam}, "guides": [{"column": "label"}]})
    if stages is not None:
        cfg["stages"] = stages
    return config_from_dict(cfg)


def test_lambda_ramp_from_unfreeze_in_schedule_values():
    """guidance.lambda.start: unfreeze holds λ at 0 through the heads-only stage, then runs the ramp over the rest."""
    from metadino.guidance.schedule import guidance_lambda
    from metadino.train.factory import build_schedule

    stages = {"heads_only_steps": 4, "ramp_steps": 2}
    lam = lambda cfg, steps: [build_schedule(cfg)(s)["guide_lambda"] for s in steps]
    steps = [0, 3, 4, 5, 12, 19]
    from_step0 = lam(_lambda_cfg({}, stages), steps)
    from_unfreeze = lam(_lambda_cfg({"start": "unfreeze"}, stages), steps)
    assert from_step0 == pytest.approx([guidance_lambda(s, 20, "sigmoid") for s in steps])
    assert from_step0[1] > 0.5  # the released code: λ is large when the backbone unfreezes at step 4
    expected = [0.0, 0.0, 0.0] + [2 / (1 + math.exp(-10 * (s - 4) / 16)) - 1 for s in (5, 12, 19)]
    assert from_unfreeze == pytest.approx(expected, rel=1e-12)
    # the backbone scale (what "unfreeze" means) is 0 exactly where λ is held at 0 before the ramp starts
    cfg = _lambda_cfg({"start": "unfreeze"}, stages)
    assert [build_schedule(cfg)(s)["backbone_scale"] for s in (3, 4)] == [0.0, 0.5]
    # combined with warmup_steps: the later of the two
    late_warmup = lam(_lambda_cfg({"start": "unfreeze", "warmup_steps": 8}, stages), [7, 8, 12])
    assert late_warmup == pytest.approx([0.0, 0.0, 2 / (1 + math.exp(-10 * 4 / 12)) - 1])
    early_warmup = lam(_lambda_cfg({"start": "unfreeze", "warmup_steps": 2}, stages), [3, 12])
    assert early_warmup == pytest.approx([0.0, expected[4]])


def test_lambda_ramp_from_unfreeze_uses_the_resolved_default_stages_of_a_pretrained_backbone():
    from metadino.train.factory import build_schedule

    # stages unset + pretrained backbone: heads-only = 10 % of 50 steps = 5
    cfg = _lambda_cfg({"start": "unfreeze"}, backbone="hf:facebook/dinov2-small", steps=50)
    values = [build_schedule(cfg)(s)["guide_lambda"] for s in (4, 5, 6)]
    assert values[:2] == [0.0, 0.0] and values[2] == pytest.approx(2 / (1 + math.exp(-10 / 45)) - 1)
    scratch = _lambda_cfg({"start": "unfreeze"})  # builtin: no heads-only stage, so the ramp starts at step 0
    assert [build_schedule(scratch)(s)["guide_lambda"] for s in (0, 5)] == \
        [build_schedule(_lambda_cfg({}))(s)["guide_lambda"] for s in (0, 5)]
