"""`metadino import`: help with an example per layout; mistakes are one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from metadino.cli import main
from metadino.importers import EXAMPLES, LAYOUTS

CSV = "Id,Target\nabc,0\ndef,1 2\n"


@pytest.fixture
def hpa(tmp_path, png):
    root = tmp_path / "hpa"
    root.mkdir()
    (root / "train.csv").write_text(CSV)
    for i in ("abc", "def"):
        for color in ("red", "green", "blue", "yellow"):
            png(root / "train" / f"{i}_{color}.png", rgb=False)
    return root


def one_line_error(capsys, *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_help_has_an_example_per_layout(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["import", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert set(EXAMPLES) == set(LAYOUTS)
    for layout, example in EXAMPLES.items():
        assert example in text and example.startswith(f"metadino import {layout} ")


def test_import_prints_summary_and_writes_table_and_snippet(capsys, hpa, tmp_path):
    out = tmp_path / "t" / "hpa.csv"
    assert main(["import", "hpa", str(hpa), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 rows" in printed and "looks informative:" in printed and "looks spurious:" in printed
    assert out.read_text().splitlines()[0] == "Id,Target,localisation"
    assert (tmp_path / "t" / "hpa.data.yaml").is_file()


def test_existing_output_needs_overwrite(capsys, hpa, tmp_path):
    out = tmp_path / "hpa.csv"
    out.write_text("mine\n")
    err = one_line_error(capsys, "import", "hpa", str(hpa), "--out", str(out))
    assert "already exists" in err and "--overwrite" in err
    assert out.read_text() == "mine\n" and not (tmp_path / "hpa.data.yaml").exists()
    assert main(["import", "hpa", str(hpa), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("Id,Target")


def test_mistakes_are_one_line(capsys, hpa, tmp_path):
    out = str(tmp_path / "o.csv")
    assert "hpa source /nowhere does not exist" in one_line_error(capsys, "import", "hpa", "/nowhere", "--out", out)
    assert "must end in .csv or .parquet" in one_line_error(capsys, "import", "hpa", str(hpa), "--out", "o.xlsx")
    assert "is not a folder" in one_line_error(capsys, "import", "hpa", str(hpa), "--out", out, "--images",
                                               str(hpa / "train.csv"))
    (hpa / "train" / "def_blue.png").unlink()
    err = one_line_error(capsys, "import", "hpa", str(hpa), "--out", out)
    assert "row 2" in err and "def_blue.png" in err and "--no-check-files" in err
    before = (hpa / "train.csv").read_bytes()
    assert main(["import", "hpa", str(hpa), "--out", out, "--no-check-files"]) == 0
    assert (hpa / "train.csv").read_bytes() == before


def test_unknown_layout_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["import", "imagenet", str(tmp_path), "--out", str(tmp_path / "o.csv")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'imagenet'" in err and "Traceback" not in err


def test_unwritable_out_is_one_line(capsys, hpa, tmp_path):
    (tmp_path / "afile").write_text("x")
    err = one_line_error(capsys, "import", "hpa", str(hpa), "--out", str(tmp_path / "afile" / "t.csv"))
    assert "cannot write" in err and "afile" in err
