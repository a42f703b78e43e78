"""`metadino show` and the localisation options of `metadino eval` from the command line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from metadino.cli import main as cli
from testkit import write_channel_files_table, write_labelled_table, write_tiny_model


def _one_line_error(capsys, code: int) -> str:
    """The error, one line (the informational 'preprocessing: ...' lines on stderr aside)."""
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True)
                  if not line.startswith("preprocessing:"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_show_writes_both_figures_for_two_models_and_refuses_to_overwrite(tmp_path, capsys):
    table = write_labelled_table(tmp_path / "data", n=10)
    a, b = write_tiny_model(tmp_path / "a", seed=0), write_tiny_model(tmp_path / "b", seed=1)
    out = tmp_path / "show.png"
    args = ["show", str(a), str(b), "--table", str(table), "--rows", "split=train", "--n", "3", "--label-column",
            "label", "--out", str(out)]
    assert cli(args) == 0
    assert out.is_file() and (tmp_path / "show.heads.png").is_file()
    assert "wrote" in capsys.readouterr().out
    before = out.read_bytes()
    assert "already exists" in _one_line_error(capsys, cli(args))
    assert out.read_bytes() == before
    assert cli([*args, "--overwrite", "--rgb-channels", "2,1,0"]) == 0


@pytest.mark.parametrize("extra,expected", [
    (["--n", "0"], "--n must be between 1 and 64"),
    (["--rows", "split=nothing"], "split"),
    (["--label-column", "nope"], "nope"),
    (["--rgb-channels", "a"], "--rgb-channels 'a' is not a comma list"),
    (["--rgb-channels", "5"], "--rgb-channels needs 1 to 3 channel indices"),
])
def test_show_mistakes_are_one_sentence(tmp_path, capsys, extra, expected):
    table = write_labelled_table(tmp_path / "data", n=10)
    model = write_tiny_model(tmp_path / "m")
    code = cli(["show", str(model), "--table", str(table), "--out", str(tmp_path / "s.png"), *extra])
    assert expected in _one_line_error(capsys, code)
    assert not (tmp_path / "s.png").exists()


def test_show_reads_the_table_through_a_data_config(tmp_path, capsys):
    table = write_labelled_table(tmp_path / "data", n=6)
    model = write_tiny_model(tmp_path / "model")
    write_channel_files_table(table, tmp_path)
    assert cli(["show", str(model), "--table", str(tmp_path / "t.csv"), "--data-config", str(tmp_path / "t.data.yaml"),
                "--n", "2", "--out", str(tmp_path / "s.png")]) == 0


def test_eval_localisation_options(tmp_path, capsys):
    table = write_labelled_table(tmp_path / "data", n=20)
    frame = pd.read_csv(table)
    frame["x0"], frame["y0"], frame["x1"], frame["y1"] = 0, 0, 16, 32
    frame.to_csv(table, index=False)
    model = write_tiny_model(tmp_path / "model")
    base = ["eval", str(model), "--table", str(table), "--label-column", "label", "--train-rows", "split=train",
            "--test-rows", "split=test", "--no-cache", "--quiet"]
    assert cli([*base, "--region-columns", "x0,y0,x1,y1", "--show", "2", "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "pointing game" in printed
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["localisation"]["n_rows"] == 4 and metrics["localisation"]["attention_mass_chance"] == 0.5
    assert (tmp_path / "ev" / "plots" / "show.png").is_file()
    code = cli([*base, "--region-columns", "x0,y0,x1", "--out", str(tmp_path / "ev2")])
    assert "--region-columns needs four different columns" in _one_line_error(capsys, code)
    code = cli([*base, "--mask-column", "nope", "--out", str(tmp_path / "ev2")])
    assert "nope" in _one_line_error(capsys, code)
    assert not (tmp_path / "ev2").exists()
