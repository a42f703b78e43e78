import json
from functools import partial

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metadino.data.table import load_table
from metadino.errors import UserError
from metadino.eval import features as features_mod
from metadino.eval.evaluate import evaluate
from metadino.eval.features import extract
from metadino.export import load_model
from testkit import write_labelled_table, write_tiny_model


@pytest.fixture
def setup(tmp_path):
    table = write_labelled_table(tmp_path / "data")
    model = write_tiny_model(tmp_path / "model")
    return table, model, tmp_path


def _eval(table, model, out, **kw):
    args = dict(table=table, label_column="label", train_rows={"split": "train"}, test_rows={"split": "test"},
                out=out, cache_dir=None, progress=False, batch_size=7)
    args.update(kw)
    return evaluate(str(model), partial(load_model, str(model)), **args)


def _features(model, table, rows):
    backbone, pre = load_model(str(model))
    t = load_table(table, image_column="path", rows=rows)
    return extract(backbone, t, pre, progress=False).cls.numpy(), t.frame["label"].astype(str).to_numpy()


def test_knn_and_linear_equal_a_direct_sklearn_computation_on_the_same_features(setup):
    table, model, tmp = setup
    m = _eval(table, model, tmp / "out", k=5, temperature=0.1, group_column="plate")
    x_tr, y_tr = _features(model, table, {"split": "train"})
    x_te, y_te = _features(model, table, {"split": "test"})

    # DINO weighted k-NN == sklearn k-NN with cosine distance and exp(cos / T) vote weights
    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute",
                               weights=lambda d: np.exp((1 - d) / 0.1)).fit(x_tr, y_tr)
    pred = knn.predict(x_te)
    assert m["knn"]["accuracy"] == pytest.approx((pred == y_te).mean())
    plates = load_table(table, image_column="path", rows={"split": "test"}).frame["plate"].to_numpy()
    worst = min((pred[plates == p] == y_te[plates == p]).mean() for p in set(plates))
    assert m["knn"]["worst_group_accuracy"] == pytest.approx(worst)

    ref = make_pipeline(StandardScaler(), LogisticRegression(C=m["linear"]["C"], max_iter=1000, random_state=0))
    acc = (ref.fit(x_tr, y_tr).predict(x_te) == y_te).mean()
    assert m["linear"]["accuracy"] == pytest.approx(acc)
    assert m["linear"]["accuracy"] > 0.8  # the label is in the pixels: the probe must find it

    saved = json.loads((tmp / "out" / "metrics.json").read_text())
    assert set(saved) >= {"knn", "linear", "leakage"}
    assert set(saved["knn"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "auroc", "per_group_accuracy", "worst_group_accuracy"}
    report = (tmp / "out" / "report.md").read_text()
    assert "plots/pca.png" in report and (tmp / "out" / "plots" / "confusion.png").is_file()


def test_metrics_do_not_depend_on_the_batch_size(setup):
    table, model, tmp = setup
    a = _eval(table, model, tmp / "a", batch_size=1, leakage_columns=["plate"], report=False)
    b = _eval(table, model, tmp / "b", batch_size=64, leakage_columns=["plate"], report=False)
    for probe in ("knn", "linear"):
        assert a[probe] == b[probe]
    assert a["leakage"] == pytest.approx(b["leakage"], abs=1e-6)


def test_features_are_cached_per_model_and_a_changed_model_is_not_served_stale_features(setup, monkeypatch):
    table, model, tmp = setup
    cache = tmp / "cache"
    first = _eval(table, model, tmp / "a", cache_dir=cache, report=False)
    assert len(list(cache.glob("*.pt"))) == 2  # train and test selections

    def fail(*a, **k):
        raise AssertionError("features were recomputed although cached")

    monkeypatch.setattr(features_mod, "extract", fail)
    again = _eval(table, model, tmp / "b", cache_dir=cache, report=False)
    assert again["knn"] == first["knn"]
    monkeypatch.undo()
    other = write_tiny_model(tmp / "model2", seed=1)
    _eval(table, other, tmp / "c", cache_dir=cache, report=False)
    assert len(list(cache.glob("*.pt"))) == 4


def test_rows_without_a_label_are_left_out_and_counted(setup):
    table, model, tmp = setup
    lines = table.read_text().splitlines()
    lines[1] = lines[1].replace(",a,", ",,")
    table.write_text("\n".join(lines) + "\n")
    m = _eval(table, model, tmp / "out", report=False)
    assert m["info"]["rows_without_label"]["train"] == 1


def test_multilabel_label_column(tmp_path):
    table = write_labelled_table(tmp_path / "data", multilabel=True)
    model = write_tiny_model(tmp_path / "model")
    m = _eval(table, model, tmp_path / "out")
    assert m["info"]["multilabel"] and m["info"]["classes"] == ["a", "b", "c", "d"]
    assert {"multilabel_f1", "micro_f1", "auroc"} <= set(m["knn"]) and {"multilabel_f1"} <= set(m["linear"])


def test_attention_pooling_probe_runs_on_the_last_blocks_patch_tokens(setup):
    table, model, tmp = setup
    m = _eval(table, model, tmp / "out", probes=["attnpool"], group_column="plate", report=False)
    assert m["attnpool"]["selection"] == "worst_group_accuracy"
    assert 0 <= m["attnpool"]["accuracy"] <= 1 and m["attnpool"]["lr"] > 0


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"label_column": "nope"}, "nope"),
        ({"train_rows": {"split": "validation"}}, "selects no rows"),
        ({"train_rows": {"label": "a"}}, "at least two"),
        ({"label_column": "noise"}, "continuous"),
        ({"probes": ["svm"]}, "svm"),
        ({"leakage_columns": ["platez"]}, "platez"),
        ({"leakage_columns": ["split"]}, "fewer than two distinct"),  # constant within the train rows
    ],
)
def test_bad_requests_fail_with_one_clear_message(setup, kw, message):
    table, model, tmp = setup
    with pytest.raises(UserError, match=message):
        _eval(table, model, tmp / "out", **kw)


