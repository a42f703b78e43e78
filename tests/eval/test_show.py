"""`metadino show`: input composites, patch PCA, the panels of several models and the figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metadino.data.dataset import EvalDataset
from metadino.data.table import load_table
from metadino.errors import UserError
from metadino.eval.show import (
    check_show_out,
    composite_rgb,
    patch_pca_rgb,
    pick_rows,
    show_panels,
    write_show,
)
from metadino.export import load_model
from metadino.models.attention import cls_attention
from testkit import write_labelled_table, write_tiny_model


def test_composites() -> None:
    rng = np.random.default_rng(0)
    grey = composite_rgb(rng.random((1, 8, 8)))
    assert grey.shape == (8, 8, 3) and np.all(grey[..., 0] == grey[..., 2])
    rgb = rng.random((3, 8, 8))
    out = composite_rgb(rgb)
    assert np.array_equal(np.argsort(out.reshape(-1, 3)[:, 0]), np.argsort(rgb[0].reshape(-1)))  # R stays channel 0
    four = np.zeros((4, 8, 8))
    four[0, :, :4] = 1.0  # channel 0 -> blue, only in the left half
    four[3, 4:] = 1.0  # channel 3 -> yellow, only in the bottom half
    out = composite_rgb(four)
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out[0, 0], [0, 0, 1])
    np.testing.assert_allclose(out[0, 7], [0, 0, 0])
    np.testing.assert_allclose(out[7, 7], [1, 1, 0])
    np.testing.assert_allclose(out[7, 0], [1, 1, 1])  # blue + yellow, no clipping needed
    picked = composite_rgb(four, rgb_channels=[3, 0])
    np.testing.assert_allclose(picked[7, 0], [1, 1, 0])  # channel 3 as red, channel 0 as green, blue empty
    with pytest.raises(UserError, match="rgb-channels"):
        composite_rgb(four, rgb_channels=[4])


def test_patch_pca_colours_the_main_directions() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 4, 16)) * 0.01
    x[..., 0] += np.where(np.arange(4)[None, :, None] < 2, 5.0, -5.0)  # top vs bottom halves differ on one axis
    rgb, explained = patch_pca_rgb(x)
    assert rgb.shape == (2, 4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert explained[0] > 0.99 and sum(explained) <= 1 + 1e-9
    assert np.all(rgb[:, :2, :, 0] > 0.9) and np.all(rgb[:, 2:, :, 0] < 0.1)  # the first component -> red


def test_pick_rows() -> None:
    assert pick_rows(10, 4) == [0, 3, 6, 9]
    assert pick_rows(3, 8) == [0, 1, 2]
    for n, match in ((0, "at least 1"), (65, "at most 64")):
        with pytest.raises(UserError, match=match):
            pick_rows(10, n)


@pytest.fixture
def setup(tmp_path: Path):
    table = write_labelled_table(tmp_path / "data", n=12)
    return table, write_tiny_model(tmp_path / "a", seed=0), write_tiny_model(tmp_path / "b", seed=1), tmp_path


def test_panels_use_the_eval_view_and_each_models_own_maps(setup) -> None:
    table_path, a, b, _ = setup
    table = load_table(table_path, rows={"split": "train"})
    models = [(str(p), *load_model(str(p))) for p in (a, b)]
    panels = show_panels(models, table, n=3, label_column="label")
    assert panels.images.shape == (3, 32, 32, 3) and len(panels.captions) == 3
    rows = pick_rows(len(table), 3)
    assert panels.captions[1].startswith(f"row {table.row_numbers[rows[1]]}\n")
    for (name, backbone, pre), mp in zip(models, panels.models):
        images = torch.stack([EvalDataset(table, image_size=pre.image_size, in_chans=3,
                                          photometric=pre.transform())[i] for i in rows])
        expected = cls_attention(backbone, images).patch_distribution(mean_heads=False).numpy()
        np.testing.assert_allclose(mp.heads, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mp.mean, expected.mean(axis=1), rtol=1e-5, atol=1e-7)
        assert mp.pca.shape == (3, 4, 4, 3) and mp.name == name
    assert not np.allclose(panels.models[0].mean, panels.models[1].mean)


def test_write_show_writes_two_pngs_and_never_overwrites_without_asking(setup) -> None:
    table_path, a, b, tmp = setup
    table = load_table(table_path)
    models = [(str(p), *load_model(str(p))) for p in (a, b)]
    out = tmp / "figs" / "show.png"
    main, heads = write_show(models, table, out, n=2)
    assert main == out and heads == tmp / "figs" / "show.heads.png"
    for path in (main, heads):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="already exists"):
        write_show(models, table, out, n=2)
    write_show(models, table, out, n=2, overwrite=True)
    with pytest.raises(UserError, match=r"must end in \.png"):
        check_show_out(tmp / "show.jpg", overwrite=False)


def test_panels_of_a_transformers_model_with_registers(setup) -> None:
    from metadino.models.hf import HFBackbone
    from metadino.models.preprocessing import Preprocessing
    from testkit import tiny_hf_model

    table_path, a, _, _ = setup
    table = load_table(table_path)
    hf = HFBackbone(tiny_hf_model("dinov2_reg")).eval()
    pre = Preprocessing(image_size=24, in_chans=3, patch_size=8, photometric="natural")
    panels = show_panels([("a", *load_model(str(a))), ("hf", hf, pre)], table, n=2)
    mp = panels.models[1]
    assert mp.heads.shape == (2, 2, 3, 3) and mp.pca.shape == (2, 3, 3, 3)  # its own 24 px view: a 3 x 3 grid
    np.testing.assert_allclose(mp.heads.reshape(2, 2, -1).sum(-1), 1.0, rtol=1e-5)  # registers left out
    assert hf.model.config._attn_implementation == "sdpa"
