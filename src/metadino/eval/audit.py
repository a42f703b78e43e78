"""`metadino inspect`: audit a metadata table before training and suggest a ``guidance:`` block.

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
5. name tokens (case, ``_``/``-``/camelCase and trailing digits ignored, plurals accepted): acquisition /
   batch words (:data:`SPURIOUS_WORDS`: plate, batch, well, site, slide, scanner, microscope, centre,
   hospital, operator, run, date, exposure, focus, ...) → ``spurious``; biological / semantic words
   (:data:`INFORMATIVE_WORDS`: cell_line, antibody, protein, gene, compound, treatment, species, tissue,
   region, country, ...) → ``informative``; both → ``review``.
6. strong association with a label (:func:`determines` of the label by the column) → ``informative``.
7. otherwise ``review``: listed, not suggested.

**Associations** (over rows where both cells are known): categorical–categorical: bias-corrected Cramér's V
(Bergsma 2013), mutual information with the Miller–Madow bias ``(r-1)(c-1)/2n`` subtracted, normalised as
NMI = MI / sqrt(H(a) H(b)) and as the uncertainty coefficients U(b|a) = MI / H(b) ("how much a determines
b") and U(a|b); categorical–continuous: correlation ratio η from the degrees-of-freedom-adjusted η²
(so that many small groups do not look associated); continuous–continuous: |Spearman ρ|. Multilabel cells are
compared as whole strings.

**"a determines b"** (:func:`determines`) holds when U(b|a) ≥ 0.5 or V ≥ 0.5 (categorical pairs), η ≥ 0.7
(η² ≥ ~0.5) when one side is continuous, |ρ| ≥ 0.7 for two continuous columns.

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
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from metadino.data.table import MetadataTable, infer_column_kind, load_table
from metadino.errors import UserError
from metadino.eval.leakage import Leakage, category_label, column_leakage, is_missing, multilabel_separator

IDENTIFIER_WORDS: frozenset[str] = frozenset(
    {"id", "ids", "uuid", "guid", "path", "filepath", "file", "filename", "fname", "url", "uri", "index", "idx"}
)
SPLIT_WORDS: frozenset[str] = frozenset({"split", "fold", "subset", "partition"})
SPLIT_VALUES: frozenset[str] = frozenset(
    {"train", "training", "val", "valid", "validation", "test", "testing", "holdout", "heldout", "dev", "ood", "eval"}
)
SPURIOUS_WORDS: tuple[str, ...] = (
    "plate", "batch", "well", "site", "slide", "scanner", "scan", "sensor", "microscope", "instrument", "camera",
    "device", "centre", "center", "hospital", "clinic", "institution", "operator", "technician", "run", "lane",
    "flowcell", "chip", "date", "year", "month", "day", "time", "timestamp", "exposure", "focus", "focal", "z",
    "fov", "field", "magnification", "objective", "gain", "laser", "illumination", "acquisition", "session",
    "machine", "vendor", "manufacturer", "lot", "replicate", "source", "dataset", "study",
)
INFORMATIVE_WORDS: tuple[str, ...] = (
    "cell_line", "cellline", "cell_type", "celltype", "antibody", "protein", "gene", "compound", "treatment",
    "drug", "dose", "concentration", "perturbation", "perturbagen", "sirna", "sgrna", "crispr", "target", "moa",
    "mechanism", "pathway", "species", "taxon", "genus", "strain", "organism", "tissue", "organ", "region",
    "anatomy", "country", "continent", "biome", "habitat", "land_use", "landcover", "land_cover", "crop",
    "genotype", "phenotype", "mutation", "disease", "diagnosis", "tumor", "tumour", "cancer", "subtype",
    "morphology", "localization", "localisation", "compartment", "organelle", "marker",
)

IDENTIFIER_UNIQUE_FRACTION = 0.9
MIN_ROWS_PER_VALUE = 3.0
PROTOTYPICAL_MIN_CLASSES = 8
STRONG_U = 0.5
STRONG_V = 0.5
STRONG_ETA = 0.7
STRONG_RHO = 0.7
SHORTCUT_NOTE = 0.3  # a spurious column this associated with a label is worth a warning
WEIGHTS = {"classification": 0.1, "prototypical": 0.1, "regression": 0.05}
GUIDED_ROLES = ("informative", "spurious")
_MAX_PAIRS_SHOWN = 25


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
class Association:
    """Association of columns `a` and `b` over the rows where both are known.

    ``value`` is the symmetric strength in [0, 1] (Cramér's V, η, or |Spearman ρ| — see ``measure``);
    ``u_b_given_a`` / ``u_a_given_b`` / ``nmi`` exist for categorical pairs only.
    For ``correlation_ratio`` the categorical side is `a`.
    """

    a: str
    b: str
    measure: str  # cramers_v | correlation_ratio | spearman
    value: float
    n_rows: int
    u_b_given_a: float | None = None
    u_a_given_b: float | None = None
    nmi: float | None = None


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
    separator: str = "|"


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

    def role(self, column: str) -> str:
        return self.columns[column].role


# ------------------------------------------------------------------------------------------- names


def name_tokens(name: str) -> list[str]:
    """'CellLine_2' -> ['cell', 'line']: camelCase and separators split, lower case, trailing digits dropped."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    tokens = [re.sub(r"\d+$", "", t) for t in re.split(r"[^A-Za-z0-9]+", spaced.lower())]
    return [t for t in tokens if t]


def _token_matches(token: str, word: str) -> bool:
    return token in (word, word + "s", word + "es")


def matched_word(name: str, words: Sequence[str]) -> str | None:
    """The first of `words` (``cell_line`` = two consecutive tokens) found in the column name."""
    tokens = name_tokens(name)
    for word in words:
        parts = word.split("_")
        for i in range(len(tokens) - len(parts) + 1):
            if all(_token_matches(tokens[i + j], p) if j == len(parts) - 1 else tokens[i + j] == p
                   for j, p in enumerate(parts)):
                return word
    return None


# ------------------------------------------------------------------------------------ associations


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def categorical_association(a: Sequence[str], b: Sequence[str], name_a: str = "a", name_b: str = "b") -> Association:
    """Bias-corrected Cramér's V, NMI and U(b|a), U(a|b) of two aligned label sequences (module docstring)."""
    table = pd.crosstab(pd.Series(list(a), dtype=object), pd.Series(list(b), dtype=object)).to_numpy(np.float64)
    n = float(table.sum())
    r, c = table.shape
    if n < 2 or r < 2 or c < 2:
        return Association(name_a, name_b, "cramers_v", 0.0, int(n), 0.0, 0.0, 0.0)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    phi2 = max(0.0, chi2 / n - (r - 1) * (c - 1) / (n - 1))
    r_corr = r - (r - 1) ** 2 / (n - 1)
    c_corr = c - (c - 1) ** 2 / (n - 1)
    denom = min(r_corr - 1, c_corr - 1)
    v = math.sqrt(min(1.0, phi2 / denom)) if denom > 0 else 0.0
    h_a, h_b = _entropy(table.sum(1)), _entropy(table.sum(0))
    mi = max(0.0, h_a + h_b - _entropy(table.ravel()) - (r - 1) * (c - 1) / (2 * n))
    u_ba = min(1.0, mi / h_b) if h_b > 0 else 0.0
    u_ab = min(1.0, mi / h_a) if h_a > 0 else 0.0
    nmi = min(1.0, mi / math.sqrt(h_a * h_b)) if h_a > 0 and h_b > 0 else 0.0
    return Association(name_a, name_b, "cramers_v", v, int(n), u_ba, u_ab, nmi)


def correlation_ratio(groups: Sequence[str], y: np.ndarray, name_a: str = "a", name_b: str = "b") -> Association:
    """η of continuous `y` given categorical `groups`, from the adjusted η² = 1 - (SSW/(n-k)) / (SST/(n-1))."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    codes, _ = pd.factorize(pd.Series(list(groups), dtype=object))
    k = int(codes.max()) + 1 if n else 0
    sst = float(((y - y.mean()) ** 2).sum()) if n else 0.0
    if n - k < 1 or k < 2 or sst <= 0:
        return Association(name_a, name_b, "correlation_ratio", 0.0, n)
    sums = np.bincount(codes, weights=y, minlength=k)
    sizes = np.bincount(codes, minlength=k)
    ssb = float((sums**2 / np.maximum(sizes, 1)).sum() - y.sum() ** 2 / n)
    adj = 1.0 - ((sst - ssb) / (n - k)) / (sst / (n - 1))
    return Association(name_a, name_b, "correlation_ratio", math.sqrt(min(1.0, max(0.0, adj))), n)


def rank_correlation(x: np.ndarray, y: np.ndarray, name_a: str = "a", name_b: str = "b") -> Association:
    """|Spearman ρ| of two continuous columns."""
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Association(name_a, name_b, "spearman", 0.0, n)
    rho = float(spearmanr(x, y).statistic)
    return Association(name_a, name_b, "spearman", abs(rho) if math.isfinite(rho) else 0.0, n)


def determines(assoc: Association, a: str) -> bool:
    """Whether column `a` (one side of `assoc`) nearly determines the other (module docstring thresholds)."""
    if assoc.measure == "cramers_v":
        u = assoc.u_b_given_a if a == assoc.a else assoc.u_a_given_b
        return (u or 0.0) >= STRONG_U or assoc.value >= STRONG_V
    return assoc.value >= (STRONG_ETA if assoc.measure == "correlation_ratio" else STRONG_RHO)


def _describe(assoc: Association, a: str) -> str:
    """'Cramér's V 0.79, U(cell_line|plate) 0.58' from a's point of view."""
    b = assoc.b if a == assoc.a else assoc.a
    if assoc.measure == "cramers_v":
        u = assoc.u_b_given_a if a == assoc.a else assoc.u_a_given_b
        return f"Cramér's V {assoc.value:.2f}, U({b}|{a}) {u or 0.0:.2f}"
    if assoc.measure == "correlation_ratio":
        return f"correlation ratio η {assoc.value:.2f}"
    return f"|Spearman ρ| {assoc.value:.2f}"


@dataclass
class _Prepared:
    """One column's cells, converted once: known mask, class names, numbers (NaN where not a number)."""

    kind: str
    known: np.ndarray
    labels: np.ndarray
    numbers: np.ndarray


def _prepare(series: pd.Series, kind: str) -> _Prepared:
    known = np.asarray([not is_missing(v) for v in series], dtype=bool)
    labels = np.asarray([category_label(v) if k else "" for v, k in zip(series, known)], dtype=object)
    numbers = np.full(len(series), np.nan)
    if kind == "continuous":
        numbers[known] = [float(v) for v, k in zip(series, known) if k]
    return _Prepared(kind, known, labels, numbers)


def _associate(pa: _Prepared, a: str, pb: _Prepared, b: str) -> Association | None:
    both = pa.known & pb.known
    if both.sum() < 3:
        return None
    cont_a, cont_b = pa.kind == "continuous", pb.kind == "continuous"
    if cont_a and cont_b:
        return rank_correlation(pa.numbers[both], pb.numbers[both], a, b)
    if cont_a:  # η keeps the categorical side first
        return correlation_ratio(pb.labels[both], pa.numbers[both], b, a)
    if cont_b:
        return correlation_ratio(pa.labels[both], pb.numbers[both], a, b)
    return categorical_association(pa.labels[both], pb.labels[both], a, b)


def associate(frame: pd.DataFrame, a: str, kind_a: str, b: str, kind_b: str) -> Association | None:
    """The association of two columns that fits their kinds; None with fewer than 3 jointly known rows.

    A ``correlation_ratio`` always has the categorical column as `a`, so the result may be swapped.
    """
    return _associate(_prepare(frame[a], kind_a), a, _prepare(frame[b], kind_b), b)


# ------------------------------------------------------------------------------------------- roles


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
    word = matched_word(name, tuple(IDENTIFIER_WORDS))
    if word:
        return "identifier", f"name looks like an identifier ('{word}')"
    integers = kind == "continuous" and all(float(v).is_integer() for v in known)
    if kind in ("categorical", "multilabel") or integers:
        if n_known >= 10 and distinct >= IDENTIFIER_UNIQUE_FRACTION * n_known:
            return "identifier", f"≈ unique per row ({distinct} values over {n_known} known rows)"
    if kind in ("categorical", "multilabel") and distinct > 2 and n_known / distinct < MIN_ROWS_PER_VALUE:
        return "identifier", (f"too sparse for a guide head: {distinct} values with {n_known / distinct:.1f} rows "
                              f"each on average (< {MIN_ROWS_PER_VALUE:g}); treated like an identifier")
    split_word = matched_word(name, tuple(SPLIT_WORDS)) or ("set" if name_tokens(name) == ["set"] else None)
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
    source = table.source.name
    labels, exclude = list(labels), list(exclude)
    _check_columns(labels, available, "label column(s)", source)
    _check_columns(exclude, available, "excluded column(s)", source)
    if table.image_column in labels:
        raise UserError(f"--labels names the image column '{table.image_column}'; pass the column holding the task "
                        f"labels")

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

    audited = [c for c in available if columns[c].role not in ("identifier", "constant", "excluded")]
    non_label = [c for c in audited if c not in labels]
    prepared = {c: _prepare(frame[c], columns[c].kind) for c in audited}
    associations: list[Association] = []
    for i, a in enumerate(non_label):
        for b in non_label[i + 1 :]:
            assoc = _associate(prepared[a], a, prepared[b], b)
            if assoc is not None:
                associations.append(assoc)
    associations.sort(key=lambda s: -s.value)
    label_assocs = [
        assoc for c in non_label for lab in labels
        if (assoc := _oriented(_associate(prepared[c], c, prepared[lab], lab), c)) is not None
    ]

    notes: list[str] = []
    for name in pending:  # rule 6: strong association with a label, else review
        strong = [s for s in label_assocs if s.a == name and determines(s, name)]
        col = columns[name]
        if strong:
            col.role = "informative"
            col.reason = (f"no recognised name, but it nearly determines label '{strong[0].b}' "
                          f"({_describe(strong[0], name)}); check it is not a shortcut")
        else:
            col.reason = "name not recognised and no strong label association: decide yourself"
    for col in columns.values():
        if col.role in GUIDED_ROLES:
            col.head = _head(col.role, col.kind, col.cardinality)

    entanglements: list[Entanglement] = []
    for assoc in associations:
        for a, b in ((assoc.a, assoc.b), (assoc.b, assoc.a)):
            if columns[a].role == "spurious" and columns[b].role == "informative" and determines(assoc, a):
                message = (f"'{a}' (spurious) nearly determines '{b}' (informative): {_describe(assoc, a)}; "
                           f"suppressing '{a}' as is would also remove '{b}', so its guide is conditioned on it "
                           f"(given: [{b}])")
                entanglements.append(Entanglement(a, b, assoc, message))
    for assoc in label_assocs:
        a = assoc.a
        strength = max(assoc.value, assoc.u_b_given_a or 0.0)
        if columns[a].role == "spurious" and strength >= SHORTCUT_NOTE:
            notes.append(f"'{a}' (spurious) is associated with label '{assoc.b}' ({_describe(assoc, a)}): a shortcut "
                         f"in-distribution; evaluate on held-out values of '{a}'")

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
            separator=multilabel_separator(list(frame[name])) if multilabel else "|",
        ))
    return TableAudit(source=table.source, n_rows=len(frame), image_column=table.image_column, labels=labels,
                      columns=columns, associations=associations, label_associations=label_assocs,
                      entanglements=entanglements, suggestions=suggestions, notes=notes)


