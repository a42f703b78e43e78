"""iWildCam-WILDS v2.0: metadata.csv + categories.csv + images in train/."""

from __future__ import annotations

import pytest

from metadino.data.table import load_table
from metadino.errors import UserError

from .conftest import check_snippet

HEADER = "split,location_remapped,location,sequence_remapped,datetime,y,category_id,seq_id,filename,image_id"
ROWS = [
    ("train", 0, 30, 0, "2013-06-05 13:31:53.000", 0, 0, "s0", "a.jpg", "i0"),
    ("train", 0, 30, 0, "2013-06-05 13:31:54.000", 0, 0, "s0", "b.jpg", "i1"),
    ("val", 1, 47, 1, "2019-11-20 00:05:01.000", 1, 72, "s1", "c.jpg", "i2"),
    ("id_test", 2, 51, 2, "2016-01-31 23:59:59.500", 2, 101, "s2", "d.jpg", "i3"),
]


@pytest.fixture
def iwildcam(tmp_path, jpg):
    root = tmp_path / "iwildcam_v2.0"
    root.mkdir()
    lines = [HEADER] + [",".join(str(v) for v in r) for r in ROWS]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    (root / "categories.csv").write_text("y,category_id,name\n0,0,empty\n1,72,tayassu pecari\n2,101,dasyprocta punctata\n")
    for r in ROWS:
        jpg(root / "train" / r[8])
    return root


def test_paths_location_sequence_time_and_species(iwildcam, do_import):
    result = do_import("wilds-iwildcam", iwildcam)
    t = result.table
    assert t["path"].tolist() == ["train/a.jpg", "train/b.jpg", "train/c.jpg", "train/d.jpg"]
    assert t["split"].tolist() == ["train", "train", "val", "id_test"]
    assert t["location"].tolist() == ["30", "30", "47", "51"]  # the file's own location column is kept
    assert t["sequence"].tolist() == ["0", "0", "1", "2"]
    assert t["year"].tolist() == ["2013", "2013", "2019", "2016"]
    assert t["month"].tolist() == ["6", "6", "11", "1"]
    assert t["hour"].tolist() == ["13", "13", "0", "23"]
    assert t["species"].tolist() == ["empty", "empty", "tayassu pecari", "dasyprocta punctata"]
    assert t["y"].tolist() == ["0", "0", "1", "2"]
    data = check_snippet(result.snippet_path, ["table", "root", "image_column", "rows"])
    assert data.rows == {"split": "train"}
    assert len(load_table(data.table, image_column="path", root=data.root, rows=data.rows)) == 2


def test_location_comes_from_location_remapped_when_absent(iwildcam, do_import):
    text = (iwildcam / "metadata.csv").read_text().replace(",location,", ",loc_original,")
    (iwildcam / "metadata.csv").write_text(text)
    (iwildcam / "categories.csv").unlink()
    t = do_import("wilds-iwildcam", iwildcam).table
    assert t["location"].tolist() == ["0", "0", "1", "2"]
    assert "species" not in t.columns


def test_bad_datetime_and_missing_columns_are_named(iwildcam, do_import):
    text = (iwildcam / "metadata.csv").read_text()
    (iwildcam / "metadata.csv").write_text(text.replace("2019-11-20 00:05:01.000", "not a time"))
    with pytest.raises(UserError, match=r"metadata.csv: column 'datetime' is not a date and time in row 3"):
        do_import("wilds-iwildcam", iwildcam)
    (iwildcam / "metadata.csv").write_text(text.replace("filename", "file"))
    with pytest.raises(UserError, match=r"metadata.csv has no column 'filename'"):
        do_import("wilds-iwildcam", iwildcam)


def test_images_elsewhere(iwildcam, do_import, tmp_path):
    moved = tmp_path / "elsewhere"
    (iwildcam / "train").rename(moved)
    with pytest.raises(UserError, match=r"do not exist for rows 1, 2, 3, 4 \(4 rows\)"):
        do_import("wilds-iwildcam", iwildcam)
    result = do_import("wilds-iwildcam", iwildcam, images=moved)
    assert result.table["path"].tolist()[0] == "a.jpg" and result.snippet["root"] == str(moved)
