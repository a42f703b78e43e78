"""RxRx1-WILDS: metadata.csv + images/{experiment}/Plate{plate}/{well}_s{site}.png."""

from __future__ import annotations

import pytest

from metadino.data.table import load_table
from metadino.errors import UserError

from .conftest import check_snippet

CSV = """site_id,well_id,cell_type,dataset,experiment,plate,well,site,well_type,sirna,sirna_id
HEPG2-08_1_B02_1,HEPG2-08_1_B02,HEPG2,test,HEPG2-08,1,B02,1,positive_control,s501357,1118
HEPG2-08_1_B02_2,HEPG2-08_1_B02,HEPG2,test,HEPG2-08,1,B02,2,positive_control,s501357,1118
U2OS-01_3_C05_1,U2OS-01_3_C05,U2OS,train,U2OS-01,3,C05,1,treatment,s21721,17
RPE-05_2_D10_2,RPE-05_2_D10,RPE,val,RPE-05,2,D10,2,negative_control,EMPTY,1138
"""
EXPECTED = ["images/HEPG2-08/Plate1/B02_s1.png", "images/HEPG2-08/Plate1/B02_s2.png",
            "images/U2OS-01/Plate3/C05_s1.png", "images/RPE-05/Plate2/D10_s2.png"]


@pytest.fixture
def rxrx1(tmp_path, png):
    root = tmp_path / "rxrx1_v1.0"
    root.mkdir()
    (root / "metadata.csv").write_text(CSV)
    for p in EXPECTED:
        png(root / p)
    return root


def test_paths_split_and_label(rxrx1, do_import):
    result = do_import("wilds-rxrx1", rxrx1)
    t = result.table
    assert t["path"].tolist() == EXPECTED
    assert t["split"].tolist() == ["test", "test", "train", "val"]  # the file's `dataset`, renamed
    assert "dataset" not in t.columns
    assert t["sirna_id"].tolist() == ["1118", "1118", "17", "1138"]
    assert t["cell_type"].tolist() == ["HEPG2", "HEPG2", "U2OS", "RPE"]
    data = check_snippet(result.snippet_path, ["table", "root", "image_column", "rows"])
    assert [p.name for p in load_table(data.table, image_column="path", root=data.root, rows=data.rows).paths] == \
        ["C05_s1.png"]


def test_missing_plate_column_is_named(rxrx1, do_import):
    (rxrx1 / "metadata.csv").write_text(CSV.replace(",plate,", ",plate_no,"))
    with pytest.raises(UserError, match=r"metadata.csv has no column 'plate'"):
        do_import("wilds-rxrx1", rxrx1)