def _oriented(assoc: Association | None, a: str) -> Association | None:
    """`assoc` with column `a` on the `a` side (η keeps the categorical side first, so it may be swapped)."""
    if assoc is None or assoc.a == a:
        return assoc
    return Association(assoc.b, assoc.a, assoc.measure, assoc.value, assoc.n_rows, assoc.u_a_given_b,
                       assoc.u_b_given_a, assoc.nmi)


# ------------------------------------------------------------------------------------------ output

_YAML_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_YAML_RESERVED = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})


def _yaml_str(text: str) -> str:
    """A column name as a YAML scalar that reads back as this exact string."""
    if _YAML_PLAIN.fullmatch(text) and text.lower() not in _YAML_RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar


def _comment(text: str) -> str:
    return " ".join(text.split())


def suggest_guidance(audit: TableAudit) -> str:
    """A ``guidance:`` YAML block to paste into a config, each choice explained in a ``#`` comment."""
    lines = ["guidance:", f"  # suggested by `metadino inspect` from {_comment(audit.source.name)} "
             f"({audit.n_rows} rows); review each guide before training"]
    if not audit.suggestions:
        lines.append("  guides: []  # no column looks clearly informative or spurious; see the audit")
    else:
        lines.append("  guides:")
    for s in audit.suggestions:
        lines.append(f"    - column: {_yaml_str(s.column)}  # {_comment(s.why)}")
        lines.append(f"      role: {s.role}")
        lines.append(f"      head: {s.head}")
        if s.multilabel:
            lines.append("      multilabel: true")
            if s.separator != "|":
                lines.append(f"      separator: {json.dumps(s.separator)}")
        lines.append(f"      weight: {s.weight:g}  # "
                     + ("divided by guidance.spurious_weight_divisor for spurious guides" if s.role == "spurious"
                        else "guide loss weight relative to the SSL loss"))
        if s.given:
            lines.append(f"      given: [{', '.join(_yaml_str(g) for g in s.given)}]  # {_comment(s.given_why)}")
    skipped = [c for c in audit.columns.values() if c.role not in GUIDED_ROLES]
    if skipped:
        lines.append("  # not guided:")
        for c in skipped:
            lines.append(f"  #   {_comment(c.name)}: {c.role} ({_comment(c.reason)})")
    return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _cell(text: str) -> str:
    return _comment(str(text)).replace("|", "\\|")


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
    shown = [s for s in audit.associations if s.value >= 0.1][:_MAX_PAIRS_SHOWN]
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
        out.append("No pair of columns is associated (all values < 0.1).")
    if audit.labels:
        out += ["", "## Association with the labels", "",
                "| column | label | measure | value | U(label\\|column) | role |", "|---|---|---|---|---|---|"]
        for s in sorted(audit.label_associations, key=lambda s: -s.value):
            out.append(f"| {_cell(s.a)} | {_cell(s.b)} | {s.measure} | {s.value:.2f} | {_fmt(s.u_b_given_a)} | "
                       f"{audit.columns[s.a].role} |")
    warnings = [e.message for e in audit.entanglements] + audit.notes
    out += ["", "## Warnings", ""]
    out += [f"- {_comment(w)}" for w in warnings] if warnings else ["None."]
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


