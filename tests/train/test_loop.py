from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

from metadino.config import config_from_dict
from metadino.errors import UserError
from metadino.losses.koleo import KoLeoLoss
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.loop import TrainingDiverged, train
from testkit import tiny_config, write_image_table


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "metadino", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            _assert_states_equal(a[k], b[k])
        elif isinstance(a[k], list):
            assert len(a[k]) == len(b[k])
            for x, y in zip(a[k], b[k]):
                _assert_states_equal({"v": x}, {"v": y}) if not isinstance(x, dict) else _assert_states_equal(x, y)
        else:
            assert a[k] == b[k], k


@pytest.mark.integration
def test_resume_in_new_process_is_bit_exact(tmp_path, image_table):
    """2N steps in one go == N steps, process exit, --resume, N steps (weights, optimizer, RNG, centers)."""
    cfg_dict = tiny_config(image_table, model={"drop_path_rate": 0.2})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_dict))

    train(config_from_dict(cfg_dict), tmp_path / "straight", progress=False)

    first = _cli("train", str(cfg_path), "--out", str(tmp_path / "split"), "--stop-after", "2", "--quiet")
    assert first.returncode == 0, first.stderr
    assert "stopped at step 2 of 4" in first.stdout
    # Workers must not change the data: the second half runs with 2 loader processes.
    second = _cli("train", str(cfg_path), "train.num_workers=2", "--out", str(tmp_path / "split"), "--resume", "--quiet")
    assert second.returncode == 0, second.stderr

    a = load_latest_checkpoint(tmp_path / "straight")
    b = load_latest_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 4
    _assert_states_equal(a["task"], b["task"])
    _assert_states_equal(a["optimizer"]["state"], b["optimizer"]["state"])
    _assert_states_equal({"rng": a["rng"]}, {"rng": b["rng"]})
    losses = lambda run: [json.loads(line)["total"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert losses("straight") == losses("split")


def test_dinov1_softmax_center_is_checkpointed(tmp_path, image_table):
    cfg = config_from_dict(tiny_config(image_table, ssl={"method": "dinov1", "teacher_temp": 0.07, "teacher_temp_warmup_steps": 2}))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.finished and all(torch.isfinite(torch.tensor(h["total"])) for h in result.history)
    state = load_latest_checkpoint(tmp_path / "run")
    assert state["task"]["dino_center.center"].abs().sum() > 0  # the centre moved and is saved
    assert not any(k.startswith("student.ibot_head") for k in state["task"])
    assert [h["teacher_temp"] for h in result.history[:3]] == pytest.approx([0.04, 0.055, 0.07])


def test_bf16_autocast_runs_finite(tmp_path, image_table):
    cfg = config_from_dict(tiny_config(image_table, train={"precision": "bf16", "steps": 2}))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.finished and all(torch.isfinite(torch.tensor(h["total"])) for h in result.history)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_step_and_breakdown(tmp_path, image_table, monkeypatch, bad):
    cfg = config_from_dict(tiny_config(image_table))
    calls = {"n": 0}
    original = KoLeoLoss.forward

    def flaky(self, x):
        calls["n"] += 1
        out = original(self, x)
        return out * bad if calls["n"] > 2 else out  # finite for step 0 (two global crops), then broken

    monkeypatch.setattr(KoLeoLoss, "forward", flaky)
    with pytest.raises(TrainingDiverged) as e:
        train(cfg, tmp_path / "run", progress=False)
    msg = str(e.value)
    assert "step 1" in msg and "koleo=" in msg and ("nan" in msg or "inf" in msg)
    # the step-0 checkpoint was not written (period 2) and nothing half-written is left
    assert not list((tmp_path / "run" / "checkpoints").glob("*.pt")) if (tmp_path / "run" / "checkpoints").exists() else True


def test_existing_run_is_never_overwritten(tmp_path, image_table):
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 2}))
    train(cfg, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="already holds a run"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="holds no checkpoint"):
        train(cfg, tmp_path / "other", resume=True, progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before


def test_channel_mismatch_names_the_row(tmp_path, image_table):
    cfg = config_from_dict(tiny_config(image_table, model={"in_chans": 4}, crops={"photometric": "none"}))
    with pytest.raises(UserError, match=r"meta.csv row \d+: image .* has 3 channel\(s\) but model.in_chans=4"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.parametrize("cls_name", ["Dinov2WithRegistersModel", "DINOv3ViTModel"])
def test_hf_backbones_train(tmp_path, image_table, cls_name):
    import transformers

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32)
    if cls_name == "DINOv3ViTModel":
        model = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(num_register_tokens=2, **kw))
    else:
        model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(num_register_tokens=2, **kw))
    model.save_pretrained(tmp_path / "hf")
    cfg = config_from_dict(tiny_config(image_table, model={"backbone": f"hf:{tmp_path / 'hf'}"}, train={"steps": 2}))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.finished and all(torch.isfinite(torch.tensor(h["total"])) for h in result.history)
    state = load_latest_checkpoint(tmp_path / "run")
    before = model.state_dict()
    moved = [k for k, v in state["task"].items() if k.startswith("student.backbone.model.") and
             k[len("student.backbone.model."):] in before and not torch.equal(v, before[k[len("student.backbone.model."):]])]
    assert moved  # the pretrained backbone itself was trained, not only the heads


