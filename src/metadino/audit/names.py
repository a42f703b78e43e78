"""Column-name vocabularies: which words mark an identifier, a data split, an acquisition (batch) factor or
a biological / semantic factor.

A name is matched token by token: camelCase and ``_``/``-`` separators split it, case and trailing digits are
ignored and plurals accepted, so ``CellLine_2`` and ``cell_lines`` both match ``cell_line``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

IDENTIFIER_WORDS: tuple[str, ...] = (
    "id", "ids", "uuid", "guid", "path", "filepath", "file", "filename", "fname", "url", "uri", "index", "idx",
)
SPLIT_WORDS: tuple[str, ...] = ("split", "fold", "subset", "partition")
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


__all__ = [
    "IDENTIFIER_WORDS", "INFORMATIVE_WORDS", "SPLIT_VALUES", "SPLIT_WORDS", "SPURIOUS_WORDS", "matched_word",
    "name_tokens",
]
