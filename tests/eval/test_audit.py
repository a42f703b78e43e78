"""`metadino inspect`: role guesses, association measures, entanglement, a suggested block that validates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from metadino.config import config_from_dict, validate
from metadino.data.synthetic import generate_dataset
from metadino.data.table import load_table
from metadino.errors import UserError
from metadino.eval.audit import (
    audit_table,
    categorical_association,
    correlation_ratio,
    format_audit,
    matched_word,
    rank_correlation,
    run_inspect,
    suggest_guidance,
)
from metadino.export import default_preprocessing, write_export
from metadino.models.backbone import build_backbone


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("syn"), n_images=240, image_size=32, channels=3, seed=0)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    backbone = build_backbone("builtin:vit-tiny", patch_size=8, image_size=32, embed_dim=32, depth=2, num_heads=2)
    return write_export(backbone, tmp_path_factory.mktemp("model"), {**default_preprocessing(backbone), "image_size": 32})


def _guides(text: str, table: Path) -> list:
    """Parse a suggested block and validate it inside a config, as a user pasting it would."""
    block = yaml.safe_load(text)
    assert list(block) == ["guidance"]
    cfg = config_from_dict({"data": {"table": str(table)}, "guidance": block["guidance"]})
    validate(cfg)
    return cfg.guidance.guides


def test_synthetic_roles_entanglement_and_valid_suggestion(synthetic):
    audit = audit_table(load_table(synthetic, image_column="path", check_files=False), labels=["label"])
    roles = {name: col.role for name, col in audit.columns.items()}
    assert roles == {"path": "identifier", "label": "label", "cell_line": "informative", "antibody": "informative",
                     "plate": "spurious", "well": "identifier", "exposure": "spurious", "focus": "spurious",
                     "split": "split"}
    assert "too sparse" in audit.columns["well"].reason
    assert audit.columns["antibody"].missing_fraction == pytest.approx(0.05, abs=0.03)
    assert [(e.spurious, e.informative) for e in audit.entanglements] == [("plate", "cell_line")]

    text = suggest_guidance(audit)
    assert text.startswith("guidance:")
    guides = {g.column: g for g in _guides(text, synthetic)}
    assert set(guides) == {"cell_line", "antibody", "plate", "exposure", "focus"}  # never label/split/path/well
    assert guides["plate"].role == "spurious" and guides["plate"].given == ["cell_line"]
    assert guides["antibody"].head == "prototypical" and guides["cell_line"].head == "classification"
    assert guides["exposure"].head == "regression" and guides["exposure"].role == "spurious"
    for line in text.splitlines():
        if line.lstrip().startswith(("- column:", "given:")):
            assert "  # " in line, f"choice without a reason: {line}"


def test_format_audit_lists_columns_warnings_and_block(synthetic):
    audit = audit_table(load_table(synthetic, image_column="path", check_files=False), labels=["label"])
    text = format_audit(audit)
    assert "| plate | categorical | 12 |" in text
    assert "'plate' (spurious) nearly determines 'cell_line'" in text
    assert "## Association with the labels" in text and "| antibody | label | cramers_v |" in text
    assert "## Leakage" not in text
    block = text.split("```yaml\n")[1].split("```")[0]
    assert block == suggest_guidance(audit)


def test_association_measures():
    rng = np.random.default_rng(0)
    fine = [f"f{v}" for v in rng.integers(0, 8, 400)]
    coarse = [f"c{int(v[1:]) // 2}" for v in fine]  # a function of fine
    same = categorical_association(fine, fine)
    assert same.value == pytest.approx(1.0, abs=0.02) and same.u_b_given_a == pytest.approx(1.0, abs=0.03)
    nested = categorical_association(fine, coarse)
    assert nested.u_b_given_a > 0.95  # fine determines coarse ...
    assert nested.u_a_given_b == pytest.approx(np.log(4) / np.log(8), abs=0.03)  # ... coarse explains 2/3 of fine
    independent = categorical_association(fine, [f"x{v}" for v in rng.integers(0, 8, 400)])
    assert independent.value < 0.1 and independent.u_b_given_a < 0.05  # bias correction: ≈ 0, not the plug-in MI

    groups = rng.integers(0, 3, 300)
    y = groups * 2.0 + 0.1 * rng.normal(size=300)
    assert correlation_ratio([str(g) for g in groups], y).value > 0.95
    assert correlation_ratio([str(g) for g in groups], rng.normal(size=300)).value < 0.15
    many = [str(i // 2) for i in range(300)]  # 150 groups of 2: a raw η² would be ≈ 0.5
    assert correlation_ratio(many, rng.normal(size=300)).value < 0.3
    x = rng.normal(size=200)
    assert rank_correlation(x, -np.exp(x)).value == pytest.approx(1.0)


def test_name_rules_and_label_association(tmp_path):
    assert matched_word("CellLine2", ("cell_line",)) == "cell_line"
    assert matched_word("acquisition_Dates", ("date",)) == "date"
    assert matched_word("platelet_count", ("plate",)) is None
    rng = np.random.default_rng(0)
    n = 60
    label = rng.integers(0, 3, n)
    frame = pd.DataFrame({
        "path": [f"{i}.png" for i in range(n)],
        "label": [f"L{v}" for v in label],
        "grp": [f"g{v}" for v in label],  # unknown name, determines the label -> informative
        "misc": [f"m{v}" for v in rng.integers(0, 3, n)],  # unknown name, unrelated -> review
        "tissue_site": [f"t{v}" for v in rng.integers(0, 2, n)],  # both vocabularies -> review
        "sample_id": [f"s{i}" for i in range(n)],
        "fold": rng.integers(0, 5, n),
        "const": ["k"] * n,
    })
    frame.to_csv(tmp_path / "meta.csv", index=False)
    audit = audit_table(load_table(tmp_path / "meta.csv", image_column="path", check_files=False), labels=["label"])
    roles = {name: col.role for name, col in audit.columns.items()}
    assert roles == {"path": "identifier", "label": "label", "grp": "informative", "misc": "review",
                     "tissue_site": "review", "sample_id": "identifier", "fold": "split", "const": "constant"}
    guides = _guides(suggest_guidance(audit), tmp_path / "meta.csv")
    assert [g.column for g in guides] == ["grp"]


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
