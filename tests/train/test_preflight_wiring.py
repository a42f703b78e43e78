"""The image preflight is wired into training: a bad image stops the run before its first step (strict), or its row is
skipped and listed in RUN_DIR/skipped_rows.csv (skip); an error inside a loader worker reads as one line."""

from __future__ import annotations

import csv

import pytest
import yaml

from metadino.cli import main
from metadino.config import config_from_dict
from metadino.data.table import load_table
from metadino.errors import UserError
from metadino.train import run as run_module
from metadino.train.checkpoint import list_checkpoints, load_latest_checkpoint
from metadino.train.loop import fit, train
from testkit import tiny_config, write_image_table


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METADINO_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def broken_table(tmp_path):
    """16 rows; row 6 (imgs/5.png) is truncated."""
    table = write_image_table(tmp_path / "data", n=16)
    png = tmp_path / "data" / "imgs" / "5.png"
    png.write_bytes(png.read_bytes()[:100])
    return table


def test_a_broken_image_stops_the_run_before_any_step(tmp_path, broken_table, monkeypatch):
    steps = []
    monkeypatch.setattr(run_module.SSLTask, "training_step", lambda self, *a, **k: steps.append(1))
    out = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(config_from_dict(tiny_config(broken_table)), out, progress=False)
    msg = str(info.value)
    assert "1 of 16 selected images" in msg and "meta.csv row 6:" in msg and "5.png" in msg
    assert steps == []
    assert not out.exists() or not list_checkpoints(out)
    assert not (out / "metrics.jsonl").exists()


def test_the_cli_prints_the_bad_rows_and_exits_2(tmp_path, broken_table, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(broken_table)))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "metadino train: error: meta.csv: 1 of 16 selected images" in err and "meta.csv row 6:" in err
    assert "Traceback" not in err


def test_skip_trains_without_the_row_and_lists_it(tmp_path, broken_table, capsys):
    cfg = config_from_dict(tiny_config(broken_table, data={"bad_images": "skip", "max_bad_fraction": 0.1}))
    out = tmp_path / "run"
    result = train(cfg, out, stop_after=2, progress=False)
    assert result.end_step == 2
    rows = list(csv.DictReader((out / "skipped_rows.csv").open()))
    assert [(r["row"], r["path"]) for r in rows] == [("6", str(tmp_path / "data" / "imgs" / "5.png"))]
    assert "cannot decode" in rows[0]["reason"]

    # The trained rows (15) are the run's data identity, and resume rebuilds the same selection.
    kept = load_table(broken_table, image_column="path").subset([i for i in range(16) if i != 5])
    assert load_latest_checkpoint(out)["data_fingerprint"] == kept.fingerprint()
    assert train(cfg, out, resume=True, progress=False).end_step == 4
    assert (out / "skipped_rows.csv").is_file()

    # ...and with the image repaired the table is another training set: resume refuses it.
    write_image_table(tmp_path / "data", n=16)
    with pytest.raises(UserError, match="changed"):
        train(cfg, out, resume=True, progress=False)


def test_skip_over_budget_stops_before_training(tmp_path, broken_table):
    cfg = config_from_dict(tiny_config(broken_table, data={"bad_images": "skip", "max_bad_fraction": 0.05}))
    with pytest.raises(UserError, match="max_bad_fraction=0.05"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "skipped_rows.csv").exists()


def test_small_images_and_a_large_batch_are_warned_once(tmp_path, capsys):
    table = write_image_table(tmp_path / "data", n=3, size=24)
    cfg = config_from_dict(tiny_config(table, train={"steps": 1, "batch_size": 4, "checkpoint_every": 1}))
    train(cfg, tmp_path / "run", progress=False)
    err = capsys.readouterr().err.splitlines()
    assert sum("smaller than crops.global_size=32" in line for line in err) == 1
    assert sum("train.batch_size=4 is larger than the 3 rows" in line for line in err) == 1


def test_an_image_broken_after_the_preflight_fails_in_a_worker_as_one_line(tmp_path):
    table = write_image_table(tmp_path / "data", n=16)
    cfg = config_from_dict(tiny_config(table, train={"num_workers": 2}))
    built = run_module.build_run(cfg, tmp_path / "run")
    png = tmp_path / "data" / "imgs" / "5.png"
    png.write_bytes(png.read_bytes()[:100])  # after the preflight: only the loader sees it
    with pytest.raises(UserError) as info:
        fit(built, progress=False)
    msg = str(info.value)
    assert msg.startswith("meta.csv row 6: cannot decode image") and "\n" not in msg
    assert "DataLoader worker" not in msg
