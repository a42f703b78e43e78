"""fp16 with a dynamic loss scale: an overflowing step moves nothing and takes no step; the scale and the data position
are in the checkpoint, so a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
import math

import pytest
import torch

from metadino.config import config_from_dict
from metadino.train import loop as loop_module
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.loop import fit
from metadino.train.run import build_run
from testkit import tiny_config

_calls: list[int] = []


def _inject_overflow_at(run, attempts: set[int]) -> None:
    """The backward of the k-th step attempt (counted across runs of this test) gives an inf gradient."""
    param = next(p for p in run.task.student.parameters() if p.requires_grad)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        _calls.append(1)
        return grad * math.inf if len(_calls) in attempts else grad

    param.register_hook(hook)


def _run(cfg, out, *, attempts: set[int], stop_after: int | None = None, resume: bool = False, spy=None):
    run = build_run(cfg, out, resume=resume, stop_after=stop_after, progress=False)
    _inject_overflow_at(run, attempts)
    if spy is not None:
        spy(run)
    return fit(run, progress=False)


def _state(run) -> dict:
    return {"task": {k: v.clone() for k, v in run.task.state_dict().items()},
            "moments": {k: {n: t.clone() for n, t in s.items() if torch.is_tensor(t)}
                        for k, s in run.optimizer.state_dict()["state"].items()}}


def _equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a["task"][k], b["task"][k]) for k in a["task"]) and all(
        torch.equal(a["moments"][k][n], b["moments"][k][n]) for k in a["moments"] for n in a["moments"][k])


@pytest.fixture(autouse=True)
def _reset_calls():
    _calls.clear()


def _cfg(table, **train):
    return config_from_dict(tiny_config(table, train={"precision": "fp16", "steps": 4, "checkpoint_every": 2, **train},
                                        guidance={}))


def test_an_overflow_moves_nothing_and_takes_no_step(tmp_path, image_table, monkeypatch):
    snapshots: dict[int, dict] = {}
    at_overflows: list[tuple[int, float, dict]] = []
    holder = {}

    real_step, real_overflow = loop_module.StepLog.step, loop_module.StepLog.overflow

    def after_step(self, step, *args, **kwargs):
        snapshots[step] = _state(holder["run"])
        return real_step(self, step, *args, **kwargs)

    def at_overflow(self, step, scale):
        at_overflows.append((step, scale, _state(holder["run"])))
        return real_overflow(self, step, scale)

    def spy(run):
        holder["run"] = run
        snapshots[0] = _state(run)

    # fp16 at the initial scale of 65536 overflows by itself in the first attempts (the scale calibrates): count them,
    # then overflow the attempt right after the first step
    plain = _run(_cfg(image_table), tmp_path / "plain", attempts=set())
    natural = sum(1 for r in plain.history if r.get("overflow"))
    _calls.clear()
    monkeypatch.setattr(loop_module.StepLog, "step", after_step)
    monkeypatch.setattr(loop_module.StepLog, "overflow", at_overflow)
    result = _run(_cfg(image_table), tmp_path / "run", attempts={natural + 2}, spy=spy)
    assert result.finished and result.end_step == 4
    assert len(at_overflows) == natural + 1 and at_overflows[-1][0] == 1  # the injected one, after step 1
    for step, _, state in at_overflows:  # weights, teacher, centres, banks and AdamW moments as after the last step
        assert _equal(state, snapshots[step]), step
    scales = [scale for _, scale, _ in at_overflows]
    assert scales == [65536.0 / 2 ** (i + 1) for i in range(len(scales))]  # halved at each overflow
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if not r.get("overflow")] == [1, 2, 3, 4]  # no step lost, none repeated
    assert len([r for r in records if r.get("overflow")]) == len(at_overflows)
    state = load_latest_checkpoint(tmp_path / "run")
    assert state["data_position"] == 4 + len(at_overflows) and state["scaler"]["scale"] == scales[-1]

    # the schedules did not advance: each step has the scheduled values of an uninterrupted run's same step
    ref = {r["step"]: r for r in plain.history if not r.get("overflow")}
    got = {r["step"]: r for r in result.history if not r.get("overflow")}
    for key in ("lr", "weight_decay", "momentum", "teacher_temp"):
        assert [got[s][key] for s in (1, 2, 3, 4)] == [ref[s][key] for s in (1, 2, 3, 4)], key
    assert all(0.0 <= r["data_wait_share"] <= 1.0 for r in ref.values())


def test_resume_after_an_overflow_is_exact(tmp_path, image_table):
    """The overflow falls between the checkpoint of step 2 and step 3: the resumed half must replay it exactly."""
    plain = _run(_cfg(image_table), tmp_path / "plain", attempts=set())
    natural = sum(1 for r in plain.history if r.get("overflow"))
    attempts = {natural + 3}  # the attempt after step 2
    _calls.clear()
    _run(_cfg(image_table), tmp_path / "straight", attempts=attempts)
    _calls.clear()
    first = _run(_cfg(image_table), tmp_path / "split", attempts=attempts, stop_after=2)
    assert first.end_step == 2
    _run(_cfg(image_table), tmp_path / "split", attempts=attempts, resume=True)
    a, b = load_latest_checkpoint(tmp_path / "straight"), load_latest_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 4 and a["data_position"] == b["data_position"] == 4 + natural + 1
    assert a["scaler"] == b["scaler"]
    for k in a["task"]:
        assert torch.equal(a["task"][k], b["task"][k]), k


def test_overflow_every_step_is_a_divergence(tmp_path, image_table, monkeypatch):
    monkeypatch.setattr(loop_module, "MAX_OVERFLOWS_IN_A_ROW", 3)
    with pytest.raises(loop_module.TrainingDiverged, match="not finite"):
        _run(_cfg(image_table), tmp_path / "run", attempts=set(range(1, 100)))
