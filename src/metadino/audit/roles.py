"""Audit a metadata table before training: each column's role, the guide head it would get, and a suggested
``guidance:`` block.

**Per column**: kind (``metadino.data.table.infer_column_kind``), cardinality (distinct known values),
missing fraction, and a role guess with its reason. Rules, first match wins:

1. ``label`` — a ``--labels`` column: the task label is **never** used for adaptation.
2. ``identifier`` — the image column; a name with an id-like token (``id``, ``uuid``, ``path``, ``file``,
   ``filename``, ``url``, ``index``, ...); a categorical or integer column whose known values are ≈ unique
   (distinct / known ≥ 0.9); or a categorical column so sparse that a guide head cannot learn it (fewer than
   3 rows per value on average — e.g. ``well`` of a small synthetic table, 88 wells over 240 images).
3. ``split`` — a name with a ``split``/``fold``/``subset``/``partition`` token (or ``set``), or values that are
   all split names (``train``, ``val``, ``test``, ...).
4. ``constant`` — fewer than two distinct known values; ``excluded`` — passed in ``exclude``.
5. name tokens (:mod:`metadino.audit.names`): acquisition / batch words (plate, batch, well, site, slide,
   scanner, microscope, centre, hospital, operator, run, date, exposure, focus, ...) → ``spurious``;
   biological / semantic words (cell_line, antibody, protein, gene, compound, treatment, species, tissue,
   region, country, ...) → ``informative``; both → ``review``.
6. strong association with a label (:func:`metadino.audit.stats.determines` of the label by the column) →
   ``informative``.
7. otherwise ``review``: listed, not suggested.

**Entanglement**: a spurious candidate a that determines an informative candidate b. Suppressing a as is
would also remove b, so the suggested spurious guide is conditioned on b (``given: [b]``): the adversary also
sees b and removes only what a carries beyond b.

**Heads**: informative categorical with ≥ 8 classes → ``prototypical``, fewer → ``classification``;
multilabel → ``classification`` (multi-hot); continuous → ``regression``; spurious categorical/multilabel →
``classification``, spurious continuous → ``regression`` (gradient reversal). Weights: 0.1 for
classification/prototypical heads, 0.05 for regression heads (spurious weights are further divided by
``guidance.spurious_weight_divisor``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from metadino.audit.names import (
    IDENTIFIER_WORDS,
    INFORMATIVE_WORDS,
    SPLIT_VALUES,
    SPLIT_WORDS,
    SPURIOUS_WORDS,
    matched_word,
    name_tokens,
)
from metadino.audit.stats import Association, PreparedColumn, associate, describe, determines
from metadino.data.table import MetadataTable, infer_column_kind
from metadino.data.values import DEFAULT_SEPARATOR, category_label, is_missing, multilabel_separator
from metadino.errors import UserError

IDENTIFIER_UNIQUE_FRACTION = 0.9
MIN_ROWS_PER_VALUE = 3.0
PROTOTYPICAL_MIN_CLASSES = 8
SHORTCUT_NOTE = 0.3  # a spurious column this associated with a label is worth a warning
WEIGHTS = {"classification": 0.1, "prototypical": 0.1, "regression": 0.05}
GUIDED_ROLES = ("informative", "spurious")
UNAUDITED_ROLES = ("identifier", "constant", "excluded")  # no associations, no leakage probe


@dataclass
class ColumnAudit:
    """One column: what it holds and what `inspect` thinks it is for."""

    name: str
    kind: str  # categorical | continuous | multilabel | constant
    cardinality: int  # distinct known values
    missing_fraction: float
    role: str  # identifier | split | label | constant | excluded | spurious | informative | review
    reason: str  # one line: why this role
    head: str | None = None  # suggested head for spurious/informative columns


@dataclass
class Entanglement:
    """A spurious candidate that nearly determines an informative one."""

    spurious: str
    informative: str
    association: Association
    message: str


@dataclass
class Suggestion:
    """One suggested guide (a ``guidance.guides`` entry) and why."""

    column: str
    role: str
    head: str
    weight: float
    why: str
    given: list[str] = field(default_factory=list)
    given_why: str = ""
    multilabel: bool = False
    separator: str = DEFAULT_SEPARATOR


@dataclass
class TableAudit:
    """Everything `metadino inspect` found in a table (see the module docstring for the rules)."""

    source: Path
    n_rows: int
    image_column: str
    labels: list[str]
    columns: dict[str, ColumnAudit]
    associations: list[Association]  # between audited non-label columns, strongest first
    label_associations: list[Association]  # a = column, b = label
    entanglements: list[Entanglement]
    suggestions: list[Suggestion]
    notes: list[str] = field(default_factory=list)


def _check_columns(names: Sequence[str], available: list[str], what: str, source: str) -> None:
    unknown = [c for c in names if c not in available]
    if unknown:
        raise UserError(f"{what} {', '.join(repr(c) for c in unknown)} not found in {source}; available columns: "
                        f"{', '.join(available)}")


def _base_role(name: str, series: pd.Series, kind: str, table: MetadataTable, labels: Sequence[str],
               exclude: Sequence[str]) -> tuple[str, str] | None:
    """Roles that do not depend on associations (rules 1-5), or None."""
    known = [v for v in series if not is_missing(v)]
    n_known = len(known)
    distinct = len({category_label(v) for v in known})
    if name == table.image_column:
        return "identifier", "the image column"
    if name in labels:
        return "label", "task label (--labels): never used for adaptation"
    if name in exclude:
        return "excluded", "excluded on request"
    word = matched_word(name, IDENTIFIER_WORDS)
    if word:
        return "identifier", f"name looks like an identifier ('{word}')"
    integers = kind == "continuous" and all(float(v).is_integer() for v in known)
    if kind in ("categorical", "multilabel") or integers:
        if n_known >= 10 and distinct >= IDENTIFIER_UNIQUE_FRACTION * n_known:
            return "identifier", f"≈ unique per row ({distinct} values over {n_known} known rows)"
    if kind in ("categorical", "multilabel") and distinct > 2 and n_known / distinct < MIN_ROWS_PER_VALUE:
        return "identifier", (f"too sparse for a guide head: {distinct} values with {n_known / distinct:.1f} rows "
                              f"each on average (< {MIN_ROWS_PER_VALUE:g}); treated like an identifier")
    split_word = matched_word(name, SPLIT_WORDS) or ("set" if name_tokens(name) == ["set"] else None)
    if split_word:
        return "split", f"name marks a data split ('{split_word}'): never a guide"
    if kind != "continuous" and distinct >= 2 and {category_label(v).lower() for v in known} <= SPLIT_VALUES:
        return "split", "values are split names (train/val/test): never a guide"
    if kind == "constant":
        return "constant", "fewer than two distinct known values"
    spurious = matched_word(name, SPURIOUS_WORDS)
    informative = matched_word(name, INFORMATIVE_WORDS)
    if spurious and informative:
        return "review", f"name suggests both acquisition ('{spurious}') and biology ('{informative}'); decide yourself"
    if spurious:
        return "spurious", f"acquisition/batch name ('{spurious}')"
    if informative:
        return "informative", f"biological/semantic name ('{informative}')"
    return None


def _head(role: str, kind: str, cardinality: int) -> str:
    if kind == "continuous":
        return "regression"
    if role == "informative" and kind == "categorical" and cardinality >= PROTOTYPICAL_MIN_CLASSES:
        return "prototypical"
    return "classification"


def _head_why(head: str, kind: str, cardinality: int) -> str:
    if head == "regression":
        return "continuous -> regression head"
    if kind == "multilabel":
        return f"multilabel ({cardinality} distinct cells) -> multi-hot classification head"
    if head == "prototypical":
        return f"{cardinality} classes (>= {PROTOTYPICAL_MIN_CLASSES}) -> prototypical head"
    return f"{cardinality} classes -> classification head"


def audit_table(table: MetadataTable, *, labels: Sequence[str] = (), exclude: Sequence[str] = ()) -> TableAudit:
    """Column stats, role guesses, associations, entanglements and guide suggestions (module docstring).

    Raises:
        UserError: an unknown label/exclude column, or a label column with fewer than two classes.
    """
    frame = table.frame
    available = [str(c) for c in frame.columns]
    labels, exclude = list(labels), list(exclude)
    _check_request(table, available, labels, exclude)
    columns, pending = _column_audits(table, available, labels, exclude)
    associations, label_assocs = _associations(frame, columns, available, labels)
    _resolve_pending(columns, pending, label_assocs)
    for col in columns.values():
        if col.role in GUIDED_ROLES:
            col.head = _head(col.role, col.kind, col.cardinality)
    entanglements = _entanglements(columns, associations)
    notes = _shortcut_notes(columns, label_assocs)
    suggestions = _suggestions(frame, columns, available, entanglements)
    return TableAudit(source=table.source, n_rows=len(frame), image_column=table.image_column, labels=labels,
                      columns=columns, associations=associations, label_associations=label_assocs,
                      entanglements=entanglements, suggestions=suggestions, notes=notes)


def _check_request(table: MetadataTable, available: list[str], labels: list[str], exclude: list[str]) -> None:
    source = table.source.name
    _check_columns(labels, available, "label column(s)", source)
    _check_columns(exclude, available, "excluded column(s)", source)
    if table.image_column in labels:
        raise UserError(f"--labels names the image column '{table.image_column}'; pass the column holding the task "
                        f"labels")


def _column_audits(table: MetadataTable, available: list[str], labels: list[str],
                   exclude: list[str]) -> tuple[dict[str, ColumnAudit], list[str]]:
    """Stats and base role (rules 1-5) of every column; also the columns no base rule decided, in order."""
    frame, source = table.frame, table.source.name
    columns: dict[str, ColumnAudit] = {}
    pending: list[str] = []
    for name in available:
        series = frame[name]
        kind = infer_column_kind(series)
        known = [v for v in series if not is_missing(v)]
        cardinality = len({category_label(v) for v in known})
        if name in labels and cardinality < 2:
            raise UserError(f"label column '{name}' of {source} has {cardinality} class(es) over its known rows; a "
                            f"label needs at least two — pass another --labels column")
        missing = 1.0 - len(known) / max(len(series), 1)
        base = _base_role(name, series, kind, table, labels, exclude)
        columns[name] = ColumnAudit(name, kind, cardinality, missing, *(base or ("review", "")))
        if base is None:
            pending.append(name)
    return columns, pending


def _associations(frame: pd.DataFrame, columns: dict[str, ColumnAudit], available: list[str],
                  labels: list[str]) -> tuple[list[Association], list[Association]]:
    """Associations between audited non-label columns (strongest first), and of each with each label."""
    audited = [c for c in available if columns[c].role not in UNAUDITED_ROLES]
    non_label = [c for c in audited if c not in labels]
    prepared = {c: PreparedColumn.of(c, frame[c], columns[c].kind) for c in audited}
    associations: list[Association] = []
    for i, a in enumerate(non_label):
        for b in non_label[i + 1 :]:
            assoc = associate(prepared[a], prepared[b])
            if assoc is not None:
                associations.append(assoc)
    associations.sort(key=lambda s: -s.value)
    label_assocs = [
        assoc.oriented(c) for c in non_label for lab in labels
        if (assoc := associate(prepared[c], prepared[lab])) is not None
    ]
    return associations, label_assocs


def _resolve_pending(columns: dict[str, ColumnAudit], pending: list[str], label_assocs: list[Association]) -> None:
    """Rule 6 for the columns no base rule decided: strong association with a label, else review."""
    for name in pending:
        strong = [s for s in label_assocs if s.a == name and determines(s, name)]
        col = columns[name]
        if strong:
            col.role = "informative"
            col.reason = (f"no recognised name, but it nearly determines label '{strong[0].b}' "
                          f"({describe(strong[0], name)}); check it is not a shortcut")
        else:
            col.reason = "name not recognised and no strong label association: decide yourself"


def _entanglements(columns: dict[str, ColumnAudit], associations: list[Association]) -> list[Entanglement]:
    """Spurious candidates that nearly determine an informative one (module docstring)."""
    entanglements: list[Entanglement] = []
    for assoc in associations:
        for a, b in ((assoc.a, assoc.b), (assoc.b, assoc.a)):
            if columns[a].role == "spurious" and columns[b].role == "informative" and determines(assoc, a):
                message = (f"'{a}' (spurious) nearly determines '{b}' (informative): {describe(assoc, a)}; "
                           f"suppressing '{a}' as is would also remove '{b}', so its guide is conditioned on it "
                           f"(given: [{b}])")
                entanglements.append(Entanglement(a, b, assoc, message))
    return entanglements


def _shortcut_notes(columns: dict[str, ColumnAudit], label_assocs: list[Association]) -> list[str]:
    """A warning for each spurious candidate associated with a label (an in-distribution shortcut)."""
    notes: list[str] = []
    for assoc in label_assocs:
        a = assoc.a
        strength = max(assoc.value, assoc.u_b_given_a or 0.0)
        if columns[a].role == "spurious" and strength >= SHORTCUT_NOTE:
            notes.append(f"'{a}' (spurious) is associated with label '{assoc.b}' ({describe(assoc, a)}): a shortcut "
                         f"in-distribution; evaluate on held-out values of '{a}'")
    return notes


def _suggestions(frame: pd.DataFrame, columns: dict[str, ColumnAudit], available: list[str],
                 entanglements: list[Entanglement]) -> list[Suggestion]:
    """One guide per informative/spurious column, in table order; entangled spurious guides get ``given``."""
    suggestions: list[Suggestion] = []
    for name in available:
        col = columns[name]
        if col.role not in GUIDED_ROLES or col.head is None:
            continue
        given = [e.informative for e in entanglements if e.spurious == name]
        multilabel = col.kind == "multilabel"
        suggestions.append(Suggestion(
            column=name, role=col.role, head=col.head, weight=WEIGHTS[col.head],
            why=f"{col.role}: {col.reason}; {_head_why(col.head, col.kind, col.cardinality)}",
            given=given,
            given_why=(f"'{name}' nearly determines {', '.join(given)}: remove only the '{name}' information "
                       f"that {', '.join(given)} does not explain") if given else "",
            multilabel=multilabel,
            separator=multilabel_separator(list(frame[name])) if multilabel else DEFAULT_SEPARATOR,
        ))
    return suggestions


# ------------------------------------------------------------------------------- suggested block

_YAML_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_YAML_RESERVED = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})


def _yaml_str(text: str) -> str:
    """A column name as a YAML scalar that reads back as this exact string."""
    if _YAML_PLAIN.fullmatch(text) and text.lower() not in _YAML_RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) as one space, for a comment or a table cell."""
    return " ".join(text.split())