@pytest.mark.integration
def test_sigterm_checkpoints_and_exits_143(tmp_path, image_table):
    """Preemption: SIGTERM lets the step finish, writes a checkpoint, exits 143; --resume continues."""
    import signal
    import time

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(image_table, train={"steps": 100000, "checkpoint_every": 100000})))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metadino", "train", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = load_latest_checkpoint(tmp_path / "run")["step"]
    assert step >= 2 and "--resume" in out
    again = _cli("train", "--out", str(tmp_path / "run"), "--resume", "--stop-after", str(step + 1), "--quiet")
    assert again.returncode == 0, again.stderr
    assert load_latest_checkpoint(tmp_path / "run")["step"] == step + 1


def test_two_stage_heads_only_then_ramp(tmp_path, image_table):
    """Stage 1: only heads and the patch embedding move; blocks get gradients (warm Adam moments) but LR 0."""
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 3, "checkpoint_every": 1, "keep_checkpoints": 5},
                                       stages={"heads_only_steps": 2, "ramp_steps": 1}, model={"drop_path_rate": 0.0}))
    torch.manual_seed(cfg.train.seed)
    from metadino.train.factory import build_backbone_from_config

    init = build_backbone_from_config(cfg.model, image_size=32).state_dict()
    result = train(cfg, tmp_path / "run", progress=False)
    assert [h["backbone_scale"] for h in result.history] == [0.0, 0.0, 1.0]
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    after2 = torch.load(ckpts[1], weights_only=True)
    student = {k[len("student.backbone."):]: v for k, v in after2["task"].items() if k.startswith("student.backbone.")}
    assert torch.equal(student["blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"])
    assert torch.equal(student["cls_token"], init["cls_token"])
    assert not torch.equal(student["patch_embed.proj.weight"], init["patch_embed.proj.weight"])
    # Adam moments of frozen blocks are warm (reference §0.4)
    names = [n for g in after2["optimizer"]["param_groups"] for n in g["param_names"]]
    state = after2["optimizer"]["state"]
    idx = names.index("backbone.blocks.0.attn.qkv.weight")
    assert state[idx]["exp_avg_sq"].abs().sum() > 0
    after3 = torch.load(ckpts[2], weights_only=True)["task"]
    assert not torch.equal(after3["student.backbone.blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"])


def _with_boxes(table, bad_row: int | None = None):
    lines = table.read_text().splitlines()
    out = [lines[0] + ",x0,y0,x1,y1"]
    for i, line in enumerate(lines[1:]):
        box = "30,2,12,20" if i == bad_row else ("4,4,20,20" if i % 2 == 0 else ",,,")
        out.append(f"{line},{box}")
    table.write_text("\n".join(out) + "\n")
    return table


def test_label_guided_crops_are_wired_into_training_and_bad_boxes_fail_before_compute(image_table, tmp_path):
    lg = {"label_guided": {"share": 1.0, "bbox_columns": ["x0", "y0", "x1", "y1"]}}
    cfg = config_from_dict(tiny_config(_with_boxes(image_table), crops=lg, train={"steps": 2, "checkpoint_every": 2}))
    assert train(cfg, tmp_path / "run", progress=False).finished
    bad_table = _with_boxes(write_image_table(tmp_path / "other"), bad_row=3)  # x0 30 > x1 12 in data row 4
    cfg = config_from_dict(tiny_config(bad_table, crops=lg))
    with pytest.raises(UserError, match=r"row 4.*x1|x1.*row 4"):
        train(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_prototypes_stay_frozen_for_the_default_share_of_a_from_scratch_run(tmp_path, image_table):
    # Unset ssl.freeze_last_layer_steps: 30 % of a from-scratch run (10 steps -> 3) with LR 0 on both prototype
    # layers; the rest of the DINO head trains from the first step.
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 10, "checkpoint_every": 1, "keep_checkpoints": 20}))
    result = train(cfg, tmp_path / "run", progress=False)
    assert [h["last_layer_lr"] == 0.0 for h in result.history] == [True] * 3 + [False] * 7

    def weights(step: int, name: str) -> torch.Tensor:
        path = tmp_path / "run" / "checkpoints" / f"step_{step:08d}.pt"
        return torch.load(path, map_location="cpu", weights_only=False)["task"][name]

    for layer in ("student.dino_head.last_layer.weight", "student.ibot_head.last_layer.weight"):
        assert torch.equal(weights(1, layer), weights(3, layer)) and not torch.equal(weights(3, layer), weights(4, layer))
    first_mlp = "student.dino_head.mlp.0.weight"
    assert not torch.equal(weights(1, first_mlp), weights(2, first_mlp))


