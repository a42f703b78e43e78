"""Training curves in the report: ln K is read from the run's config and drawn next to the DINO term."""

from __future__ import annotations

import math

import yaml

from metadino.eval import report


def test_ln_k_reference_line_comes_from_the_run_config(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"ssl": {"head": {"out_dim": 256}}}))
    assert report._dino_out_dim(tmp_path) == 256
    assert report._dino_out_dim(tmp_path / "missing") is None
    lines = []
    real_subplots = report._pyplot().subplots

    def spy(*args, **kwargs):
        fig, axes = real_subplots(*args, **kwargs)
        ax = axes[0][0]
        original = ax.axhline
        ax.axhline = lambda y, **kw: lines.append(y) or original(y, **kw)
        return fig, axes

    monkeypatch.setattr(report._pyplot(), "subplots", spy)
    rows = [{"step": s, "total": 9.0, "dino": 5.5} for s in (10, 20)]
    assert report.plot_training_curves(tmp_path / "t.png", rows, dino_out_dim=256).is_file()
    assert lines == [math.log(256)]


def test_purity_table_lists_each_row_set_and_skips_empty_ones():
    block = {"rows": "train", "k": 20, "knn/cell_line": {"accuracy": 0.9, "balanced_accuracy": 0.8, "chance": 0.25,
                                                        "n_rows": 40},
             "same_group_share": 0.5, "same_group_share_chance": 0.3,
             "same_group": {"label_column": "label", "group_column": "plate", "n_queries": 38}}
    lines = report.purity_table_md(block, {}).splitlines()
    assert lines[2] == "| k-NN accuracy of cell_line | train | 0.900 | 0.800 | 0.250 | 40 |"
    assert lines[3] == "| same-plate share among same-label neighbours | train | 0.500 | – | 0.300 | 38 |"
    assert len(lines) == 4