def test_an_unloadable_model_and_a_foreign_out_folder_are_refused(setup):
    table, model, tmp = setup
    with pytest.raises(UserError, match="model"):
        _eval(table, tmp / "missing_model", tmp / "out")
    assert not (tmp / "out").exists()  # a failed eval leaves nothing behind
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not written by metadino eval"):
        _eval(table, model, tmp / "mine")
    assert (tmp / "mine" / "notes.txt").read_text() == "precious"


def test_conditional_leakage_and_purity_are_wired_into_metrics_and_report(setup):
    from metadino.eval.conditional import conditional_leakage
    from metadino.eval.purity import purity_metrics

    table, model, tmp = setup
    m = _eval(table, model, tmp / "out", k=5, group_column="plate", conditional_leakage={"plate": ["label"]},
              purity_columns=["label", "plate"])
    x_tr, _ = _features(model, table, {"split": "train"})
    x_te, _ = _features(model, table, {"split": "test"})
    train = load_table(table, image_column="path", rows={"split": "train"}).frame
    test = load_table(table, image_column="path", rows={"split": "test"}).frame

    # computed on the train rows' embeddings, exactly as the library function does it
    got = m["conditional_leakage"]["plate|label"]
    ref = conditional_leakage(x_tr, train, "plate", ["label"])
    assert got["value"] == pytest.approx(ref.value) and got["given_only"] == pytest.approx(ref.given_only)
    assert got["value"] == pytest.approx(got["with_embedding"] - got["given_only"])
    assert (got["given"], got["n_rows"], got["chance"]) == (["label"], len(train), 0.25)

    # purity on the train rows and, with their own graph, on the test rows
    for key, x, frame, rows in (("purity", x_tr, train, "train"), ("purity_test", x_te, test, "test")):
        ref = purity_metrics(x, frame, ["label", "plate"], label_column="label", group_column="plate", k=5)
        assert m[key]["rows"] == rows
        assert m[key]["knn/label"] == pytest.approx(ref["knn/label"])
        assert m[key]["same_group_share"] == pytest.approx(ref["same_group_share"])
        assert m[key]["same_group_share_chance"] == pytest.approx(ref["same_group_share_chance"])
    assert m["purity"]["knn/label"]["accuracy"] > 0.8  # the label is in the pixels

    saved = json.loads((tmp / "out" / "metrics.json").read_text())
    assert saved["conditional_leakage"].keys() == {"plate|label"} and "knn/plate" in saved["purity"]
    report = (tmp / "out" / "report.md").read_text()
    assert "## Conditional leakage" in report and "| plate | label | balanced_accuracy |" in report
    assert "## Neighbour purity" in report and "| k-NN accuracy of label | test |" in report
    assert "| same-plate share among same-label neighbours | train |" in report


