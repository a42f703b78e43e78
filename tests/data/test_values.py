"""One rule per cell convention: missing, class name, multi-label tokens and separator."""

from __future__ import annotations

import numpy as np
import pandas as pd

from metadino.data.values import category_label, is_missing, known_mask, multilabel_separator, split_labels


def test_missing_cells():
    for value in (None, pd.NA, pd.NaT, float("nan"), np.float32("nan"), np.datetime64("NaT"), "", "  "):
        assert is_missing(value), repr(value)
    for value in (0, 0.0, "0", "NA?", False, "x"):
        assert not is_missing(value), repr(value)
    numeric = pd.Series([1.0, np.nan, 3.0])
    mixed = pd.Series(["a", " ", None, 2], dtype=object)
    assert known_mask(numeric).tolist() == [True, False, True]
    assert known_mask(mixed).tolist() == [True, False, False, True]
    assert known_mask(list(mixed)).tolist() == known_mask(mixed).tolist()


def test_category_label_is_the_training_class_name():
    assert category_label(3) == category_label(3.0) == category_label("3") == category_label(np.float32(3.0)) == "3"
    assert category_label(2.5) == "2.5" and category_label(" HeLa ") == "HeLa" and category_label(True) == "True"


def test_multilabel_tokens_and_separator():
    assert split_labels("a| b||") == ["a", "b"] and split_labels("a;b", ";") == ["a", "b"]
    assert multilabel_separator(["a|b", "b", "a", None]) == "|"
    assert multilabel_separator(["a;b", "b;c", "a"]) == ";"
    # '|' is common but free text (more pieces than cells); ';' separates shared labels
    cells = ["a;b", "b;c", "a;c", "note|x1"]
    assert multilabel_separator(cells) == ";"
    assert multilabel_separator(["a", "b"]) == "|" and multilabel_separator(["a", "b"], default=None) is None
