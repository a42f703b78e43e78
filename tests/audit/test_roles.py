"""Role guesses, entanglement, and a suggested block that validates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from metadino.audit.names import matched_word
from metadino.audit.roles import audit_table, suggest_guidance
from metadino.config import config_from_dict, validate
from metadino.data.table import load_table


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
