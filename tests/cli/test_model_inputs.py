"""eval / embed / inspect: the input size and normalisation of a model can be set, and the output says which."""

from __future__ import annotations

import json

from metadino.cli import main as cli
from metadino.embed import read_embeddings
from testkit import write_labelled_table, write_tiny_model


def test_embed_eval_and_inspect_take_the_input_size_and_say_which_preprocessing_they_used(tmp_path, capsys):
    table = write_labelled_table(tmp_path / "data")
    model = write_tiny_model(tmp_path / "model")  # its preprocessing.json says 32 px
    out = tmp_path / "e.parquet"
    assert cli(["embed", str(model), "--table", str(table), "--out", str(out), "--image-size", "16", "--num-workers",
                "1", "--quiet"]) == 0
    assert "preprocessing: 16 px, 3 channel(s)" in capsys.readouterr().err
    frame, emb = read_embeddings(out)
    assert emb.shape == (len(frame), 32)
    assert cli(["embed", str(model), "--table", str(table), "--out", str(tmp_path / "x.parquet"), "--image-size", "12"]) == 2
    assert "--image-size/--mean/--std: an input size of 12 px is not a positive multiple" in capsys.readouterr().err
    assert cli(["embed", str(model), "--table", str(table), "--out", str(tmp_path / "y.parquet"), "--mean", "0.5"]) == 2
    assert "give both a mean and a std" in capsys.readouterr().err
    args = ["eval", str(model), "--table", str(table), "--label-column", "label", "--train-rows", "split=train",
            "--test-rows", "split=test", "--out", str(tmp_path / "ev"), "--no-cache", "--quiet", "--image-size", "24",
            "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    assert cli(args) == 0
    pre = json.loads((tmp_path / "ev" / "metrics.json").read_text())["info"]["preprocessing"]
    assert (pre["image_size"], pre["mean"], pre["std"]) == (24, [0.5] * 3, [0.25] * 3)
    assert cli(["inspect", "--table", str(table), "--model", str(model), "--image-size", "16", "--quiet"]) == 0
    assert "preprocessing: 16 px" in capsys.readouterr().err
