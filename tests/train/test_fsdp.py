"""FSDP2 (train.parallel: fsdp) under torchrun with gloo on CPU: the DDP losses, sharded checkpoints that resume on
the same and on other numbers of processes, and the export of the gathered teacher."""

from __future__ import annotations

import json

import pytest
import torch

from metadino.config import config_from_dict
from metadino.errors import UserError
from metadino.train.checkpoint import list_checkpoints, load_latest_checkpoint
from testkit import tiny_config, torchrun_train

# KoLeo is per rank by design and drop-path draws differ per rank: off, so that the objective of a global batch is the
# same on any number of processes.
_SAME_OBJECTIVE = {"ssl": {"koleo_loss_weight": 0.0}, "model": {"drop_path_rate": 0.0}}


def _cfg(table, parallel: str, batch: int, steps: int = 3) -> dict:
    cfg = tiny_config(table, train={"steps": steps, "batch_size": batch, "log_every": 1, "checkpoint_every": 2,
                                    "parallel": parallel}, model=_SAME_OBJECTIVE["model"])
    cfg["ssl"].update(_SAME_OBJECTIVE["ssl"])
    return cfg


def _log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.integration
def test_fsdp_gives_the_ddp_losses_and_exports_the_full_teacher(tmp_path, image_table):
    for parallel in ("ddp", "fsdp"):
        torchrun_train(_cfg(image_table, parallel, 3), tmp_path / f"{parallel}.yaml", tmp_path / parallel)
    ddp, fsdp = _log(tmp_path / "ddp"), _log(tmp_path / "fsdp")
    for key in ("dino_local", "dino_global", "ibot", "total"):
        assert fsdp[0][key] == pytest.approx(ddp[0][key], rel=1e-5, abs=1e-6), key
    for key in ("grad_norm/backbone", "grad_norm/dino_head", "grad_norm/ibot_head"):
        assert fsdp[0][key] == pytest.approx(ddp[0][key], rel=3e-4), key  # the first backward (see test_distributed)
    for a, b in zip(fsdp[1:], ddp[1:]):
        assert a["total"] == pytest.approx(b["total"], rel=2e-2)
    saved = list_checkpoints(tmp_path / "fsdp")
    assert saved and all(p.suffix == ".dcp" and p.is_dir() for p in saved)
    # the export is the gathered teacher: it equals the teacher of the (gathered) last checkpoint
    from metadino.export import load_model

    state = load_latest_checkpoint(tmp_path / "fsdp")
    backbone, _ = load_model(str(tmp_path / "fsdp" / "backbone"))
    teacher = {k[len("teacher.backbone."):]: v for k, v in state["task"].items() if k.startswith("teacher.backbone.")}
    exported = backbone.state_dict()
    assert teacher.keys() <= exported.keys()
    for k, v in teacher.items():
        assert torch.equal(exported[k].float(), v.float()), k


@pytest.mark.integration
def test_sharded_checkpoints_resume_on_two_one_and_four_processes(tmp_path, image_table):
    """Saved on 2 processes at step 2; continued on 2 (exact), on 1 and on 4 with the same global batch (the same
    data and objective: equal up to float summation order)."""
    straight = tmp_path / "straight"
    torchrun_train(_cfg(image_table, "fsdp", 2, steps=4), tmp_path / "s.yaml", straight)
    reference = {r["step"]: r for r in _log(straight)}
    for nproc, batch in ((2, 2), (1, 4), (4, 1)):
        run = tmp_path / f"resume{nproc}"
        torchrun_train(_cfg(image_table, "fsdp", 2, steps=4), tmp_path / "a.yaml", run, extra=("--stop-after", "2"))
        torchrun_train(_cfg(image_table, "fsdp", batch, steps=4), tmp_path / "b.yaml", run, nproc=nproc,
                       extra=("--resume",))
        got = {r["step"]: r for r in _log(run)}
        assert sorted(got) == [1, 2, 3, 4]
        for step in (3, 4):
            if nproc == 2:  # the same processes: bit for bit
                assert got[step]["total"] == reference[step]["total"], (nproc, step)
            else:  # the first step after the resume closely; later ones drift with rounding (see test_distributed)
                tolerance = 1e-3 if step == 3 else 2e-2
                assert got[step]["total"] == pytest.approx(reference[step]["total"], rel=tolerance), (nproc, step)
        assert (run / "backbone" / "preprocessing.json").is_file()


@pytest.mark.integration
def test_fsdp_fp16_agrees_on_the_loss_scale_and_resumes_exactly(tmp_path, image_table):
    """fp16 under FSDP: an overflow found in one rank's shards is every rank's (ShardedGradScaler all-reduces it), so
    the ranks keep one scale; the scale is in the sharded checkpoint and the resumed run equals the straight one."""
    cfg = _cfg(image_table, "fsdp", 2, steps=4)
    cfg["train"]["precision"] = "fp16"
    torchrun_train(cfg, tmp_path / "s.yaml", tmp_path / "straight")
    records = _log(tmp_path / "straight")
    assert any(r.get("overflow") for r in records) and [r["step"] for r in records if not r.get("overflow")] == [1, 2, 3, 4]
    torchrun_train(cfg, tmp_path / "a.yaml", tmp_path / "split", extra=("--stop-after", "2"))
    torchrun_train(cfg, tmp_path / "b.yaml", tmp_path / "split", extra=("--resume",))
    a, b = load_latest_checkpoint(tmp_path / "straight"), load_latest_checkpoint(tmp_path / "split")
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] < 65536.0
    assert a["data_position"] == b["data_position"] > 4
    for k in a["task"]:
        assert torch.equal(a["task"][k], b["task"][k]), k


def test_fsdp_refuses_what_it_cannot_shard_yet():
    with pytest.raises(UserError, match=r"train\.parallel.*adapt\.mode: lora"):
        config_from_dict({**_minimal(), "train": {"parallel": "fsdp"}, "adapt": {"mode": "lora"}})
    with pytest.raises(UserError, match=r"train\.parallel.*adapt\.mode: freeze.*shared by student and teacher"):
        config_from_dict({**_minimal(), "train": {"parallel": "fsdp"}, "adapt": {"mode": "freeze", "freeze_blocks": 2}})


def _minimal() -> dict:
    return {"data": {"table": "/x/t.csv"}, "model": {"backbone": "builtin:vit-tiny", "patch_size": 8},
            "crops": {"global_size": 32, "local_size": 16}}
