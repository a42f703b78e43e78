import json
from pathlib import Path

import pytest

from metadino.config import config_from_dict, config_to_dict, load_config
from metadino.demo import ARMS, CONFIGS, FOUNDATION, ROWS, run_demo
from metadino.errors import UserError


def test_quick_demo_adapts_the_foundation_four_ways_and_compares_them_on_held_out_plates(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(out, quick=True, seed=0)
    printed = capsys.readouterr().out
    assert set(summary["metrics"]) == set(ARMS) == {"frozen", "plain", "fino", "fino_plate"}
    for arm in ARMS:
        assert len(summary["metrics"][arm]) == len(ROWS)
        metrics = json.loads((out / arm / "report" / "metrics.json").read_text())
        assert set(metrics["leakage"]) == {"plate", "cell_line", "antibody"}
        assert "plate|cell_line" in metrics["conditional_leakage"]
        assert 0.0 <= metrics["purity_test"]["same_group_share"] <= 1.0
    assert not (out / "frozen" / "checkpoints").exists()  # the frozen arm never trains
    for arm in ("plain", "fino", "fino_plate"):  # every trained arm starts from the shipped foundation
        assert load_config(out / arm / "config.yaml").model.backbone == FOUNDATION
    logs = {arm: (out / arm / "metrics.jsonl").read_text() for arm in ("plain", "fino", "fino_plate")}
    # the FINO arms really ran their guides (they are logged per step), the plain arm did not
    assert "guide/antibody/loss" in logs["fino"] and "guide/plate" not in logs["fino"]
    assert "guide/plate/loss" in logs["fino_plate"] and "guide/" not in logs["plain"]
    assert "sigreg" in logs["fino"] and "koleo" in logs["plain"]
    assert "fino_plate - plain" in printed and (out / "comparison.md").is_file()
    assert summary["primary"] == "knn/accuracy" and summary["peak_rss_mb"] > 0


def test_demo_never_clears_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="not made by metadino demo"):
        run_demo(tmp_path, quick=True)
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("name,arm", [("demo.yaml", "plain"), ("demo_fino.yaml", "fino"),
                                      ("demo_fino_plate.yaml", "fino_plate")])
def test_shipped_demo_configs_are_what_the_demo_trains(name, arm):
    path = Path(__file__).resolve().parents[1] / "configs" / name
    shipped = config_to_dict(load_config(path))
    built = CONFIGS[arm](Path(shipped["data"]["table"]), steps=shipped["train"]["steps"], seed=0, quick=False)
    assert shipped == config_to_dict(config_from_dict(built))