def suggest_guidance(audit: TableAudit) -> str:
    """A ``guidance:`` YAML block to paste into a config, each choice explained in a ``#`` comment."""
    lines = ["guidance:", f"  # suggested by `metadino inspect` from {one_line(audit.source.name)} "
             f"({audit.n_rows} rows); review each guide before training"]
    if not audit.suggestions:
        lines.append("  guides: []  # no column looks clearly informative or spurious; see the audit")
    else:
        lines.append("  guides:")
    for s in audit.suggestions:
        lines.append(f"    - column: {_yaml_str(s.column)}  # {one_line(s.why)}")
        lines.append(f"      role: {s.role}")
        lines.append(f"      head: {s.head}")
        if s.multilabel:
            lines.append("      multilabel: true")
            if s.separator != DEFAULT_SEPARATOR:
                lines.append(f"      separator: {json.dumps(s.separator)}")
        lines.append(f"      weight: {s.weight:g}  # "
                     + ("divided by guidance.spurious_weight_divisor for spurious guides" if s.role == "spurious"
                        else "guide loss weight relative to the SSL loss"))
        if s.given:
            lines.append(f"      given: [{', '.join(_yaml_str(g) for g in s.given)}]  # {one_line(s.given_why)}")
    skipped = [c for c in audit.columns.values() if c.role not in GUIDED_ROLES]
    if skipped:
        lines.append("  # not guided:")
        for c in skipped:
            lines.append(f"  #   {one_line(c.name)}: {c.role} ({one_line(c.reason)})")
    return "\n".join(lines) + "\n"


__all__ = [
    "ColumnAudit", "Entanglement", "Suggestion", "TableAudit", "audit_table", "one_line", "suggest_guidance",
]