def test_loop_feeds_the_uniform_target_watch_and_prints_its_warning_once(tmp_path, image_table, capsys, monkeypatch):
    # Every step counts as "at ln K" (margin 1000 %), so the watch fills its window after skip + window steps.
    import metadino.train.run as run
    from metadino.train.watch import UniformTargetWatch

    fed = []

    class Everything(UniformTargetWatch):
        def update(self, step, dino):
            fed.append((step, dino))
            return super().update(step, dino)

    monkeypatch.setattr(run, "UniformTargetWatch", lambda k, window: Everything(k, window=window, margin=10.0, skip=2))
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 30, "checkpoint_every": 30, "log_every": 10}))
    result = train(cfg, tmp_path / "run", progress=False)
    assert [s for s, _ in fed] == list(range(1, 31))  # the step count after each step, as logged
    assert fed[-1][1] == pytest.approx(result.history[-1]["dino"])
    err = capsys.readouterr().err
    assert err.count(f"warning: the DINO (CLS) term has stayed at ln K = {math.log(64):.3f}") == 1


def test_a_run_saved_before_the_gram_and_fino_paper_keys_existed_still_resumes(tmp_path, image_table):
    from metadino.train.checkpoint import list_checkpoints

    cfg = config_from_dict(tiny_config(image_table))
    train(cfg, tmp_path / "run", progress=False, stop_after=2)
    path = list_checkpoints(tmp_path / "run")[0]
    state = torch.load(path, weights_only=True)
    del state["config"]["ssl"]["gram"], state["config"]["guidance"]["balance_momentum"]
    del state["config"]["guidance"]["lambda"]["start"]
    torch.save(state, path)
    assert train(cfg, tmp_path / "run", progress=False, resume=True).finished
    gram_on = config_from_dict(tiny_config(image_table, ssl={"gram": {"weight": 1.0}}))
    with pytest.raises(UserError, match="ssl.gram"):
        train(gram_on, tmp_path / "run", progress=False, resume=True)


def test_the_loop_clips_every_group_at_optim_clip_grad_and_logs_the_norms(tmp_path, image_table, monkeypatch):
    import metadino.train.loop as loop

    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def recording(params, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return real(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(loop.torch.nn.utils, "clip_grad_norm_", recording)
    cfg = config_from_dict(tiny_config(image_table, optim={"clip_grad": 0.5}, train={"steps": 2, "log_every": 1}))
    result = train(cfg, tmp_path / "run", progress=False)
    assert calls == [0.5] * 6  # backbone, DINO head, iBOT head, each step
    assert {"grad_norm/backbone", "grad_norm/dino_head", "grad_norm/ibot_head"} <= set(result.history[-1])
    calls.clear()
    train(config_from_dict(tiny_config(image_table, optim={"clip_grad": 0.0}, train={"steps": 1})), tmp_path / "off",
          progress=False)
    assert calls == [math.inf] * 3  # 0 disables clipping; the norms are still measured


def test_the_optimizer_runs_at_the_scheduled_lr_and_weight_decay_of_every_group(tmp_path, image_table):
    from metadino.train.factory import build_schedule

    cfg = config_from_dict(tiny_config(image_table, optim={"weight_decay": 0.04, "weight_decay_end": 0.4},
                                       ssl={"freeze_last_layer_steps": 0}, train={"steps": 4, "checkpoint_every": 4}))
    train(cfg, tmp_path / "run", progress=False)
    groups = load_latest_checkpoint(tmp_path / "run")["optimizer"]["param_groups"]
    last = build_schedule(cfg)(3)  # the values of the last step taken
    assert last["weight_decay"] > 0.04
    for g in groups:
        assert g["weight_decay"] == pytest.approx(last["weight_decay"] * g["wd_mult"])
        assert g["lr"] == pytest.approx((last["last_layer_lr"] if g["is_last_layer"] else last["lr"]) * g["lr_mult"])


def test_label_guided_regions_reach_the_local_crops(tmp_path, image_table):
    from metadino.train.run import build_run

    boxes = _with_boxes(image_table)

    def first_batch(crops: dict, name: str):
        cfg = config_from_dict(tiny_config(boxes, crops=crops))
        return next(iter(build_run(cfg, tmp_path / name).batches))

    guided = first_batch({"label_guided": {"share": 1.0, "bbox_columns": ["x0", "y0", "x1", "y1"]}}, "lg")
    plain = first_batch({}, "plain")
    assert torch.equal(guided.global_crops, plain.global_crops)  # same data order and global views
    assert not torch.equal(guided.local_crops, plain.local_crops)  # the local crops are centred on the boxes


def _break_koleo_from(monkeypatch, first_bad_call: int, last_bad_call: int | None = None):
    """KoLeo turns NaN from its `first_bad_call`-th call (two calls per step: one per global crop)."""
    calls = {"n": 0}
    original = KoLeoLoss.forward

    def flaky(self, x):
        calls["n"] += 1
        bad = calls["n"] >= first_bad_call and (last_bad_call is None or calls["n"] <= last_bad_call)
        return original(self, x) * (float("nan") if bad else 1.0)

    monkeypatch.setattr(KoLeoLoss, "forward", flaky)


def test_the_divergence_message_is_true_and_names_the_rows_of_the_batch(tmp_path, image_table, monkeypatch):
    _break_koleo_from(monkeypatch, 3)  # step 1
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 4, "checkpoint_every": 4}))
    with pytest.raises(TrainingDiverged) as e:
        train(cfg, tmp_path / "run", progress=False)
    msg = str(e.value)
    assert "no checkpoint had been written yet" in msg and "intact" not in msg
    assert "The batch held meta.csv row " in msg and ".png)" in msg
    monkeypatch.undo()
    _break_koleo_from(monkeypatch, 5)  # step 2, after the step-1 checkpoint
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 4, "checkpoint_every": 1}))
    with pytest.raises(TrainingDiverged, match="the last checkpoint \\('step_00000002.pt'\\) is intact"):
        train(cfg, tmp_path / "run2", progress=False)


