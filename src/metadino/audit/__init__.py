"""Data auditing before training: column roles, associations and a suggested ``guidance:`` block
(`metadino inspect`)."""

from metadino.audit.format import format_audit
from metadino.audit.inspect import run_inspect
from metadino.audit.roles import ColumnAudit, Entanglement, Suggestion, TableAudit, audit_table, suggest_guidance
from metadino.audit.stats import (
    Association,
    categorical_association,
    correlation_ratio,
    determines,
    rank_correlation,
)

__all__ = [
    "Association", "ColumnAudit", "Entanglement", "Suggestion", "TableAudit", "audit_table",
    "categorical_association", "correlation_ratio", "determines", "format_audit", "rank_correlation",
    "run_inspect", "suggest_guidance",
]
