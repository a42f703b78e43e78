import json
from pathlib import Path

import pytest

from metadino.config import config_from_dict, config_to_dict, load_config
from metadino.demo import ROWS, demo_config, guided_config, run_demo
from metadino.errors import UserError


def test_quick_demo_trains_both_arms_and_compares_them_on_held_out_plates(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(out, quick=True, seed=0)
    printed = capsys.readouterr().out
    assert set(summary["metrics"]) == {"plain", "guided"}
    for arm in ("plain", "guided"):
        assert len(summary["metrics"][arm]) == len(ROWS)
        assert all(0.0 <= v <= 1.0 for v in summary["metrics"][arm].values())
        assert (out / arm / "report" / "report.md").is_file()
        metrics = json.loads((out / arm / "report" / "metrics.json").read_text())
        assert set(metrics["leakage"]) == {"plate", "cell_line", "antibody"}
    # the guided arm really ran its guides (they are logged per step), the plain arm did not
    guided_log = (out / "guided" / "metrics.jsonl").read_text()
    assert "guide/plate/loss" in guided_log and "guide/plate" not in (out / "plain" / "metrics.jsonl").read_text()
    assert "guided - plain" in printed and (out / "comparison.md").is_file()


def test_demo_never_clears_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="not made by metadino demo"):
        run_demo(tmp_path, quick=True)
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("name,build", [("demo.yaml", demo_config), ("demo_guided.yaml", guided_config)])
def test_shipped_demo_configs_are_what_the_demo_trains(name, build):
    path = Path(__file__).resolve().parents[1] / "configs" / name
    shipped = config_to_dict(load_config(path))
    expected = config_to_dict(config_from_dict(build(Path(shipped["data"]["table"]), steps=200, seed=0, quick=False)))
    assert shipped == expected
