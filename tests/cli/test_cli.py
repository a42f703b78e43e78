"""User mistakes end with one clear message, exit code 2, no traceback, and nothing modified."""

from __future__ import annotations

import pytest
import yaml

from metadino.cli import main, parse_conditional, parse_rows
from metadino.errors import UserError
from testkit import tiny_config, write_labelled_table, write_tiny_model


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.fixture
def cfg_file(tmp_path, image_table):
    def write(**sections) -> str:
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(tiny_config(image_table, **sections)))
        return str(path)

    return write


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["train", "{cfg}", "train.steps"], "is not of the form key.sub=value"),
        (["train", "{cfg}", "train.stpes=3"], "Did you mean 'train.steps'"),
        (["train", "{cfg}", "data.table=/nowhere/meta.csv"], "/nowhere/meta.csv"),
        (["train", "{cfg}", "data.image_column=file"], "file"),
        (["train", "{cfg}", "model.backbone=builtin:vit-huge"], "vit-huge"),
        (["train", "{cfg}", "model.backbone=hf:/no/such/dir"], "/no/such/dir"),
        (["train", "{cfg}", "data.rows={split: validation}"], "split"),
        (["train", "{cfg}", "crops.local_size=64"], "crops.local_size"),
        (["export", "{tmp}", "--out", "{tmp}/x"], "not a metadino run directory"),
        (["embed", "{tmp}/nothing", "--table", "t.csv", "--out", "e.parquet"], "nothing"),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, cfg_file, tmp_path, args, expected):
    cfg = cfg_file()
    argv = [a.replace("{cfg}", cfg).replace("{tmp}", str(tmp_path)) for a in args]
    code, err = run(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert expected in err


def test_unreadable_image_names_row_and_file(capsys, cfg_file, image_table, tmp_path):
    bad = image_table.parent / "imgs" / "5.png"
    bad.write_bytes(b"not a png")
    before = image_table.read_text()
    code, err = run(capsys, "train", cfg_file(), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and "5.png" in err and "row 6" in err, err
    assert image_table.read_text() == before and bad.read_bytes() == b"not a png"


def test_resume_with_different_model_is_refused(capsys, cfg_file, tmp_path):
    cfg = cfg_file(train={"steps": 2})
    out = str(tmp_path / "run")
    assert main(["train", cfg, "--out", out, "--quiet"]) == 0
    code, err = run(capsys, "train", cfg, "model.depth=3", "--out", out, "--resume")
    assert code == 2 and "model.depth" in err
    code, err = run(capsys, "train", cfg, "--out", out)
    assert code == 2 and "already holds a run" in err


def test_help_has_examples(capsys):
    for cmd in ("train", "export", "embed", "demo", "eval", "inspect"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "example" in capsys.readouterr().out


def test_parse_rows():
    assert parse_rows("split=train,plate=P1,plate=P2") == {"split": ["train"], "plate": ["P1", "P2"]}
    with pytest.raises(UserError):
        parse_rows("split")


@pytest.fixture
def labelled(tmp_path):
    return write_labelled_table(tmp_path / "data"), write_tiny_model(tmp_path / "model")


def test_eval_command_writes_metrics_and_report(capsys, labelled, tmp_path):
    table, model = labelled
    out = tmp_path / "report"
    code = main(["eval", str(model), "--table", str(table), "--label-column", "label", "--train-rows", "split=train",
                 "--test-rows", "split=test", "--group-column", "plate", "--leakage-columns", "plate,noise",
                 "--out", str(out), "--no-cache", "--quiet", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "weighted k-NN" in printed and "| plate |" in printed
    assert (out / "metrics.json").is_file() and (out / "report.md").is_file()


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--label-column", "lable"], "lable"),
        (["--label-column", "label", "--test-rows", "split=ood"], "split=ood"),
        (["--label-column", "label", "--train-rows", "label=a"], "at least two"),
        (["--label-column", "label", "--probes", "knn,svm"], "svm"),
        (["--label-column", "label", "--test-rows", "split"], "column=value"),
    ],
)
def test_eval_user_errors_are_one_line(capsys, labelled, tmp_path, extra, expected):
    table, model = labelled
    argv = ["eval", str(model), "--table", str(table), "--train-rows", "split=train", "--test-rows", "split=test",
            "--out", str(tmp_path / "r"), "--no-cache", "--quiet", "--device", "cpu"]
    # later options win in argparse, so the case-specific ones go last
    code, err = run(capsys, *argv, *extra)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert expected in err


def test_eval_of_a_model_that_cannot_be_loaded(capsys, labelled, tmp_path):
    table, _ = labelled
    code, err = run(capsys, "eval", str(tmp_path / "nope"), "--table", str(table), "--label-column", "label",
                    "--train-rows", "split=train", "--test-rows", "split=test", "--out", str(tmp_path / "r"), "--quiet")
    assert code == 2 and "nope" in err and err.count("\n") == 1, err


def test_parse_conditional():
    assert parse_conditional("plate:cell_line, well:cell_line+antibody") == {
        "plate": ["cell_line"], "well": ["cell_line", "antibody"]}
    assert parse_conditional("") == {}
    for bad, message in (("plate", "target:given"), ("plate:", "target:given"), (":cell_line", "target:given"),
                         ("plate:a,plate:b", "'plate' appears twice")):
        with pytest.raises(UserError, match=f"--conditional-leakage: .*{message}"):
            parse_conditional(bad)


def test_eval_reports_conditional_leakage_and_purity(capsys, labelled, tmp_path):
    import json

    table, model = labelled
    out = tmp_path / "report"
    code = main(["eval", str(model), "--table", str(table), "--label-column", "label", "--train-rows", "split=train",
                 "--test-rows", "split=test", "--group-column", "plate", "--conditional-leakage", "plate:label",
                 "--purity-columns", "label", "--k", "5", "--out", str(out), "--no-cache", "--quiet", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| plate | label | balanced_accuracy |" in printed and "| k-NN accuracy of label | train |" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["conditional_leakage"]) == {"plate|label"}
    assert metrics["purity"]["k"] == 5 and {"knn/label", "same_group_share"} <= set(metrics["purity_test"])


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--conditional-leakage", "plate"], "--conditional-leakage: 'plate' is not of the form"),
        (["--conditional-leakage", "plate:plate"], "--conditional-leakage: 'plate' cannot be given itself"),
        (["--conditional-leakage", "plate:cell_line"], "--conditional-leakage: unknown column 'cell_line'"),
        (["--purity-columns", "label,platez"], "--purity-columns: unknown column 'platez'"),
        (["--purity-columns", "noise"], "--purity-columns (train rows): k-NN accuracy needs a categorical column; 'noise' holds continuous"),
    ],
)
def test_eval_bad_conditional_and_purity_flags_are_one_line(capsys, labelled, tmp_path, extra, expected):
    table, model = labelled
    code, err = run(capsys, "eval", str(model), "--table", str(table), "--label-column", "label", "--train-rows",
                    "split=train", "--test-rows", "split=test", "--out", str(tmp_path / "r"), "--no-cache", "--quiet",
                    "--device", "cpu", *extra)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert expected in err
