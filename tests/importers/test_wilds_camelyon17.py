"""Camelyon17-WILDS: metadata.csv (with its saved index column) + patches/patient_XXX_node_N/...png."""

from __future__ import annotations

import pytest

from metadino.data.table import load_table
from metadino.errors import UserError

from .conftest import check_snippet

CSV = """,patient,node,x_coord,y_coord,tumor,slide,center,split
0,004,4,3328,21792,1,0,0,0
1,004,4,3200,21792,0,0,0,1
2,021,2,640,9024,0,10,1,0
3,042,3,11232,17120,1,23,2,0
"""
EXPECTED = [
    "patches/patient_004_node_4/patch_patient_004_node_4_x_3328_y_21792.png",
    "patches/patient_004_node_4/patch_patient_004_node_4_x_3200_y_21792.png",
    "patches/patient_021_node_2/patch_patient_021_node_2_x_640_y_9024.png",
    "patches/patient_042_node_3/patch_patient_042_node_3_x_11232_y_17120.png",
]


@pytest.fixture
def camelyon(tmp_path, png):
    root = tmp_path / "camelyon17_v1.0"
    root.mkdir()
    (root / "metadata.csv").write_text(CSV)
    for p in EXPECTED:
        png(root / p, size=96)
    return root


def test_patch_paths_and_official_split(camelyon, do_import):
    result = do_import("wilds-camelyon17", camelyon)
    t = result.table
    assert t["path"].tolist() == EXPECTED
    assert t["split"].tolist() == ["train", "id_val", "val", "test"]  # hospital 1 -> OOD val, hospital 2 -> test
    assert t["patient"].tolist() == ["004", "004", "021", "042"]
    assert t["tumor"].tolist() == ["1", "0", "0", "1"]
    assert list(t.columns) == ["path", "split", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center"]
    data = check_snippet(result.snippet_path, ["table", "root", "image_column", "rows"])
    assert len(load_table(data.table, image_column="path", root=data.root)) == 4


def test_unpadded_patient_is_padded_and_missing_coordinate_is_named(camelyon, do_import):
    (camelyon / "metadata.csv").write_text(CSV.replace(",004,", ",4,"))
    assert do_import("wilds-camelyon17", camelyon).table["path"].tolist() == EXPECTED
    (camelyon / "metadata.csv").write_text(CSV.replace("640,9024", "640,"))
    with pytest.raises(UserError, match=r"metadata.csv: column 'y_coord' is empty in row 3"):
        do_import("wilds-camelyon17", camelyon, overwrite=True)
