"""MIMIC-CXR-JPG 2.0.0: the three gzipped CSVs joined, files/p10/p10000032/s50414267/<dicom_id>.jpg."""

from __future__ import annotations

import gzip

import pytest

from metadino.data.table import load_table
from metadino.errors import UserError
from metadino.importers.mimic_cxr_jpg import FINDINGS

from .conftest import check_snippet

D = ["02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962",
     "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"]
METADATA = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
            "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
            "PatientOrientationCodeSequence_CodeMeaning\n"
            f"{D[0]},10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),"
            "postero-anterior,Erect\n"
            f"{D[1]},10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),"
            "lateral,Erect\n"
            f"{D[2]},10000032,53189527,CHEST (PA AND LAT),PA,3056,2544,21800626,165500.312,CHEST (PA AND LAT),"
            "postero-anterior,Erect\n"
            f"{D[3]},11000011,51029426,CHEST (PORTABLE AP),AP,2539,3050,21840111,5000.0,CHEST (PORTABLE AP),"
            "antero-posterior,\n")


def chexpert() -> str:
    header = "subject_id,study_id," + ",".join(FINDINGS)
    values = {
        "50414267": {"No Finding": "1.0"},
        "53189527": {"Atelectasis": "1.0", "Cardiomegaly": "-1.0", "Edema": "0.0", "Pleural Effusion": "1.0"},
    }
    lines = [header]
    for study, cells in values.items():
        lines.append(f"10000032,{study}," + ",".join(cells.get(f, "") for f in FINDINGS))
    return "\n".join(lines) + "\n"  # study 51029426 has no labels


SPLIT = (f"dicom_id,study_id,subject_id,split\n{D[0]},50414267,10000032,train\n{D[1]},50414267,10000032,train\n"
         f"{D[2]},53189527,10000032,validate\n{D[3]},51029426,11000011,test\n")
PATHS = [f"files/p10/p10000032/s50414267/{D[0]}.jpg", f"files/p10/p10000032/s50414267/{D[1]}.jpg",
         f"files/p10/p10000032/s53189527/{D[2]}.jpg", f"files/p11/p11000011/s51029426/{D[3]}.jpg"]


@pytest.fixture
def mimic(tmp_path, jpg):
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    root.mkdir(parents=True)
    for name, text in (("metadata", METADATA), ("chexpert", chexpert()), ("split", SPLIT)):
        with gzip.open(root / f"mimic-cxr-2.0.0-{name}.csv.gz", "wt") as f:
            f.write(text)
    for p in PATHS:
        jpg(root / p)
    return root


def test_joined_table(mimic, do_import):
    result = do_import("mimic-cxr-jpg", mimic)
    t = result.table
    assert t["path"].tolist() == PATHS
    assert t["split"].tolist() == ["train", "train", "validate", "test"]
    assert t["view"].tolist() == ["PA", "LATERAL", "PA", "AP"]
    assert t["findings"].fillna("").tolist() == ["No Finding", "No Finding", "Atelectasis|Pleural Effusion", ""]
    assert t["Cardiomegaly"].fillna("").tolist() == ["", "", "-1.0", ""]  # uncertain kept as written
    assert t["Edema"].fillna("").tolist() == ["", "", "0.0", ""]
    assert t["year"].tolist() == ["2180", "2180", "2180", "2184"]  # shifted dates, as MIMIC ships them
    assert t["month"].tolist() == ["5", "5", "6", "1"]
    assert t["hour"].tolist() == ["21", "21", "16", "0"]  # StudyTime 5000.0 is 00:50:00
    assert t["subject_id"].tolist() == ["10000032"] * 3 + ["11000011"]
    assert all(f in t.columns for f in FINDINGS)
    assert "1 images belong to studies without CheXpert labels" in result.summary
    data = check_snippet(result.snippet_path, ["table", "root", "image_column", "rows"])
    assert len(load_table(data.table, image_column="path", root=data.root, rows=data.rows)) == 2


def test_plain_csv_files_and_missing_file(mimic, do_import):
    for name in ("metadata", "chexpert", "split"):
        gz = mimic / f"mimic-cxr-2.0.0-{name}.csv.gz"
        (mimic / f"mimic-cxr-2.0.0-{name}.csv").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    assert do_import("mimic-cxr-jpg", mimic).table["path"].tolist() == PATHS
    (mimic / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(UserError, match=r"has no split file \(mimic-cxr-2.0.0-split.csv.gz or mimic-cxr-2.0.0-split"):
        do_import("mimic-cxr-jpg", mimic, overwrite=True)


def test_duplicate_study_labels_and_missing_finding_column(mimic, do_import):
    text = chexpert()
    with gzip.open(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as f:
        f.write(text + text.splitlines()[1] + "\n")
    with pytest.raises(UserError, match=r"mimic-cxr-2.0.0-chexpert.csv.gz repeats subject_id \+ study_id in row 3"):
        do_import("mimic-cxr-jpg", mimic)
    with gzip.open(mimic / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt") as f:
        f.write(text.replace("Pneumothorax", "PTX"))
    with pytest.raises(UserError, match=r"chexpert.csv.gz has no column 'Pneumothorax'"):
        do_import("mimic-cxr-jpg", mimic)


def test_missing_jpg_names_metadata_row(mimic, do_import):
    (mimic / PATHS[3]).unlink()
    with pytest.raises(UserError, match=r"mimic-cxr-2.0.0-metadata.csv.gz do not exist for row 4 "):
        do_import("mimic-cxr-jpg", mimic)