def run_inspect(
    table: str | Path,
    *,
    image_column: str = "path",
    root: str | None = None,
    labels: Sequence[str] = (),
    model: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
    out: str | Path | None = None,
    folds: int = 5,
    seed: int = 0,
) -> str:
    """Load the table, audit it, with `model` measure each column's leakage, and return the Markdown text.

    The text is also written to `out` (parents created) when given.

    Raises:
        UserError: table problems, unknown columns, a one-class label, a model that cannot be loaded.
    """
    meta = load_table(table, image_column=image_column, root=root, check_files=model is not None)
    audit = audit_table(meta, labels=labels)
    leakage: dict[str, Leakage] | None = None
    if model is not None:
        features = _model_features(model, meta, batch_size=batch_size, device=device, progress=progress)
        leakage = {}
        probe = [c for c, col in audit.columns.items() if col.role not in ("identifier", "constant", "excluded")]
        from tqdm import tqdm  # progress over columns only

        for column in tqdm(probe, desc="leakage", unit="column", disable=not progress):
            try:
                leakage[column] = column_leakage(features, meta.frame[column], column=column, folds=folds, seed=seed)
            except UserError as err:  # one unprobeable column should not hide the others
                audit.notes.append(f"leakage of '{column}' not measured: {err}")
    text = format_audit(audit, leakage, model=model)
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def _model_features(model: str, meta: MetadataTable, *, batch_size: int, device: str, progress: bool) -> np.ndarray:
    from metadino.embed import extract_features  # torch-heavy: imported only when a model is given
    from metadino.export import load_model

    backbone, preprocessing = load_model(model)
    features = extract_features(backbone, meta, preprocessing, batch_size=batch_size, device=device, progress=progress)
    return features.numpy()


__all__ = [
    "Association", "ColumnAudit", "Entanglement", "Suggestion", "TableAudit", "associate", "audit_table",
    "categorical_association", "correlation_ratio", "determines", "format_audit", "rank_correlation",
    "run_inspect", "suggest_guidance",
]
