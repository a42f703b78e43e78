from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metadino.data.table import MetadataTable, infer_column_kind, load_table
from metadino.errors import UserError


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def table_dir(tmp_path: Path) -> Path:
    _touch(tmp_path, "img/a.png", "img/b.png", "img/c.tif", "img/d.npy")
    (tmp_path / "meta.csv").write_text(
        "path,cell_line,split,exposure\n"
        "img/a.png,U2OS,1,10.5\n"
        "img/b.png,NA,2,\n"
        "img/c.tif,HeLa,1,null\n"
        "img/d.npy,,2,3.25\n"
    )
    return tmp_path


def test_basic_csv(table_dir):
    t = load_table(table_dir / "meta.csv", image_column="path")
    assert isinstance(t, MetadataTable) and len(t) == 4
    assert t.source == (table_dir / "meta.csv").absolute()
    assert t.paths == [table_dir / "img" / n for n in ("a.png", "b.png", "c.tif", "d.npy")]
    assert all(p.is_absolute() for p in t.paths)
    assert t.row_numbers == [1, 2, 3, 4]
    assert list(t.frame.columns) == ["path", "cell_line", "split", "exposure"]
    assert list(t.frame.index) == [0, 1, 2, 3]
    # Missing tokens are kept as missing, whatever the dtype (pandas 3 StringDtype included).
    assert [pd.isna(v) for v in t.frame["cell_line"]] == [False, True, False, True]
    assert [pd.isna(v) for v in t.frame["exposure"]] == [False, True, True, False]
    assert t.frame["exposure"][0] == 10.5


def test_filters_compare_as_strings_and_keep_row_numbers(table_dir):
    t = load_table(table_dir / "meta.csv", image_column="path", rows={"split": "2"})
    assert t.row_numbers == [2, 4] and list(t.frame.index) == [0, 1]
    assert [p.name for p in t.paths] == ["b.png", "d.npy"]
    t = load_table(table_dir / "meta.csv", image_column="path", rows={"split": 1})
    assert t.row_numbers == [1, 3]
    t = load_table(table_dir / "meta.csv", image_column="path", rows={"cell_line": ["HeLa", "U2OS"], "split": [1]})
    assert t.row_numbers == [1, 3]
    # A float column with missing values still matches integer text.
    (table_dir / "f.csv").write_text("path,split\nimg/a.png,1\nimg/b.png,\nimg/c.tif,2\n")
    assert load_table(table_dir / "f.csv", image_column="path", rows={"split": "1"}).row_numbers == [1]


def test_filter_errors(table_dir):
    with pytest.raises(UserError, match=r"filter 'splt=1'.*meta\.csv.*did you mean 'split'"):
        load_table(table_dir / "meta.csv", image_column="path", rows={"splt": "1"})
    with pytest.raises(UserError, match=r"filter 'split=ood' selects no rows of meta\.csv.*'1', '2'"):
        load_table(table_dir / "meta.csv", image_column="path", rows={"split": "ood"})
    with pytest.raises(UserError, match=r"filter 'split=2' selects no rows of meta\.csv after cell_line=HeLa"):
        load_table(table_dir / "meta.csv", image_column="path", rows={"cell_line": "HeLa", "split": "2"})


def test_root_and_absolute_paths(tmp_path):
    _touch(tmp_path / "data", "x/a.png")
    _touch(tmp_path, "abs/b.png")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "t.tsv").write_text(f"file\tlabel\nx/a.png\tq\n{tmp_path / 'abs' / 'b.png'}\tr\n")
    t = load_table(tmp_path / "tables" / "t.tsv", image_column="file", root=tmp_path / "data")
    assert t.paths == [tmp_path / "data" / "x" / "a.png", tmp_path / "abs" / "b.png"]
    with pytest.raises(UserError, match="root folder"):
        load_table(tmp_path / "tables" / "t.tsv", image_column="file", root=tmp_path / "nope")


