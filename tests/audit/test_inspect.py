"""`metadino inspect`: user errors and the leakage section with a model."""

from __future__ import annotations

import pandas as pd
import pytest

from metadino.audit.inspect import run_inspect
from metadino.errors import UserError


def test_user_errors(synthetic, tmp_path):
    with pytest.raises(UserError, match="'nope'.*available columns: path, label"):
        run_inspect(synthetic, labels=["nope"], progress=False)
    frame = pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["x", "x", None]})
    frame.to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(UserError, match="label column 'label'.*1 class"):
        run_inspect(tmp_path / "one.csv", labels=["label"], progress=False)
    with pytest.raises(UserError, match="model"):
        run_inspect(synthetic, model=str(tmp_path / "no_such_model"), progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="broken"):
        run_inspect(synthetic, model=str(broken), progress=False)


def test_run_inspect_with_model_reports_leakage(synthetic, export_dir, tmp_path):
    out = tmp_path / "reports" / "inspect.md"
    text = run_inspect(synthetic, labels=["label"], model=str(export_dir), progress=False, out=out)
    assert out.read_text() == text
    section = text.split(f"## Leakage in `{export_dir}`")[1].split("## Suggested guidance")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ")}
    for column in ("label", "cell_line", "antibody", "plate", "exposure", "focus", "split"):
        assert column in rows, column
    assert "well" not in rows and "path" not in rows  # identifiers are not probed
    assert "| plate | spurious | categorical | balanced_accuracy |" in rows["plate"]
    value = float(rows["plate"].split(" | ")[4])
    assert 0.0 <= value <= 1.0
