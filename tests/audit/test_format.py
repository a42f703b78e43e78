"""The audit as Markdown."""

from __future__ import annotations

from metadino.audit.format import format_audit
from metadino.audit.roles import audit_table, suggest_guidance
from metadino.data.table import load_table


def test_format_audit_lists_columns_warnings_and_block(synthetic):
    audit = audit_table(load_table(synthetic, image_column="path", check_files=False), labels=["label"])
    text = format_audit(audit)
    assert "| plate | categorical | 12 |" in text
    assert "'plate' (spurious) nearly determines 'cell_line'" in text
    assert "## Association with the labels" in text and "| antibody | label | cramers_v |" in text
    assert "## Leakage" not in text
    block = text.split("```yaml\n")[1].split("```")[0]
    assert block == suggest_guidance(audit)
