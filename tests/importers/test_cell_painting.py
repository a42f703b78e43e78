"""Cell Painting / JUMP load_data.csv: FileName_Orig*/PathName_Orig* per channel, one TIFF per channel."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from metadino.errors import UserError

from .conftest import check_snippet

STAINS = ["DNA", "ER", "RNA", "AGP", "Mito"]
FILE_CH = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}  # JUMP's r01c01f01p01-ch5sk1fk1fl1.tiff numbering
SITES = [("BR00116991", "A01", "1"), ("BR00116991", "A01", "2"), ("BR00116991", "B07", "1"),
         ("BR00117000", "P24", "1")]


def header() -> str:
    cols = ["Metadata_Source", "Metadata_Batch", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    for s in STAINS:
        cols += [f"FileName_Orig{s}", f"PathName_Orig{s}"]
    return ",".join(cols + ["FileName_OrigBrightfield", "PathName_OrigBrightfield"])


def tiff_name(well: str, site: str, ch: int) -> str:
    row, col = ord(well[0]) - 64, int(well[1:])
    return f"r{row:02d}c{col:02d}f{int(site):02d}p01-ch{ch}sk1fk1fl1.tiff"


@pytest.fixture
def cp(tmp_path):
    root = tmp_path / "cpg0016"
    lines = [header()]
    for plate, well, site in SITES:
        folder = f"images/2020_11_04_CPJUMP1/{plate}__2020-11-05T19_51_35-Measurement1/Images"
        cells = ["source_4", "2020_11_04_CPJUMP1", plate, well, site]
        for s in STAINS:
            name = tiff_name(well, site, FILE_CH[s])
            cells += [name, folder]
            (root / folder).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / folder / name, np.full((8, 8), 500, dtype=np.uint16))
        cells += [tiff_name(well, site, 6), folder]  # brightfield listed, not downloaded
        lines.append(",".join(cells))
    (root / "load_data.csv").write_text("\n".join(lines) + "\n")
    return root


def test_table_keeps_file_and_snippet_reads_five_channels(cp, do_import):
    result = do_import("cell-painting", cp / "load_data.csv")
    t = result.table
    assert t["Metadata_Well"].tolist() == ["A01", "A01", "B07", "P24"]
    assert t["Metadata_Site"].tolist() == ["1", "2", "1", "1"]
    assert t["FileName_OrigDNA"].tolist()[2] == "r02c07f01p01-ch5sk1fk1fl1.tiff"
    assert t["well_row"].tolist() == ["A", "A", "B", "P"]
    assert t["well_column"].tolist() == ["1", "1", "7", "24"]
    check_snippet(result.snippet_path, ["table", "root", "image_template", "channels"])
    assert result.snippet["image_template"] == "{PathName_Orig{channel}}/{FileName_Orig{channel}}"
    assert result.snippet["channels"] == STAINS and result.snippet["root"] == str(cp)
    # the nested template, {channel} first then the columns, names the file of that channel
    row = t.iloc[3].to_dict()
    filled = result.snippet["image_template"].replace("{channel}", "Mito").format(**row)
    assert (cp / filled).is_file() and filled.endswith("ch1sk1fk1fl1.tiff")
    assert "not in data.channels: Brightfield" in result.summary
    assert "looks spurious: Metadata_Plate (acquisition/batch name ('plate')); Metadata_Site" in result.summary


def test_missing_channel_file_and_columns_are_named(cp, do_import):
    t = (cp / "load_data.csv").read_text()
    (cp / "load_data.csv").write_text(t.replace("PathName_OrigRNA", "PathName_RNA"))
    with pytest.raises(UserError, match="has FileName_OrigRNA but no PathName_OrigRNA"):
        do_import("cell-painting", cp)
    (cp / "load_data.csv").write_text(t.replace("Metadata_Well", "Well"))
    with pytest.raises(UserError, match="load_data.csv has no column 'Metadata_Well'"):
        do_import("cell-painting", cp)
    (cp / "load_data.csv").write_text(t)
    next(cp.rglob("r16c24f01p01-ch2sk1fk1fl1.tiff")).unlink()
    with pytest.raises(UserError, match=r"load_data.csv do not exist for row 4 .*ch2sk1fk1fl1.tiff"):
        do_import("cell-painting", cp)


def test_remote_paths_are_not_checked_but_noted(cp, do_import):
    t = (cp / "load_data.csv").read_text().replace(",images/", ",s3://cellpainting-gallery/cpg0016/images/")
    (cp / "load_data.csv").write_text(t)
    result = do_import("cell-painting", cp / "load_data.csv")
    assert "20 image paths are URLs and were not checked" in result.summary