def test_parquet_and_missing_tokens(tmp_path):
    _touch(tmp_path, "a.png", "b.png")
    df = pd.DataFrame({"path": ["a.png", "b.png"], "antibody": ["AB1", "None"], "n": [1, 2]})
    df.to_parquet(tmp_path / "m.parquet")
    t = load_table(tmp_path / "m.parquet", image_column="path")
    assert t.frame["antibody"][0] == "AB1" and pd.isna(t.frame["antibody"][1])
    assert t.row_numbers == [1, 2]


def test_table_file_errors(tmp_path):
    with pytest.raises(UserError, match=r"nope\.csv does not exist"):
        load_table(tmp_path / "nope.csv", image_column="path")
    (tmp_path / "t.xlsx").write_bytes(b"x")
    with pytest.raises(UserError, match=r"t\.xlsx.*unsupported suffix"):
        load_table(tmp_path / "t.xlsx", image_column="path")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match=r"empty\.csv is empty"):
        load_table(tmp_path / "empty.csv", image_column="path")
    (tmp_path / "header.csv").write_text("path,label\n")
    with pytest.raises(UserError, match=r"header\.csv has no data rows"):
        load_table(tmp_path / "header.csv", image_column="path")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserError, match=r"cannot read table bad\.parquet"):
        load_table(tmp_path / "bad.parquet", image_column="path")


def test_column_errors(table_dir):
    with pytest.raises(UserError, match=r"meta\.csv has no image column 'Path'.*did you mean 'path'.*'cell_line'"):
        load_table(table_dir / "meta.csv", image_column="Path")
    with pytest.raises(UserError, match=r"no column 'cel_line' \(did you mean 'cell_line'\?\)"):
        load_table(table_dir / "meta.csv", image_column="path", required_columns=["split", "cel_line"])


def test_path_cell_errors_name_rows(tmp_path):
    _touch(tmp_path, "a.png", "b.png")
    (tmp_path / "e.csv").write_text("path,y\na.png,1\n,2\n  ,3\nb.png,4\n")
    with pytest.raises(UserError, match=r"e\.csv: column 'path' is empty in rows 2, 3 \(2 rows\)"):
        load_table(tmp_path / "e.csv", image_column="path")
    (tmp_path / "d.csv").write_text("path,y\na.png,1\nb.png,2\n./a.png,3\n")
    with pytest.raises(UserError, match=r"d\.csv: column 'path' repeats image paths in rows 1, 3.*row 1 and row 3"):
        load_table(tmp_path / "d.csv", image_column="path")
    (tmp_path / "s.csv").write_text("path,y\na.png,1\nb.gif,2\n")
    with pytest.raises(UserError, match=r"s\.csv: .*unsupported image type in row 2 \(e\.g\. 'b\.gif'\)"):
        load_table(tmp_path / "s.csv", image_column="path")


def test_missing_files_listed_with_total(tmp_path):
    _touch(tmp_path, "ok.png")
    lines = ["path"] + ["ok.png"] + [f"gone{i}.png" for i in range(8)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"m\.csv: .*do not exist in rows 2, 3, 4, 5, 6 and 3 more \(8 rows\)") as err:
        load_table(tmp_path / "m.csv", image_column="path")
    assert "gone0.png" in str(err.value)
    t = load_table(tmp_path / "m.csv", image_column="path", check_files=False)
    assert len(t) == 9
    # A filter that excludes the missing files makes the table valid.
    (tmp_path / "m2.csv").write_text("path,split\nok.png,train\ngone.png,test\n")
    assert len(load_table(tmp_path / "m2.csv", image_column="path", rows={"split": "train"})) == 1


