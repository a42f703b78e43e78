"""Guided training end to end on the built-in synthetic data (tiny)."""

from __future__ import annotations

import json

import pytest
import torch

from metadino.config import config_from_dict
from metadino.data.synthetic import generate_dataset
from metadino.errors import UserError
from metadino.train.checkpoint import load_latest_checkpoint
from metadino.train.loop import train
from testkit import tiny_config

GUIDES = [
    {"column": "antibody", "head": "prototypical", "weight": 0.1},
    {"column": "cell_line", "head": "classification", "weight": 0.1, "hidden_dims": [16]},
    {"column": "plate", "role": "spurious", "head": "classification", "weight": 0.1, "hidden_dims": [16], "given": ["cell_line"]},
    {"column": "exposure", "role": "spurious", "head": "regression", "weight": 0.05, "hidden_dims": [16]},
]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("syn"), n_images=64, image_size=32, channels=4, seed=1)


def _cfg(table, **extra):
    cfg = tiny_config(table, model={"in_chans": 4, "drop_path_rate": 0.0}, crops={"photometric": "microscopy"},
                      train={"steps": 4, "batch_size": 8, "checkpoint_every": 2})
    cfg["data"]["rows"] = {"split": "train"}
    cfg["ssl"]["sigreg"] = {"weight": 0.05}
    cfg["guidance"] = {"balance": True, "lambda": {"schedule": "sigmoid"}, "guides": GUIDES}
    cfg["stages"] = {"heads_only_steps": 1, "ramp_steps": 1}
    for k, v in extra.items():
        cfg.setdefault(k, {}).update(v)
    return cfg


def test_guided_run_logs_every_guide_and_saves_vocab(tmp_path, synthetic):
    result = train(config_from_dict(_cfg(synthetic)), tmp_path / "run", progress=False)
    last = result.history[-1]
    for col in ("antibody", "cell_line", "plate", "exposure"):
        for key in ("loss", "weighted", "lambda", "scale", "grad_norm"):
            assert f"guide/{col}/{key}" in last, (col, key)
        assert torch.isfinite(torch.tensor(last[f"guide/{col}"]))
    assert last["guide/plate/lambda"] == -last["guide/cell_line/lambda"] < 0
    assert "sigreg" in last and "koleo" not in last
    vocab = json.loads((tmp_path / "run" / "vocab.json").read_text())
    assert vocab["plate"]["kind"] == "categorical" and vocab["exposure"]["kind"] == "continuous"
    state = load_latest_checkpoint(tmp_path / "run")["task"]
    # each valid sample updates its class twice per step (global crop 0, then 1), missing antibodies never
    counts = state["guides.heads.antibody.counts"]
    assert counts.sum() > 0 and counts.sum() % 2 == 0
    assert counts.sum() <= 2 * 4 * 8


def test_guided_resume_is_exact(tmp_path, synthetic):
    cfg = config_from_dict(_cfg(synthetic))
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False, stop_after=2)
    train(cfg, tmp_path / "b", progress=False, resume=True)
    a, b = load_latest_checkpoint(tmp_path / "a"), load_latest_checkpoint(tmp_path / "b")
    for k in a["task"]:
        assert torch.equal(a["task"][k], b["task"][k]), k


def test_guide_column_errors(tmp_path, synthetic):
    bad = _cfg(synthetic)
    bad["guidance"]["guides"] = [{"column": "antibdy"}]
    with pytest.raises(UserError, match="no column 'antibdy'"):
        train(config_from_dict(bad), tmp_path / "r1", progress=False)
    bad["guidance"]["guides"] = [{"column": "cell_line", "head": "regression"}]
    with pytest.raises(UserError, match="'cell_line'.*non-numeric"):
        train(config_from_dict(bad), tmp_path / "r2", progress=False)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_prototype_space_guide(tmp_path, synthetic):
    """A classification guide reading the DINO-head logits (grl_space: prototype) trains end to end."""
    cfg = _cfg(synthetic)
    cfg["guidance"] = {"guides": [{"column": "cell_line", "role": "spurious", "grl_space": "prototype", "hidden_dims": [8]}]}
    cfg["train"]["steps"] = 2
    result = train(config_from_dict(cfg), tmp_path / "run", progress=False)
    assert result.finished and torch.isfinite(torch.tensor(result.history[-1]["guide/cell_line"]))
    state = load_latest_checkpoint(tmp_path / "run")["task"]
    assert state["guides.heads.cell_line.mlp.0.weight"].shape[1] == 64  # the DINO head's out_dim


