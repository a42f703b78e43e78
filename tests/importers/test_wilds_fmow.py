"""FMoW-WILDS: rgb_metadata.csv + country_code_mapping.csv + images/rgb_img_{idx}.png, as the release ships."""

from __future__ import annotations

import pytest

from metadino.data.table import load_table
from metadino.errors import UserError

from .conftest import check_snippet

HEADER = ("split,img_filename,img_path,spatial_reference,epsg,category,visible,img_width,img_height,country_code,"
          "cloud_cover,timestamp")
ROWS = [  # (fMoW split, category, country, timestamp)
    ("train", "airport", "USA", "2010-06-01T10:22:33Z"),
    ("seq", "dam", "FRA", "2012-01-01T00:00:00Z"),
    ("val", "dam", "FRA", "2011-02-03T23:59:00Z"),
    ("test", "park", "KEN", "2017-12-31T05:00:00Z"),
    ("val", "park", "ATA", "2014-07-04T13:45:00Z"),
    ("train", "airport", "USA", "2015-03-01T08:00:00Z"),
]


@pytest.fixture
def fmow(tmp_path, png):
    root = tmp_path / "fmow_v1.1"
    lines = [HEADER]
    for i, (split, category, country, ts) in enumerate(ROWS):
        lines.append(f"{split},{category}_{i}_rgb.jpg,{split}/{category}/{category}_{i}/{category}_{i}_rgb.jpg,"
                     f"WGS84,4326,{category},True,224,224,{country},0,{ts}")
        png(root / "images" / f"rgb_img_{i}.png")
    (root / "rgb_metadata.csv").write_text("\n".join(lines) + "\n")
    (root / "country_code_mapping.csv").write_text("name,alpha-2,alpha-3,region\nUnited States,US,USA,Americas\n"
                                                    "France,FR,FRA,Europe\nKenya,KE,KEN,Africa\n")
    return root


def test_rows_paths_region_year_and_wilds_split(fmow, do_import):
    result = do_import("wilds-fmow", fmow)
    t = result.table
    # the sequestered row 1 is left out, and image numbers stay the row positions of the release file
    assert t["path"].tolist() == ["images/rgb_img_0.png", "images/rgb_img_2.png", "images/rgb_img_3.png",
                                  "images/rgb_img_4.png", "images/rgb_img_5.png"]
    assert t["region"].tolist() == ["Americas", "Europe", "Africa", "Other", "Americas"]
    assert t["year"].tolist() == ["2010", "2011", "2017", "2014", "2015"]
    assert t["month"].tolist() == ["6", "2", "12", "7", "3"]
    assert t["hour"].tolist() == ["10", "23", "5", "13", "8"]
    # time_after_2016: >= 2016 OOD test, 2013-2015 OOD val, train images from 2013 on in no split
    assert t["split"].tolist() == ["train", "id_val", "test", "val", "unused"]
    assert t["fmow_split"].tolist() == ["train", "val", "test", "val", "train"]
    assert t["category"].tolist() == ["airport", "dam", "park", "park", "airport"]
    assert list(t.columns[:8]) == ["path", "split", "category", "region", "year", "month", "hour", "fmow_split"]
    assert "country_code" in t.columns and "img_filename" in t.columns
    assert "wrote 5 rows" in result.summary and "sequestered" in result.summary
    data = check_snippet(result.snippet_path, ["table", "root", "image_column", "rows"])
    assert data.root == str(fmow) and data.rows == {"split": "train"}
    # metadino's own reader takes the table and root as they are
    meta = load_table(data.table, image_column=data.image_column, root=data.root, rows=data.rows)
    assert [p.name for p in meta.paths] == ["rgb_img_0.png"]


def test_summary_names_informative_and_spurious_columns(tmp_path, png, do_import):
    # enough rows per value for the audit to consider a guide: 3 regions x 3 years, 18 images
    root = tmp_path / "big"
    lines = [HEADER]
    for i in range(18):
        country = ("USA", "FRA", "KEN")[i % 3]
        category = ("airport", "dam")[i % 2]
        lines.append(f"train,f{i}.jpg,p{i}.jpg,WGS84,4326,{category},True,224,224,{country},0,"
                     f"{2008 + i % 3}-0{1 + i % 2}-01T0{i % 3}:00:00Z")
        png(root / "images" / f"rgb_img_{i}.png")
    (root / "rgb_metadata.csv").write_text("\n".join(lines) + "\n")
    (root / "country_code_mapping.csv").write_text("name,alpha-2,alpha-3,region\nUnited States,US,USA,Americas\n"
                                                    "France,FR,FRA,Europe\nKenya,KE,KEN,Africa\n")
    summary = do_import("wilds-fmow", root).summary
    lines = summary.splitlines()
    informative = next(line for line in lines if line.startswith("  looks informative:"))
    spurious = next(line for line in lines if line.startswith("  looks spurious:"))
    assert "region (biological/semantic name ('region'))" in informative
    assert "year (acquisition/batch name ('year'))" in spurious and "month" in spurious
    others = next(line for line in lines if line.startswith("  other columns:"))
    assert "category (label)" in others and "path (identifier)" in others


def test_missing_image_is_named_by_release_row_and_nothing_is_written(fmow, do_import, tmp_path):
    (fmow / "images" / "rgb_img_3.png").unlink()
    with pytest.raises(UserError, match=r"rgb_metadata.csv do not exist for row 4 .*rgb_img_3.png"):
        do_import("wilds-fmow", fmow)
    assert not (tmp_path / "out").exists()
    assert do_import("wilds-fmow", fmow, check_files=False).table.shape[0] == 5


def test_wrong_columns_and_bad_timestamp_name_file_and_row(fmow, do_import):
    text = (fmow / "rgb_metadata.csv").read_text()
    (fmow / "rgb_metadata.csv").write_text(text.replace(",2015-03-01T08:00:00Z", ",sometime"))
    with pytest.raises(UserError, match=r"rgb_metadata.csv: column 'timestamp' is not a date and time in row 6"):
        do_import("wilds-fmow", fmow)
    (fmow / "rgb_metadata.csv").write_text(text.replace("country_code", "country"))
    with pytest.raises(UserError, match=r"rgb_metadata.csv has no column 'country_code'"):
        do_import("wilds-fmow", fmow)


def test_parquet_output_and_no_overwrite(fmow, do_import, tmp_path):
    result = do_import("wilds-fmow", fmow, name="fmow.parquet")
    assert result.table["year"].tolist() == [2010, 2011, 2017, 2014, 2015]
    assert result.snippet_path.name == "fmow.data.yaml"
    with pytest.raises(UserError, match="already exists"):
        do_import("wilds-fmow", fmow, name="fmow.parquet")
    assert do_import("wilds-fmow", fmow, name="fmow.parquet", overwrite=True).table.shape[0] == 5


def test_source_file_is_never_an_output(fmow):
    from metadino.importers import run_import

    before = (fmow / "rgb_metadata.csv").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        run_import("wilds-fmow", fmow, fmow / "rgb_metadata.csv")
    with pytest.raises(UserError, match="dataset being read"):
        run_import("wilds-fmow", fmow, fmow / "rgb_metadata.csv", overwrite=True)
    assert (fmow / "rgb_metadata.csv").read_bytes() == before
