"""eval / embed / inspect: the input size and normalisation of a model can be set, and the output says which."""

from __future__ import annotations

import json

from metadino.cli import main as cli
from metadino.embed import read_embeddings
from testkit import write_channel_files_table, write_labelled_table, write_tiny_model


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


def test_data_config_gives_eval_embed_and_inspect_the_training_layout(tmp_path, capsys):
    """A table naming one file per channel (and NaN no-data pixels) is read as training reads it."""
    import numpy as np
    import pandas as pd
    import yaml

    table = write_labelled_table(tmp_path / "data")
    model = write_tiny_model(tmp_path / "model")
    frame = pd.read_csv(table)
    data_yaml = write_channel_files_table(table, tmp_path, read={"nodata": "fill"}, nan_corner=True)
    data = yaml.safe_load(data_yaml.read_text())["data"]
    base = ["--table", str(tmp_path / "t.csv"), "--quiet"]
    assert cli(["embed", str(model), *base, "--out", str(tmp_path / "e.parquet")]) == 2
    assert "t.csv has no image column 'path'" in capsys.readouterr().err
    with_layout = [*base, "--data-config", str(tmp_path / "t.data.yaml")]
    assert cli(["embed", str(model), *with_layout, "--out", str(tmp_path / "e.parquet")]) == 0
    frame_out, emb = read_embeddings(tmp_path / "e.parquet")
    assert emb.shape == (len(frame), 32) and np.isfinite(emb).all()
    args = ["eval", str(model), *with_layout, "--label-column", "label", "--train-rows", "split=train",
            "--test-rows", "split=test", "--out", str(tmp_path / "ev"), "--no-cache"]
    assert cli(args) == 0
    assert cli(["inspect", "--model", str(model), *with_layout]) == 0
    data["read"] = {"nodata": "error"}
    (tmp_path / "t.data.yaml").write_text(yaml.safe_dump({"data": data}))
    capsys.readouterr()
    assert cli(["embed", str(model), *with_layout, "--out", str(tmp_path / "f.parquet"), "--overwrite"]) == 2
    assert "im0_r.npy has 1 no-data pixels (NaN)" in capsys.readouterr().err
