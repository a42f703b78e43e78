from __future__ import annotations

import pandas as pd
import pytest

from metadino.data.table import load_table
from metadino.data.targets import TableTargets, build_encoder, load_vocab, save_vocab
from metadino.errors import UserError


@pytest.fixture
def table(tmp_path):
    (tmp_path / "img.png").write_bytes(b"")
    frame = pd.DataFrame(
        {
            "path": [f"i{i}.png" for i in range(6)],
            "plate": ["P2", "P1", "", "P2", "P3", "NA"],
            "well": [1, 2, 3, 1, 2, 3],
            "loc": ["a|b", "b", "c|a", "", "b|c", "a"],
            "exposure": [0.5, 1.5, None, 2.5, 1.0, 3.5],
            "bad": ["1.0", "x", "2", "3", "4", "5"],
            "const": ["k"] * 6,
        }
    )
    frame.to_csv(tmp_path / "meta.csv", index=False)
    return load_table(tmp_path / "meta.csv", image_column="path", check_files=False)


def test_categorical_missing_is_invalid_not_class_zero(table):
    enc = build_encoder(table, "plate")
    assert enc.kind == "categorical" and enc.classes == ["P1", "P2", "P3"]
    values, valid = enc.encode(table.frame["plate"])
    assert valid.tolist() == [True, True, False, True, True, False]
    assert values[valid].tolist() == [1, 0, 1, 2]
    assert build_encoder(table, "well").classes == ["1", "2", "3"]


def test_multilabel_and_continuous(table):
    enc = build_encoder(table, "loc")
    assert enc.kind == "multilabel" and enc.classes == ["a", "b", "c"]
    values, valid = enc.encode(table.frame["loc"])
    assert values[0].tolist() == [1.0, 1.0, 0.0] and not valid[3]
    cont = build_encoder(table, "exposure", kind="continuous")
    assert (cont.minimum, cont.maximum) == (0.5, 3.5)
    v, ok = cont.encode(table.frame["exposure"])
    assert ok.tolist() == [True, True, False, True, True, True] and v[3] == 2.5
    cond = cont.one_hot(v, ok)
    assert cond.shape == (6, 1) and cond[2, 0] == 0 and cond[5, 0] == pytest.approx(1.0)


def test_errors_name_column_and_rows(table):
    with pytest.raises(UserError, match=r"'bad'.*row\(s\) 2"):
        build_encoder(table, "bad", kind="continuous")
    with pytest.raises(UserError, match="'const'.*fewer than two distinct"):
        build_encoder(table, "const")
    with pytest.raises(UserError, match="no column 'plat'"):
        build_encoder(table, "plat")


def test_vocab_roundtrip_and_unseen_category(table, tmp_path):
    encs = {"plate": build_encoder(table, "plate"), "loc": build_encoder(table, "loc")}
    save_vocab(tmp_path / "vocab.json", encs)
    again = load_vocab(tmp_path / "vocab.json")
    assert again == encs
    values, valid = again["plate"].encode(pd.Series(["P3", "P9"]))
    assert valid.tolist() == [True, False] and values[0] == 2
    targets = TableTargets.from_table(table, encs)
    v, ok = targets.row(0)["plate"]
    assert v.item() == 1 and ok.item()
