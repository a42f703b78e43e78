from __future__ import annotations

import pandas as pd
import pytest
import torch

from metadino.data.table import load_table
from metadino.data.targets import TableTargets, build_encoder, load_vocab, save_vocab
from metadino.errors import UserError
from testkit import full_disk_halfway_through_write_text


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


def _one_column_table(tmp_path, values, name="meta.csv"):
    lines = ["path,v"] + [f"i{i}.png,{v}" for i, v in enumerate(values)]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return load_table(tmp_path / name, image_column="path", check_files=False)


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e308"])
def test_non_finite_or_float32_overflowing_numbers_are_refused_naming_column_and_rows(tmp_path, bad):
    """Before: inf / 1e308 (inf in float32) became regression targets and conditioning inputs."""
    t = _one_column_table(tmp_path, [0.5, bad, 1.5, 2.0, bad, 3.0])
    with pytest.raises(UserError, match=r"column 'v' \(needed by guide 'v'\).*infinite or too large.*row\(s\) 2, 5"):
        build_encoder(t, "v", kind="continuous", purpose="guide 'v'")
    with pytest.raises(UserError, match="infinite or too large"):  # a `given:` column, kind inferred
        build_encoder(t, "v")
    enc = build_encoder(_one_column_table(tmp_path, [0.5, 1.0, 1.5], "ok.csv"), "v", kind="continuous")
    values, valid = enc.encode(pd.Series([1.0, float("inf"), 1e308, -1e39, 3.0e38]))
    assert valid.tolist() == [True, False, False, False, True]  # never a target, even from another table
    assert torch.isfinite(values).all()


def test_a_float_column_as_classes_is_refused_when_nearly_all_distinct_and_warned_when_many(tmp_path):
    """Before: 1000 rows of floats silently became ~1000 classes of the default classification head."""
    import warnings

    distinct = _one_column_table(tmp_path, [round(0.1 * i + 0.05, 2) for i in range(100)])
    with pytest.raises(UserError, match=r"guide 'v'.*100 distinct values in 100 rows.*Set head: regression"):
        build_encoder(distinct, "v", kind="categorical", purpose="guide 'v'")
    many = _one_column_table(tmp_path, [0.5 + i % 30 for i in range(100)], "many.csv")  # 30 levels in 100 rows
    with pytest.warns(UserWarning, match="becomes 30 classes.*head: regression"):
        assert len(build_encoder(many, "v", kind="categorical").classes) == 30
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doses = _one_column_table(tmp_path, [(0.1, 0.5, 1.0)[i % 3] for i in range(30)], "doses.csv")
        assert build_encoder(doses, "v", kind="categorical").classes == ["0.1", "0.5", "1"]
        ids = _one_column_table(tmp_path, list(range(100)), "ids.csv")  # integers: ids, not measurements
        assert len(build_encoder(ids, "v", kind="categorical").classes) == 100


def test_save_vocab_is_atomic(table, tmp_path, monkeypatch):

    encs = {"plate": build_encoder(table, "plate")}
    save_vocab(tmp_path / "vocab.json", encs)
    before = (tmp_path / "vocab.json").read_text()
    full_disk_halfway_through_write_text(monkeypatch)
    with pytest.raises(OSError):
        save_vocab(tmp_path / "vocab.json", {"loc": build_encoder(table, "loc")})
    monkeypatch.undo()
    assert (tmp_path / "vocab.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".vocab")) == []