def test_a_skipped_non_finite_step_changes_nothing_and_the_budget_stops_the_run(tmp_path, image_table, monkeypatch):
    # Step 2 (KoLeo calls 5 and 6) is non-finite; checkpoints after steps 2 and 3 must hold the same state.
    _break_koleo_from(monkeypatch, 5, 6)
    guides = {"guides": [{"column": "label", "head": "prototypical", "weight": 0.1}]}  # a prototype bank too
    cfg = config_from_dict(tiny_config(image_table, ssl={"method": "dinov2"}, guidance=guides,
                                       train={"steps": 4, "checkpoint_every": 1, "keep_checkpoints": 4,
                                              "on_nonfinite": "skip", "max_skipped_steps": 1}))
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.finished
    skipped = [h for h in result.history if h.get("skipped")]
    assert [h["step"] for h in skipped] == [3]  # the third step taken (step index 2) was skipped and logged

    def state(step):
        return torch.load(tmp_path / "run" / "checkpoints" / f"step_{step:08d}.pt", weights_only=False)

    before, after = state(2), state(3)
    for key, value in before["task"].items():  # student, EMA teacher, heads, prototype bank, counts
        assert torch.equal(value, after["task"][key]), key
    for pid, moments in before["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, after["optimizer"]["state"][pid][name]), (pid, name)
    assert not torch.equal(state(3)["task"]["student.dino_head.mlp.0.weight"], state(4)["task"]["student.dino_head.mlp.0.weight"])
    monkeypatch.undo()
    _break_koleo_from(monkeypatch, 3)  # every step from step 1 on: past a budget of 1 the run stops
    with pytest.raises(TrainingDiverged, match="1 step\\(s\\) skipped before, train.max_skipped_steps=1"):
        train(cfg, tmp_path / "run2", progress=False)


def test_the_skip_budget_spans_resumes_and_a_non_finite_gradient_is_never_stepped(tmp_path, image_table, monkeypatch):
    _break_koleo_from(monkeypatch, 3, 4)  # step 1 is non-finite
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 4, "checkpoint_every": 1, "on_nonfinite": "skip",
                                                          "max_skipped_steps": 1}))
    train(cfg, tmp_path / "run", progress=False, stop_after=2)
    assert load_latest_checkpoint(tmp_path / "run")["skipped_steps"] == 1
    monkeypatch.undo()
    _break_koleo_from(monkeypatch, 1)  # the resumed job's first step too: the budget of 1 is already spent
    with pytest.raises(TrainingDiverged, match="1 step\\(s\\) skipped before"):
        train(cfg, tmp_path / "run", progress=False, resume=True)
    monkeypatch.undo()

    # a finite loss whose gradient overflows: no optimizer step, counted as a skipped step
    real_clip = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def overflowing(params, max_norm, *args, **kwargs):
        calls["n"] += 1
        norm = real_clip(params, max_norm, *args, **kwargs)
        return norm * float("inf") if calls["n"] == 1 else norm  # the first group of the first step

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", overflowing)
    result = train(cfg, tmp_path / "grad", progress=False)
    assert [h["step"] for h in result.history if h.get("skipped")] == [1]
