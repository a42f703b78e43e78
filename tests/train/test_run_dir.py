"""The run directory: never a folder of the user's, one run at a time, a clean log, a resume that reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from metadino.cli import main as cli
from metadino.config import config_from_dict
from metadino.errors import UserError
from metadino.train.checkpoint import checkpoint_dir, load_latest_checkpoint
from metadino.train.lock import RunLock
from metadino.train.loop import train
from metadino.train.run import RUN_MARKER
from testkit import tiny_config


def _steps(run_dir) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_folder_that_is_not_a_run_is_never_written_into(tmp_path, image_table):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    with pytest.raises(UserError, match="holds no metadino run"):
        train(config_from_dict(tiny_config(image_table)), mine, progress=False)
    assert (mine / "config.yaml").read_text() == "my own notes\n" and sorted(p.name for p in mine.iterdir()) == ["config.yaml"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        train(config_from_dict(tiny_config(image_table)), tmp_path / "file", progress=False)


def test_a_run_directory_in_use_is_refused(tmp_path, image_table):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_MARKER).write_text("")
    held = RunLock(run_dir)  # another run writing here
    try:
        with pytest.raises(UserError, match="in use by a run"):
            train(config_from_dict(tiny_config(image_table, train={"steps": 2})), run_dir, progress=False)
    finally:
        held.release()
    assert train(config_from_dict(tiny_config(image_table, train={"steps": 2})), run_dir, progress=False).finished


def test_a_restart_after_a_run_killed_before_its_first_checkpoint_starts_a_clean_log(tmp_path, image_table):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_MARKER).write_text("")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "total": 9.0}\n{"step": 2, "total": 9.0}\n')
    checkpoint_dir(run_dir).mkdir()
    (checkpoint_dir(run_dir) / ".step_00000002.pt.tmp-123").write_bytes(b"half")  # a save that was killed
    train(config_from_dict(tiny_config(image_table, train={"steps": 3, "checkpoint_every": 3})), run_dir, progress=False)
    assert _steps(run_dir) == [1, 2, 3]
    assert not list(checkpoint_dir(run_dir).glob(".*.tmp-*"))


def test_resume_logs_no_step_twice(tmp_path, image_table):
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 4, "checkpoint_every": 2}))
    train(cfg, tmp_path / "run", progress=False, stop_after=2)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:  # logged after the last checkpoint, then killed
        f.write('{"step": 3, "total": 1.0}\n{"step": 4, "tot')
    train(cfg, tmp_path / "run", progress=False, resume=True)
    assert _steps(tmp_path / "run") == [1, 2, 3, 4]


def test_the_continue_hint_reproduces_the_run_and_steps_cannot_change_on_resume(tmp_path, image_table, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(image_table, train={"steps": 4, "checkpoint_every": 2})))
    run_dir = tmp_path / "run"
    assert cli(["train", str(cfg_path), "train.steps=6", "--out", str(run_dir), "--stop-after", "2", "--quiet"]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("continue with:"))
    assert hint == f"continue with: metadino train --out {run_dir} --resume"
    # the old hint (the config file, without the override) is refused instead of "finishing" at step 4
    assert cli(["train", str(cfg_path), "--out", str(run_dir), "--resume", "--quiet"]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert cli(hint.removeprefix("continue with: metadino ").split() + ["train.num_workers=0", "--quiet"]) == 0
    assert load_latest_checkpoint(run_dir)["step"] == 6 and _steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["steps"] == 6


def test_embed_and_inspect_refuse_to_replace_an_output_unless_told(tmp_path, image_table, capsys):
    from testkit import write_tiny_model

    model = write_tiny_model(tmp_path / "model")
    out = tmp_path / "emb.parquet"
    out.write_bytes(b"precious")
    embed = ["embed", str(model), "--table", str(image_table), "--out", str(out), "--quiet"]
    assert cli(embed) == 2 and out.read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err
    assert cli([*embed, "--overwrite"]) == 0 and out.read_bytes() != b"precious"
    report = tmp_path / "audit.md"
    report.write_text("mine")
    assert cli(["inspect", "--table", str(image_table), "--out", str(report)]) == 2 and report.read_text() == "mine"
    assert cli(["inspect", "--table", str(image_table), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert cli(["inspect", "--table", str(image_table), "--out", str(report), "--overwrite"]) == 0
    assert report.read_text() != "mine"


def test_environment_faults_are_one_sentence(tmp_path, image_table, monkeypatch):
    cfg = config_from_dict(tiny_config(image_table, train={"steps": 2, "checkpoint_every": 1}))
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "run":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)  # a read-only parent (root ignores chmod, so simulate it)
    with pytest.raises(UserError, match="cannot write the run directory .*Permission denied"):
        train(cfg, tmp_path / "ro" / "run", progress=False)
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if str(f).endswith(".pt") or ".pt.tmp" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file data/3: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"could not write the checkpoint of step 1 .*file write failed.*no earlier "
                                         r"checkpoint exists: free space and run the same command again"):
        train(cfg, tmp_path / "full", progress=False)
    assert not list(checkpoint_dir(tmp_path / "full").glob(".*tmp*"))  # no half file left


def test_resume_accepts_a_table_rewritten_with_the_same_content_and_export_refuses_a_file(tmp_path, image_table):
    import os

    from metadino.export import export_run

    cfg = config_from_dict(tiny_config(image_table, train={"steps": 3, "checkpoint_every": 1}))
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    content = image_table.read_bytes()
    image_table.write_bytes(content)  # same content, new mtime (e.g. copied or checked out again)
    os.utime(image_table, ns=(1, 1))
    assert train(cfg, tmp_path / "run", progress=False, resume=True).finished
    (tmp_path / "model.bin").write_text("not a folder")
    with pytest.raises(UserError, match="is a file"):
        export_run(tmp_path / "run", tmp_path / "model.bin")


def test_a_run_saved_with_the_older_mtime_fingerprint_still_resumes(tmp_path, image_table):
    from metadino.data.table import load_table
    from metadino.train.checkpoint import list_checkpoints

    cfg = config_from_dict(tiny_config(image_table, train={"steps": 2, "checkpoint_every": 1}))
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    path = list_checkpoints(tmp_path / "run")[0]
    state = torch.load(path, weights_only=True)
    state["data_fingerprint"] = load_table(image_table, image_column="path").legacy_fingerprint()
    # as the previous version saved it: none of the keys added since, no skip count, no run marker
    for section, key in (("data", "bad_images"), ("data", "max_bad_fraction"), ("train", "on_nonfinite"),
                         ("train", "max_skipped_steps")):
        del state["config"][section][key]
    del state["skipped_steps"]
    torch.save(state, path)
    (tmp_path / "run" / RUN_MARKER).unlink()
    assert train(cfg, tmp_path / "run", progress=False, resume=True).finished


def test_a_file_system_without_locks_warns_and_runs(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="no file locks"):
        RunLock(tmp_path).release()


def test_a_config_path_with_an_equals_sign_is_a_config_not_an_override(tmp_path, image_table):
    folder = tmp_path / "sweep" / "lr=0.1"
    folder.mkdir(parents=True)
    cfg_path = folder / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(image_table, train={"steps": 1})))
    assert cli(["train", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
