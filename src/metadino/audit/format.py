"""A table audit (and, with a model, each column's leakage) as Markdown, ending with the suggested block."""

from __future__ import annotations

from metadino.audit.roles import TableAudit, one_line, suggest_guidance
from metadino.eval.leakage import Leakage

MAX_PAIRS_SHOWN = 25
MIN_VALUE_SHOWN = 0.1  # weaker column pairs are counted, not listed


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _cell(text: str) -> str:
    return one_line(str(text)).replace("|", "\\|")


def format_audit(audit: TableAudit, leakage: dict[str, Leakage] | None = None, *, model: str | None = None) -> str:
    """The audit as Markdown (terminal or file), ending with the suggested ``guidance:`` block."""
    out = [f"# Metadata audit: {audit.source.name}", ""]
    labels = ", ".join(f"`{c}`" for c in audit.labels) or "none given"
    out += [f"{audit.n_rows} rows, {len(audit.columns)} columns; image column `{audit.image_column}`; "
            f"labels: {labels}.", "", "## Columns", "",
            "| column | kind | distinct | missing | role | head | why |", "|---|---|---|---|---|---|---|"]
    for c in audit.columns.values():
        out.append(f"| {_cell(c.name)} | {c.kind} | {c.cardinality} | {c.missing_fraction:.1%} | {c.role} | "
                   f"{c.head or ''} | {_cell(c.reason)} |")
    out += ["", "## Associations between columns", ""]
    shown = [s for s in audit.associations if s.value >= MIN_VALUE_SHOWN][:MAX_PAIRS_SHOWN]
    if shown:
        out += ["Cramér's V (bias-corrected) with U(b|a) = how much a determines b; η for categorical–continuous; "
                "|Spearman ρ| for continuous pairs.", "",
                "| a | b | measure | value | U(b\\|a) | U(a\\|b) | NMI | rows |", "|---|---|---|---|---|---|---|---|"]
        for s in shown:
            out.append(f"| {_cell(s.a)} | {_cell(s.b)} | {s.measure} | {s.value:.2f} | {_fmt(s.u_b_given_a)} | "
                       f"{_fmt(s.u_a_given_b)} | {_fmt(s.nmi)} | {s.n_rows} |")
        hidden = len(audit.associations) - len(shown)
        if hidden:
            out += ["", f"({hidden} weaker pairs not shown.)"]
    else:
        out.append(f"No pair of columns is associated (all values < {MIN_VALUE_SHOWN:g}).")
    if audit.labels:
        out += ["", "## Association with the labels", "",
                "| column | label | measure | value | U(label\\|column) | role |", "|---|---|---|---|---|---|"]
        for s in sorted(audit.label_associations, key=lambda s: -s.value):
            out.append(f"| {_cell(s.a)} | {_cell(s.b)} | {s.measure} | {s.value:.2f} | {_fmt(s.u_b_given_a)} | "
                       f"{audit.columns[s.a].role} |")
    warnings = [e.message for e in audit.entanglements] + audit.notes
    out += ["", "## Warnings", ""]
    out += [f"- {one_line(w)}" for w in warnings] if warnings else ["None."]
    if leakage is not None:
        out += ["", f"## Leakage{f' in `{model}`' if model else ''}", "",
                "Linear probe on the embeddings, out-of-fold: balanced accuracy (categorical), R² (continuous).", "",
                "| column | role | kind | metric | value | chance | rows | note |", "|---|---|---|---|---|---|---|---|"]
        for name, lk in leakage.items():
            role = audit.columns[name].role if name in audit.columns else ""
            out.append(f"| {_cell(name)} | {role} | {lk.kind} | {lk.metric} | {lk.value:.3f} | {lk.chance:.3f} | "
                       f"{lk.n_rows} | {_cell(lk.note)} |")
    out += ["", "## Suggested guidance", "", "Paste into your config (every line explains itself):", "", "```yaml",
            suggest_guidance(audit).rstrip("\n"), "```", ""]
    return "\n".join(out)


__all__ = ["format_audit"]