def test_ema_balancing_run_follows_the_logged_norms_and_resumes_exactly(tmp_path, synthetic):
    """guidance.balance_momentum (FINO paper, μ = 0.99): the averages start at each guide's first non-zero norm
    (step 1: λ = 0 at step 0), follow μ·avg + (1 − μ)·g over the logged norms, set the scales, and are saved."""
    from metadino.guidance.balance import ema_grad_norms

    cfg = _cfg(synthetic, guidance={"balance_momentum": 0.99})
    result = train(config_from_dict(cfg), tmp_path / "a", progress=False)
    cols = [g["column"] for g in GUIDES]
    hist = result.history
    norms = torch.tensor([[h[f"guide/{c}/grad_norm"] for c in cols] for h in hist])
    logged = torch.tensor([[h[f"guide/{c}/grad_norm_ema"] for c in cols] for h in hist])
    assert hist[0]["guide/lambda"] == 0.0 and torch.equal(norms[0], torch.zeros(4)) and torch.equal(logged[0], torch.zeros(4))
    assert (norms[1:] > 0).all()
    assert torch.equal(logged[1], norms[1])  # initialised from the first valid norms, not from 0
    avg = torch.zeros(4)
    for step, row in enumerate(norms):
        avg = ema_grad_norms(avg, row, 0.99)
        torch.testing.assert_close(logged[step], avg, rtol=1e-6, atol=0)
        if step > 0:  # the scales balance the averages: s_i = G / (avg_i + 1e-8), G their geometric mean
            target = avg.log().mean().exp()
            assert hist[step]["guide/grad_norm_target"] == pytest.approx(target.item(), rel=1e-5)
            scales = torch.tensor([hist[step][f"guide/{c}/scale"] for c in cols])
            torch.testing.assert_close(scales, target / (avg + 1e-8), rtol=1e-5, atol=0)
    assert not torch.allclose(logged[-1], norms[-1])  # averaged, unlike per-step balancing
    state = load_latest_checkpoint(tmp_path / "a")["task"]
    torch.testing.assert_close(state["guides.balance_ema.norms"], logged[-1], rtol=1e-7, atol=0)

    train(config_from_dict(cfg), tmp_path / "b", progress=False, stop_after=2)
    train(config_from_dict(cfg), tmp_path / "b", progress=False, resume=True)
    b = load_latest_checkpoint(tmp_path / "b")["task"]
    assert state.keys() == b.keys()
    for k in state:
        assert torch.equal(state[k], b[k]), k


def test_guides_do_not_shift_the_initial_ssl_weights(tmp_path, synthetic):
    """Arms with and without guides are paired: same backbone, DINO and iBOT heads at step 0 (the guide heads
    draw from their own RNG stream)."""
    from metadino.data.table import load_table
    from metadino.train.factory import build_backbone_from_config, build_encoders, build_guides, build_task

    def initial(cfg_dict):
        cfg = config_from_dict(cfg_dict)
        table = load_table(cfg.data.table, image_column="path", rows=cfg.data.rows)
        torch.manual_seed(cfg.train.seed)  # as the loop does
        backbone = build_backbone_from_config(cfg.model, image_size=cfg.crops.global_size)
        guides = build_guides(cfg, build_encoders(cfg, table), embed_dim=backbone.embed_dim, dino_out_dim=cfg.ssl.head.out_dim)
        task = build_task(cfg, backbone, guides)
        return {k: v for k, v in task.student.state_dict().items()}, torch.rand(1)

    guided = _cfg(synthetic)
    plain = _cfg(synthetic)
    plain.pop("guidance")
    (with_guides, after_g), (without, after_p) = initial(guided), initial(plain)
    assert with_guides.keys() == without.keys()
    assert all(torch.equal(with_guides[k], without[k]) for k in without)
    assert torch.equal(after_g, after_p)  # the global stream continues identically (drop-path, ...)
