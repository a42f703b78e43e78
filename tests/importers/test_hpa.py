"""HPA Kaggle 2018: train.csv (Id,Target) + train/{Id}_{red|green|blue|yellow}.png."""

from __future__ import annotations

import pytest

from metadino.errors import UserError

from .conftest import check_snippet

IDS = ["00070df0-bbc3-11e8-b2bc-ac1f6b6435d0", "000a6c98-bb9b-11e8-b2b9-ac1f6b6435d0",
       "000a9596-bbc4-11e8-b2bc-ac1f6b6435d0"]
CSV = f"Id,Target\n{IDS[0]},16 0\n{IDS[1]},7 1 2 0\n{IDS[2]},5\n"


@pytest.fixture
def hpa(tmp_path, png):
    root = tmp_path / "human-protein-atlas-image-classification"
    root.mkdir()
    (root / "train.csv").write_text(CSV)
    for i in IDS:
        for color in ("red", "green", "blue", "yellow"):
            png(root / "train" / f"{i}_{color}.png", rgb=False, size=16)
    return root


def test_table_targets_and_channel_template(hpa, do_import):
    result = do_import("hpa", hpa)
    t = result.table
    assert list(t.columns) == ["Id", "Target", "localisation"]
    assert t["Id"].tolist() == IDS
    assert t["Target"].tolist() == ["16|0", "7|1|2|0", "5"]
    assert t["localisation"].tolist() == [
        "Cytokinetic bridge|Nucleoplasm", "Golgi apparatus|Nuclear membrane|Nucleoli|Nucleoplasm", "Nuclear bodies"]
    check_snippet(result.snippet_path, ["table", "root", "image_template", "channels"])
    assert result.snippet["image_template"] == "{Id}_{channel}.png"
    assert result.snippet["channels"] == ["red", "green", "blue", "yellow"]
    assert result.snippet["root"] == str(hpa / "train")
    # the template, filled as the data layer fills it, names the files the release ships
    filled = result.snippet["image_template"].replace("{channel}", "yellow").format(Id=IDS[2])
    assert (hpa / "train" / filled).is_file()
    assert "other columns: Id (identifier), Target (label), localisation (label)" in result.summary


def test_missing_channel_file_names_the_row(hpa, do_import):
    (hpa / "train" / f"{IDS[1]}_yellow.png").unlink()
    with pytest.raises(UserError, match=rf"train.csv do not exist for row 2 \(e.g. .*{IDS[1]}_yellow.png\)"):
        do_import("hpa", hpa / "train.csv")


def test_bad_target_names_row(hpa, do_import):
    (hpa / "train.csv").write_text(CSV.replace(",5\n", ",5 28\n"))
    with pytest.raises(UserError, match=r"train.csv: column 'Target' holds '5 28' in row 3"):
        do_import("hpa", hpa)
    (hpa / "train.csv").write_text(CSV.replace("Id,Target", "Id,Label"))
    with pytest.raises(UserError, match=r"train.csv has no column 'Target'"):
        do_import("hpa", hpa)


def test_the_snippet_trains_through_train_data_config(hpa, do_import, tmp_path):
    """import -> `metadino train CONFIG --data-config meta.data.yaml`: the four channel files of each row train."""
    import json

    import yaml

    from metadino.cli import main as cli
    from testkit import tiny_config

    result = do_import("hpa", hpa)
    cfg = tiny_config(tmp_path / "unused.csv", model={"in_chans": 4}, crops={"photometric": "microscopy"},
                      train={"steps": 1, "batch_size": 2, "checkpoint_every": 1})
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "tiny.yaml"), "--data-config", str(result.snippet_path), "--out",
                str(tmp_path / "run"), "--quiet"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]
    assert saved["image_template"] == "{Id}_{channel}.png" and saved["table"] == str(tmp_path / "out" / "meta.csv")
    pre = json.loads((tmp_path / "run" / "backbone" / "preprocessing.json").read_text())
    assert pre["channels"] == ["red", "green", "blue", "yellow"]
