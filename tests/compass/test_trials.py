"""Skipping finished trials, resuming interrupted ones, and the device scheduler (with a fake runner)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml

from metadino.compass import make_plan, run_compass
from metadino.compass.trials import RECORD, SweepStopped, estimate, jobs_of, run_pool, trial_state
from metadino.config import load_config
from metadino.errors import UserError

REQUEST = dict(label_column="label", train_rows={"split": "train"}, val_rows={"split": "val"},
               columns=["plate", "exposure"], seeds=[0, 1])


def jobs(config, out):
    return jobs_of(make_plan(load_config(config), out=out, **REQUEST))


def fake_record(job, device, seconds=2.0):
    job.dir.mkdir(parents=True, exist_ok=True)
    score = 0.5 + (0.1 if job.role == "encouraged" else 0.0) + 0.01 * job.seed
    record = {"trial": job.name, "column": job.column, "role": job.role, "seed": job.seed, "digest": job.digest,
              "steps": job.config["train"]["steps"], "trained_steps": job.config["train"]["steps"],
              "train_seconds": seconds, "eval_seconds": 1.0, "device": device,
              "scores": {m: score for m in job.metrics}}
    (job.dir / RECORD).write_text(json.dumps(record))
    return record


class Recorder:
    """A fake trial runner: remembers which trial ran on which device, when, and whether two overlapped."""

    def __init__(self, sleep=0.0, fail=(), stop=()):
        self.calls, self.sleep, self.fail, self.stop = [], sleep, set(fail), set(stop)
        self.lock = threading.Lock()
        self.busy: set[str] = set()
        self.overlap = False
        self.max_active = 0

    def __call__(self, job, device):
        with self.lock:
            self.overlap |= device in self.busy
            self.busy.add(device)
            self.calls.append((job.name, device))
            self.max_active = max(self.max_active, len(self.busy))
        try:
            time.sleep(self.sleep)
            if job.name in self.fail:
                raise UserError(f"{job.name} diverged")
            if job.name in self.stop:
                raise SweepStopped(f"{job.name} stopped")
            return fake_record(job, device)
        finally:
            with self.lock:
                self.busy.discard(device)


def test_a_rerun_skips_finished_trials(compass_config, tmp_path, capsys):
    out = tmp_path / "sweep"
    first = Recorder()
    run_compass(compass_config, out=out, runner=first, devices=["cpu"], **REQUEST)
    assert len(first.calls) == 10
    again = Recorder()
    data = run_compass(compass_config, out=out, runner=again, devices=["cpu"], **REQUEST)
    assert again.calls == []  # nothing ran twice
    assert "finished earlier, skipped" in capsys.readouterr().out
    assert data["effects"]["knn/accuracy"]["plate-encouraged"]["mean"] == pytest.approx(0.1)
    # one more seed: only its trials run
    more = Recorder()
    run_compass(compass_config, out=out, runner=more, devices=["cpu"], **{**REQUEST, "seeds": [0, 1, 2]})
    assert [n for n, _ in more.calls] == ["none-seed2", "plate-encouraged-seed2", "plate-suppressed-seed2",
                                          "exposure-encouraged-seed2", "exposure-suppressed-seed2"]


def test_a_finished_trial_of_another_config_is_refused_not_reused(compass_config, tmp_path):
    out = tmp_path / "sweep"
    run_compass(compass_config, out=out, runner=Recorder(), devices=["cpu"], **REQUEST)
    with pytest.raises(UserError, match="was run with another config"):
        run_compass(compass_config, out=out, runner=Recorder(), devices=["cpu"], steps=7, **REQUEST)


def test_trial_states_from_what_the_folder_holds(compass_config, tmp_path):
    job = jobs(compass_config, tmp_path / "sweep")[1]
    assert trial_state(job).status == "new"
    (job.dir / "checkpoints").mkdir(parents=True)
    (job.dir / "checkpoints" / "step_00000001.pt").write_bytes(b"")
    (job.dir / "config.yaml").write_text(yaml.safe_dump(job.config))
    state = trial_state(job)
    assert (state.status, state.step) == ("resume", 1)
    (job.dir / "backbone").mkdir()
    assert trial_state(job).status == "evaluate"  # trained, not yet evaluated
    other = dict(job.config, train={**job.config["train"], "steps": 9})
    (job.dir / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(UserError, match="started with another config"):
        trial_state(job)
    fake_record(job, "cpu")
    assert trial_state(job).status == "done"


def test_one_device_runs_the_trials_in_order_in_this_thread(compass_config, tmp_path):
    js = jobs(compass_config, tmp_path / "sweep")
    runner = Recorder()
    outcomes = run_pool(js, ["cpu"], runner)
    assert [n for n, _ in runner.calls] == [j.name for j in js]
    assert {d for _, d in runner.calls} == {"cpu"} and runner.max_active == 1
    assert [o.status for o in outcomes] == ["done"] * len(js)


def test_several_devices_run_one_trial_each_at_a_time(compass_config, tmp_path):
    js = jobs(compass_config, tmp_path / "sweep")
    runner = Recorder(sleep=0.05)
    devices = ["cuda:0", "cuda:1", "cuda:2"]
    outcomes = run_pool(js, devices, runner)
    assert sorted(n for n, _ in runner.calls) == sorted(j.name for j in js)  # each trial once
    assert not runner.overlap  # never two trials on one device
    assert runner.max_active == 3 and {d for _, d in runner.calls} == set(devices)  # all devices busy at once
    assert [o.job.name for o in outcomes] == [j.name for j in js]  # in the order of the plan
    assert all(o.status == "done" and o.device in devices for o in outcomes)


def test_a_failed_trial_is_recorded_and_the_others_go_on(compass_config, tmp_path):
    js = jobs(compass_config, tmp_path / "sweep")
    runner = Recorder(fail={js[2].name})
    outcomes = run_pool(js, ["cuda:0", "cuda:1"], runner)
    status = {o.job.name: o.status for o in outcomes}
    assert status[js[2].name] == "failed" and list(status.values()).count("done") == len(js) - 1
    assert "diverged" in next(o.error for o in outcomes if o.status == "failed")


def test_a_stopped_trial_ends_the_sweep_and_a_rerun_continues(compass_config, tmp_path):
    out = tmp_path / "sweep"
    js = jobs(compass_config, tmp_path / "pool")
    runner = Recorder(stop={js[1].name})
    outcomes = run_pool(js, ["cpu"], runner)
    assert [o.status for o in outcomes] == ["done", "stopped"]  # nothing started after the stop
    js = jobs(compass_config, out)
    with pytest.raises(SweepStopped):
        run_compass(compass_config, out=out, runner=Recorder(stop={js[1].name}), devices=["cpu"], **REQUEST)
    assert (out / "compass.md").is_file()  # the report of what finished is still written
    rest = Recorder()
    run_compass(compass_config, out=out, runner=rest, devices=["cpu"], **REQUEST)
    assert [n for n, _ in rest.calls] == [j.name for j in js[1:]]


def test_the_estimate_uses_measured_step_times_and_says_so(compass_config, tmp_path):
    out = tmp_path / "sweep"
    js = jobs(compass_config, out)
    rows, wall, how = estimate(js, out, ["cpu"], None, None)
    assert wall is None and "no step time known" in how
    fake_record(js[0], "cpu", seconds=4.0)  # 2 steps in 4 s, eval 1 s
    rows, wall, how = estimate(js, out, ["cpu"], None, None)
    assert "measured: median 2.000 s per step over 1 finished trial" in how and "evaluation 1.0 s" in how
    assert rows[0]["state"] == "done" and rows[0]["seconds"] == 0
    assert wall == pytest.approx(9 * (2 * 2.0 + 1.0))
    rows, wall2, how = estimate(js, out, ["cuda:0", "cuda:1", "cuda:2"], 1.0, None)
    assert "configured --step-seconds 1" in how and "total / 3 devices" in how
    assert wall2 == pytest.approx(9 * (2 * 1.0 + 1.0) / 3)


def test_a_folder_of_yours_is_never_written(compass_config, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="not written by metadino compass"):
        run_compass(compass_config, out=out, runner=Recorder(), devices=["cpu"], **REQUEST)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_evaluating_a_trial_does_not_change_the_next_trials_threads(compass_config, tmp_path, monkeypatch):
    """faiss sets OpenMP's thread count process-wide in the k-NN probe; on a busy 2-core machine 2 spinning OpenMP
    threads made the next trial's steps ~15x slower. run_job restores the count it started with."""
    import torch

    import metadino.eval.evaluate as evaluate_module
    from metadino.compass.trials import run_job

    job = jobs(compass_config, tmp_path / "sweep")[0]
    (job.dir / "checkpoints").mkdir(parents=True)
    (job.dir / "checkpoints" / "step_00000002.pt").write_bytes(b"")
    (job.dir / "config.yaml").write_text(yaml.safe_dump(job.config))
    (job.dir / "backbone").mkdir()  # trained: only the evaluation runs

    def fake_evaluate(*args, **kwargs):
        torch.set_num_threads(3)
        return {"knn": {"accuracy": 0.5}, "linear": {"accuracy": 0.25}}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    before = torch.get_num_threads()
    record = run_job(job, "cpu")
    assert torch.get_num_threads() == before
    assert record["scores"] == {"knn/accuracy": 0.5, "linear/accuracy": 0.25} and record["trained_steps"] == 0
    assert trial_state(job).status == "done"