def test_without_the_new_options_the_new_blocks_are_empty(setup):
    table, model, tmp = setup
    m = _eval(table, model, tmp / "out", report=False)
    assert m["conditional_leakage"] == {} and m["purity"] == {} and m["purity_test"] == {}


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"conditional_leakage": {"plate": ["plate"]}}, "--conditional-leakage: 'plate' cannot be given itself"),
        ({"conditional_leakage": {"plate": ["platez"]}}, "--conditional-leakage: unknown column 'platez'"),
        ({"conditional_leakage": {"platez": ["label"]}}, "--conditional-leakage: unknown column 'platez'"),
        ({"conditional_leakage": {"plate": []}}, "--conditional-leakage: 'plate' needs at least one given column"),
        ({"conditional_leakage": {"split": ["label"]}}, "--conditional-leakage: 'split' has fewer than two"),
        ({"purity_columns": ["platez"]}, "--purity-columns: unknown column 'platez'"),
        ({"purity_columns": ["noise"]}, "--purity-columns.*'noise' holds continuous"),
    ],
)
def test_bad_conditional_and_purity_specs_fail_before_any_compute(setup, kw, message):
    table, model, tmp = setup
    with pytest.raises(UserError, match=message):
        _eval(table, model, tmp / "out", **kw)
    assert not (tmp / "out").exists()  # refused before the model was loaded or --out written


def test_the_feature_cache_notices_replaced_image_files_with_the_table_untouched(setup):
    import shutil

    import torch

    from metadino.eval.features import cached_extract

    table, model, tmp = setup
    backbone, pre = load_model(str(model))
    rows = load_table(table, image_column="path", rows={"split": "test"})
    cache = tmp / "cache"
    first = cached_extract(backbone, rows, pre, cache_dir=cache, progress=False)
    other = write_labelled_table(tmp / "other", seed=1)  # same names, other pixels
    table_bytes = table.read_bytes()
    for image in (other.parent / "imgs").iterdir():
        shutil.copyfile(image, table.parent / "imgs" / image.name)
    assert table.read_bytes() == table_bytes
    again = cached_extract(backbone, load_table(table, image_column="path", rows={"split": "test"}), pre,
                           cache_dir=cache, progress=False)
    fresh = extract(backbone, rows, pre, progress=False)
    assert not torch.equal(again.cls, first.cls)
    assert torch.equal(again.cls, fresh.cls)
    assert len(list(cache.glob("*.pt"))) == 2


def test_eval_warns_once_on_stderr_when_train_and_test_rows_overlap(setup, capsys):
    table, model, tmp = setup
    _eval(table, model, tmp / "disjoint", report=False)
    assert "warning" not in capsys.readouterr().err
    m = _eval(table, model, tmp / "overlap", train_rows={"split": ["train", "test"]}, report=False)
    n = m["info"]["train_test_overlap_rows"]
    assert n == 12
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == [f"warning: {n} rows are in both the train and the test selection; the test metrics are "
                       "optimistic. Make --train-rows and --test-rows disjoint."]


def test_metrics_json_and_report_md_are_written_atomically(setup, monkeypatch):
    """A full disk while writing leaves the earlier metrics.json / report.md whole, and no temporary file."""
    import pathlib

    table, model, tmp = setup
    out = tmp / "out"
    _eval(table, model, out)
    before = {name: (out / name).read_text() for name in ("metrics.json", "report.md")}
    real = pathlib.Path.write_text

    for name in before:
        def half_then_full_disk(self, text, *a, _name=name, **k):
            if _name not in self.name:
                return real(self, text, *a, **k)
            real(self, text[: len(text) // 2], *a, **k)
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(pathlib.Path, "write_text", half_then_full_disk)
        with pytest.raises(OSError):
            _eval(table, model, out, k=3)
        monkeypatch.undo()
        assert (out / name).read_text() == before[name]  # the earlier one, whole
        assert [p.name for p in out.iterdir() if p.name.startswith(".") and "tmp" in p.name] == []
