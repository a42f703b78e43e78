"""COCO Camera Traps JSON (LILA): images / annotations / categories."""

from __future__ import annotations

import json

import pytest

from metadino.data.table import load_table
from metadino.errors import UserError

from .conftest import check_snippet


def doc():
    return {
        "info": {"version": "1.0", "description": "miniature"},
        "images": [
            {"id": "img0", "file_name": "loc1/2019/IMG_0001.JPG", "location": "loc1",
             "datetime": "2019-07-20 11:39:48", "seq_id": "seq0", "seq_num_frames": 2, "frame_num": 0,
             "width": 8, "height": 8},
            {"id": "img1", "file_name": "loc1/2019/IMG_0002.JPG", "location": "loc1",
             "datetime": "2019-07-20 11:39:49", "seq_id": "seq0", "seq_num_frames": 2, "frame_num": 1,
             "width": 8, "height": 8},
            {"id": "img2", "file_name": "loc2/IMG_0003.JPG", "location": "loc2", "datetime": "2018:01:02 22:05:00",
             "seq_id": "seq1", "seq_num_frames": 1, "frame_num": 0, "width": 8, "height": 8},
            {"id": "img3", "file_name": "loc2/IMG_0004.JPG", "location": "loc2", "datetime": "0000-00-00 00:00:00",
             "seq_id": "seq2", "seq_num_frames": 1, "frame_num": 0, "width": 8, "height": 8},
        ],
        "annotations": [
            {"id": "a0", "image_id": "img0", "category_id": 1, "bbox": [0, 0, 2, 2]},
            {"id": "a1", "image_id": "img0", "category_id": 1, "bbox": [3, 3, 2, 2]},
            {"id": "a2", "image_id": "img1", "category_id": 1},
            {"id": "a3", "image_id": "img1", "category_id": 5},
            {"id": "a4", "image_id": "img2", "category_id": 0},
        ],
        "categories": [{"id": 0, "name": "empty"}, {"id": 1, "name": "deer"}, {"id": 5, "name": "coyote"}],
    }


@pytest.fixture
def cct(tmp_path, jpg):
    root = tmp_path / "cct"
    root.mkdir()
    (root / "cct.json").write_text(json.dumps(doc()))
    for image in doc()["images"]:
        jpg(root / image["file_name"])
    return root


def test_one_row_per_image_with_categories_sequence_and_time(cct, do_import):
    result = do_import("coco-camera-traps", cct / "cct.json")
    t = result.table
    assert t["path"].tolist() == ["loc1/2019/IMG_0001.JPG", "loc1/2019/IMG_0002.JPG", "loc2/IMG_0003.JPG",
                                  "loc2/IMG_0004.JPG"]
    assert t["image_id"].tolist() == ["img0", "img1", "img2", "img3"]
    assert t["category"].fillna("").tolist() == ["deer", "deer|coyote", "empty", ""]
    assert t["category_id"].fillna("").tolist() == ["1", "1|5", "0", ""]
    assert t["location"].tolist() == ["loc1", "loc1", "loc2", "loc2"]
    assert t["sequence"].tolist() == ["seq0", "seq0", "seq1", "seq2"]
    assert t["frame_num"].tolist() == ["0", "1", "0", "0"]
    # EXIF-style clock parsed; a broken clock leaves the parts empty with a note naming the image
    assert t["year"].fillna("").tolist() == ["2019", "2019", "2018", ""]
    assert t["hour"].fillna("").tolist() == ["11", "11", "22", ""]
    assert t["month"].fillna("").tolist() == ["7", "7", "1", ""]
    assert "'datetime' is not a date and time in cct.json images row 4" in result.summary
    assert "1 images have no annotation" in result.summary
    data = check_snippet(result.snippet_path, ["table", "root", "image_column"])  # no split in the file: no rows
    assert len(load_table(data.table, image_column="path", root=data.root)) == 4


def test_images_folder_and_missing_file(cct, do_import, tmp_path):
    result = do_import("coco-camera-traps", cct / "cct.json", images=cct)
    assert result.snippet["root"] == str(cct)
    (cct / "loc2" / "IMG_0003.JPG").unlink()
    with pytest.raises(UserError, match=r"cct.json images do not exist for row 3 "):
        do_import("coco-camera-traps", cct / "cct.json", overwrite=True)


def test_malformed_json_is_named(cct, do_import):
    bad = doc()
    del bad["images"][2]["file_name"]
    (cct / "cct.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"cct.json: entry 3 of 'images' lacks 'id', 'file_name'"):
        do_import("coco-camera-traps", cct / "cct.json")
    bad = doc()
    bad["annotations"][4]["category_id"] = 9
    (cct / "cct.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match=r"annotation 5 \(image 'img2'\) names category_id 9"):
        do_import("coco-camera-traps", cct / "cct.json")
    (cct / "cct.json").write_text('{"images": [')
    with pytest.raises(UserError, match=r"cct.json is not valid JSON \(line 1\)"):
        do_import("coco-camera-traps", cct / "cct.json")


def test_mixed_type_keys_are_written_as_text_to_parquet(cct, do_import):
    mixed = doc()
    mixed["images"][0]["location"] = 3  # LILA files mix integer and text locations
    (cct / "cct.json").write_text(json.dumps(mixed))
    t = do_import("coco-camera-traps", cct / "cct.json", name="cct.parquet").table
    assert t["location"].tolist() == ["3", "loc1", "loc2", "loc2"]
