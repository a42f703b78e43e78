"""Localisation of the CLS attention: region -> patch coverage through the eval view, scores on constructed maps."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metadino.data.crops import eval_view
from metadino.data.photometric.presets import Photometric
from metadino.data.regions import load_regions
from metadino.data.table import load_table
from metadino.errors import UserError
from metadino.eval.evaluate import evaluate
from metadino.eval.localisation import (
    box_coverage,
    localisation_metrics,
    localisation_scores,
    mask_coverage,
    view_geometry,
)
from metadino.export import load_model
from metadino.models.preprocessing import Preprocessing
from metadino.models.registry import build_backbone
from testkit import write_labelled_table, write_tiny_model


@pytest.mark.parametrize("hw", [(40, 60), (60, 40), (32, 32), (50, 77)])
def test_the_geometry_is_the_eval_views(hw: tuple[int, int]) -> None:
    """view_geometry's scale and crop offset are eval_view's: a column ramp lands where the geometry says."""
    h, w = hw
    g = view_geometry(h, w, 32)
    # an image whose value is its own column index: after resize + crop, column j holds ~ (j + left + 0.5) / sx - 0.5
    cols = torch.arange(w, dtype=torch.float32).expand(1, h, w).contiguous()
    got = eval_view(cols, 32, Photometric(1))[0, 16]
    sx = g.new_w / w
    expected = (torch.arange(32) + g.left + 0.5) / sx - 0.5
    if sx >= 1:  # upsampling: bilinear is exact on a linear ramp (away from the clamped border)
        torch.testing.assert_close(got[2:-2], expected[2:-2], atol=1e-4, rtol=0)
    else:  # antialiased downsampling of a ramp is a ramp too, up to the filter's discretisation (a pixel is 1/sx)
        torch.testing.assert_close(got[4:-4], expected[4:-4], atol=0.05 / sx, rtol=0)


def test_box_coverage_is_exact_area_shares() -> None:
    # 40 x 60 image -> 32 x 48 (scale 0.8), centre crop drops 8 columns left: box x 20..40 -> 8..24, y 10..30 -> 8..24
    g = view_geometry(40, 60, 32)
    assert (g.new_h, g.new_w, g.top, g.left) == (32, 48, 0, 8)
    cov = box_coverage((20, 10, 40, 30), g, 8)
    expected = torch.zeros(4, 4)
    expected[1:3, 1:3] = 1.0
    torch.testing.assert_close(cov, expected)
    # a box over half a patch in x and a quarter in y
    cov = box_coverage((15, 0, 20, 2.5), g, 8)  # x 4..8 (half of patch 0), y 0..2 (a quarter of patch 0)
    assert cov[0, 0] == pytest.approx(0.5 * 0.25) and cov.sum() == pytest.approx(0.125)
    # cut away by the crop: nothing left
    assert box_coverage((0, 0, 10, 40), g, 8).sum() == 0  # x 0..8 in the resized image, all left of the crop


def test_mask_coverage_matches_the_box_for_the_same_region() -> None:
    g = view_geometry(64, 96, 32)  # scale 0.5: each 2x2 block of pixels -> one view pixel
    mask = torch.zeros(64, 96, dtype=torch.bool)
    mask[16:48, 48:80] = True  # a box aligned to the view's pixels
    box = box_coverage((48, 16, 80, 48), g, 8)
    torch.testing.assert_close(mask_coverage(mask, g, 8), box, atol=0.07, rtol=0)  # antialiased edges blur a little
    assert float(mask_coverage(mask, g, 8).sum()) == pytest.approx(float(box.sum()), abs=0.05)


def test_scores_on_constructed_maps() -> None:
    maps = torch.tensor([[[0.5, 0.2], [0.2, 0.1]],
                         [[0.1, 0.1], [0.1, 0.7]]])
    cov = torch.tensor([[[1.0, 0.5], [0.0, 0.0]],
                        [[1.0, 0.0], [0.0, 0.0]]])
    s = localisation_scores(maps, cov)
    torch.testing.assert_close(s["attention_mass"], torch.tensor([0.6, 0.1]))
    torch.testing.assert_close(s["pointing_game"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(s["mass_chance"], torch.tensor([0.375, 0.25]))
    torch.testing.assert_close(s["pointing_chance"], torch.tensor([0.5, 0.25]))
    # per head: [N, heads, h, w]
    heads = torch.stack([maps, maps.flip(0)], dim=1)
    sh = localisation_scores(heads, cov)
    torch.testing.assert_close(sh["attention_mass"], torch.tensor([[0.6, 0.1 + 0.05], [0.1, 0.5]]))
    torch.testing.assert_close(sh["pointing_game"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def _box_table(folder: Path, boxes: list[tuple[float, float, float, float] | None], size=(32, 48)) -> Path:
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = ["path,split,label,x0,y0,x1,y1"]
    rng = np.random.default_rng(0)
    for i, box in enumerate(boxes):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(folder / f"imgs/{i}.png")
        cells = ",".join("" if box is None else f"{v:g}" for v in (box or (0, 0, 0, 0)))
        lines.append(f"imgs/{i}.png,test,{'ab'[i % 2]},{cells}")
    (folder / "meta.csv").write_text("\n".join(lines) + "\n")
    return folder / "meta.csv"


def test_metrics_on_a_backbone_whose_attention_is_constructed(tmp_path: Path, monkeypatch) -> None:
    """The CLS attends to a chosen patch with 0.6, its own token 0.2, the rest of the patches uniformly: exact scores."""
    torch.manual_seed(0)
    bb = build_backbone("builtin:vit-tiny", in_chans=3, patch_size=8, image_size=32, embed_dim=32, depth=2,
                        num_heads=2, num_registers=1).eval()
    # 32 x 48 images -> view 32 x 32 (scale 1, left 8): the grid is 4 x 4; the peak is patch (1, 2) = view x 16..24
    peak = 1 * 4 + 2

    def constructed(images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        t = 1 + 1 + 16
        probs = torch.zeros(b, 2, t, t)
        probs[:, :, 0, 0] = 0.2  # CLS -> CLS
        probs[:, :, 0, 1] = 0.05  # CLS -> register
        probs[:, :, 0, 2:] = 0.15 / 15
        probs[:, :, 0, 2 + peak] = 0.6
        return probs

    monkeypatch.setattr(bb, "last_block_attention", constructed)
    boxes = [
        (24, 8, 32, 16),  # view x 16..24, y 8..16: exactly the peak patch -> mass 0.6/0.8, hit
        (8, 0, 24, 8),  # view x 0..16, y 0..8: patches (0,0),(0,1) -> mass 2 * (0.01/0.8), miss
        None,  # no region
        (0, 0, 6, 6),  # cut away by the centre crop
        (28, 8, 32, 12),  # half by half of the peak patch -> mass 0.25 * 0.75, hit
    ]
    table_path = _box_table(tmp_path, boxes)
    table = load_table(table_path)
    regions = load_regions(table, bbox_columns=["x0", "y0", "x1", "y1"])
    pre = Preprocessing(image_size=32, in_chans=3, patch_size=8, photometric="none")
    m = localisation_metrics(bb, table, regions, pre, batch_size=2, progress=False)
    patches = 0.6 + 0.15  # the patch share of the CLS row: the map is renormalised over the patches
    mass = [0.6 / patches, 2 * 0.01 / patches, 0.25 * 0.6 / patches]
    assert m["n_rows"] == 3 and m["n_without_region"] == 1 and m["n_outside_view"] == 1
    assert m["attention_mass"] == pytest.approx(np.mean(mass))
    assert m["pointing_game"] == pytest.approx(2 / 3)
    assert m["attention_mass_chance"] == pytest.approx(np.mean([1 / 16, 2 / 16, 0.25 / 16]))
    assert m["pointing_game_chance"] == pytest.approx(np.mean([1 / 16, 2 / 16, 1 / 16]))
    assert m["per_head"]["attention_mass"] == pytest.approx([np.mean(mass)] * 2)
    assert m["cls_patch_share"] == pytest.approx(0.75)
    assert m["region"] == "box x0, y0, x1, y1" and m["rows"] == "test"


def test_eval_scores_localisation_end_to_end_on_a_tiny_model(tmp_path: Path) -> None:
    table = write_labelled_table(tmp_path / "data")
    text = table.read_text().splitlines()
    # boxes in the 32 x 32 images: the left half; none in every other test row (i % 10 == 4)
    lines = [text[0] + ",x0,y0,x1,y1"] + [line + (",,,," if i % 10 == 4 else ",0,0,16,32")
                                          for i, line in enumerate(text[1:])]
    table.write_text("\n".join(lines) + "\n")
    model = write_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    m = evaluate(str(model), partial(load_model, str(model)), table=table, label_column="label",
                 train_rows={"split": "train"}, test_rows={"split": "test"}, out=out, cache_dir=None, progress=False,
                 region_columns=["x0", "y0", "x1", "y1"], show=3)
    loc = m["localisation"]
    n_test = sum(1 for i in range(60) if i % 5 == 4)
    assert loc["n_rows"] + loc["n_without_region"] == n_test and loc["n_outside_view"] == 0
    assert loc["n_without_region"] == sum(1 for i in range(60) if i % 10 == 4) > 0
    assert 0 <= loc["attention_mass"] <= 1 and 0 <= loc["pointing_game"] <= 1
    assert loc["attention_mass_chance"] == pytest.approx(0.5) and loc["pointing_game_chance"] == pytest.approx(0.5)
    assert len(loc["per_head"]["attention_mass"]) == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["localisation"] == loc
    report = (out / "report.md").read_text()
    assert "## Localisation" in report and "pointing game" in report
    assert (out / "plots" / "show.png").is_file() and "plots/show_heads.png" in report


def test_eval_region_options_are_checked_before_any_compute(tmp_path: Path) -> None:
    table = write_labelled_table(tmp_path / "data")

    def fail() -> None:
        raise AssertionError("the model must not be loaded")

    kw = dict(table=table, label_column="label", train_rows={"split": "train"}, test_rows={"split": "test"},
              out=tmp_path / "out", cache_dir=None, progress=False)
    with pytest.raises(UserError, match="four different columns"):
        evaluate("m", fail, region_columns=["x0", "y0"], **kw)
    with pytest.raises(UserError, match="not both"):
        evaluate("m", fail, region_columns=["a", "b", "c", "d"], mask_column="m", **kw)
    with pytest.raises(UserError, match="x0"):  # a column the table lacks
        evaluate("m", fail, region_columns=["x0", "y0", "x1", "y1"], **kw)
    assert not (tmp_path / "out").exists()


def test_mask_regions_score_like_the_same_box(tmp_path: Path) -> None:
    boxes = [(0, 0, 24, 32), (24, 0, 48, 16)]
    table_path = _box_table(tmp_path, boxes)
    text = table_path.read_text().splitlines()
    (tmp_path / "masks").mkdir()
    lines = [text[0] + ",mask"]
    for i, (line, (x0, y0, x1, y1)) in enumerate(zip(text[1:], boxes)):
        mask = np.zeros((32, 48), np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(mask).save(tmp_path / f"masks/{i}.png")
        lines.append(line + f",masks/{i}.png")
    table_path.write_text("\n".join(lines) + "\n")
    table = load_table(table_path)
    torch.manual_seed(0)
    bb = build_backbone("builtin:vit-tiny", in_chans=3, patch_size=8, image_size=32, embed_dim=32, depth=2,
                        num_heads=2).eval()
    pre = Preprocessing(image_size=32, in_chans=3, patch_size=8, photometric="none")
    by_box = localisation_metrics(bb, table, load_regions(table, bbox_columns=["x0", "y0", "x1", "y1"]), pre,
                                  progress=False)
    by_mask = localisation_metrics(bb, table, load_regions(table, mask_column="mask"), pre, progress=False)
    assert by_mask["region"] == "mask mask" and by_mask["n_rows"] == 2
    for key in ("attention_mass", "attention_mass_chance", "pointing_game", "pointing_game_chance"):
        assert by_mask[key] == pytest.approx(by_box[key]), key  # scale 1: the mask is the box, pixel for pixel