def test_fingerprint(table_dir):
    path = table_dir / "meta.csv"
    a = load_table(path, image_column="path").fingerprint()
    assert a == load_table(path, image_column="path").fingerprint() and len(a) == 16
    b = load_table(path, image_column="path", rows={"split": 1}).fingerprint()
    assert b != a
    # the content counts, not the file's mtime: a rewrite with identical content resumes, an edited cell does not
    text = path.read_text()
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_table(path, image_column="path").fingerprint() == a
    path.write_text(text.replace("U2OS", "U2OS-b"))
    assert load_table(path, image_column="path").fingerprint() != a
    path.write_text(text.replace("10.5", "10.25"))
    assert load_table(path, image_column="path").fingerprint() != a
    path.write_text(text.replace("path,cell_line", "path,cell"))
    assert load_table(path, image_column="path").fingerprint() != a


def test_the_fingerprint_follows_the_selected_rows_only(table_dir):
    path = table_dir / "meta.csv"
    text = path.read_text()
    a = load_table(path, image_column="path", rows={"split": 1}).fingerprint()
    path.write_text(text.replace("img/b.png,NA,2,", "img/b.png,HeLa,2,7"))  # a row outside the selection
    assert load_table(path, image_column="path", rows={"split": 1}).fingerprint() == a
    assert load_table(path, image_column="path", rows={"split": 2}).fingerprint() != a


def test_a_column_name_given_twice_is_an_error_naming_the_file_and_the_column(tmp_path):
    """Before: pandas renamed the second 'a' to 'a.1' and a guide on 'a' silently read the first."""
    import gzip

    _touch(tmp_path, "x.png")
    (tmp_path / "meta.csv").write_text("path,a,b,a\nx.png,1,2,3\n")
    with pytest.raises(UserError, match=r"meta.csv has the column 'a' twice in its header \(columns 2 and 4\)"):
        load_table(tmp_path / "meta.csv", image_column="path")
    (tmp_path / "meta.tsv.gz").write_bytes(gzip.compress(b"path\tb\tb\nx.png\t1\t2\n"))
    with pytest.raises(UserError, match="meta.tsv.gz has the column 'b' twice"):
        load_table(tmp_path / "meta.tsv.gz", image_column="path")
    (tmp_path / "ok.csv").write_text("path,a,a.1,,\nx.png,1,2,,\n")  # distinct names and blank cells are fine
    assert list(load_table(tmp_path / "ok.csv", image_column="path").frame.columns)[:3] == ["path", "a", "a.1"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_arrays([pa.array(["x.png"]), pa.array([1]), pa.array([2])], names=["path", "c", "c"]),
                   tmp_path / "meta.parquet")
    with pytest.raises(UserError, match=r"meta.parquet has the column 'c' twice in its schema"):
        load_table(tmp_path / "meta.parquet", image_column="path")


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["a", "b", None, "a"], "categorical"),
        ([1.5, 2.25, np.nan, 3.0], "continuous"),
        ([1, 2, 3, 1, 2], "categorical"),
        ([1.0, 2.0, np.nan, 1.0], "categorical"),
        (list(range(50)), "continuous"),
        ([True, False, True], "categorical"),
        (["x", "x", None, ""], "constant"),
        ([np.nan, np.nan], "constant"),
        ([7, 7, 7], "constant"),
        (["Nucleoli|Cytosol", "Cytosol", "Nucleoli", "Golgi|Cytosol", "Golgi"], "multilabel"),
        (["a;b", "b", "a", "c", "b;c", "c"], "multilabel"),
        (["see note; ok", "plain", "fine; really", "other", "x; y", "z"], "categorical"),
        (["P1", "P2", "P3"], "categorical"),
    ],
)
def test_infer_column_kind(values, kind):
    assert infer_column_kind(pd.Series(values)) == kind


def test_infer_column_kind_string_dtype():
    s = pd.Series(["a|b", "b", "a|c", pd.NA, "c"], dtype="string")
    assert infer_column_kind(s) == "multilabel"
    assert infer_column_kind(pd.Series(["u", "v", "u"], dtype="string")) == "categorical"
    assert infer_column_kind(pd.Series([1, 2, 3.5], dtype=object)) == "continuous"
