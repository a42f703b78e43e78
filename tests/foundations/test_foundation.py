"""The shipped foundation: its bytes are the card's, it loads as a backbone, and its one rebuild command
reproduces the losses the card recorded."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metadino.errors import UserError
from metadino.export import load_model
from metadino.foundations import PREFIX, foundation_dir
from metadino.foundations.build import LOSS_KEYS, NAME, SOURCE_DATA, SOURCE_SEED, STEPS, pretrain_config, sha256
from metadino.models.registry import build_backbone

SPEC = PREFIX + NAME


def _card() -> dict:
    return json.loads((foundation_dir(SPEC) / "card.json").read_text())


def test_shipped_weights_match_the_card_and_the_size_limit():
    directory = foundation_dir(SPEC)
    weights = directory / "model.safetensors"
    card = _card()
    assert sha256(weights) == card["weights"]["sha256"]
    assert weights.stat().st_size == card["weights"]["bytes"] <= 10 * 1024 * 1024
    assert (directory / "README.md").read_text().count(card["weights"]["sha256"]) == 1
    assert card["command"].startswith("python -m metadino.foundations.build")
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}


def test_card_records_the_recipe_the_seed_and_losses_that_went_down():
    card = _card()
    assert card["config"] == pretrain_config(Path("source/metadata.csv"), steps=card["steps"])
    assert card["steps"] == STEPS and card["seed"] == SOURCE_SEED == card["config"]["train"]["seed"]
    assert card["trained_on"]["parameters"] == SOURCE_DATA and SOURCE_DATA["seed"] not in range(100)  # not a demo seed
    assert len(card["git_sha"]) == 40 and int(card["git_sha"], 16) >= 0
    first, final = card["first_logged"][0], card["final_losses"]
    assert set(final) == set(LOSS_KEYS) and all(math.isfinite(v) for v in final.values())
    assert final["total"] < first["total"] and final["dino"] < math.log(card["config"]["ssl"]["head"]["out_dim"]) - 0.3
    # pretrained beats random init of the same architecture and raw pixels, frozen, on held-out source plates
    held_out = card["frozen_accuracy"]["source, held-out plates"]
    ours = held_out["foundation (frozen)"]
    for baseline in ("random init, same architecture", "raw pixels (8x8 per channel)"):
        assert ours["knn"] > held_out[baseline]["knn"] and ours["linear"] > held_out[baseline]["linear"], baseline


def test_foundation_loads_by_name_as_a_float32_backbone_and_as_a_model():
    backbone = build_backbone(SPEC, in_chans=4)
    arch = _card()["architecture"]
    assert (backbone.depth, backbone.embed_dim, backbone.patch_size, backbone.in_chans) == (
        arch["depth"], arch["embed_dim"], arch["patch_size"], 4)
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    model, pre = load_model(SPEC)
    assert pre.in_chans == 4 and pre.photometric == "microscopy"
    tokens = model(torch.randn(2, 4, pre.image_size, pre.image_size))
    assert tokens.cls.shape == (2, arch["embed_dim"]) and torch.isfinite(tokens.cls).all()
    # pretrained, not random: two fresh random inits of the same architecture differ from it
    random = build_backbone("builtin:vit-tiny", in_chans=4, patch_size=8, depth=arch["depth"], image_size=pre.image_size)
    assert not torch.allclose(random.state_dict()["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"])


def test_unknown_foundation_names_the_shipped_ones():
    with pytest.raises(UserError, match=f"unknown metadino foundation.*{SPEC}"):
        build_backbone("metadino:vit-huge-imaginary")


@pytest.mark.integration
def test_rebuild_command_reproduces_the_first_logged_losses_of_the_card(tmp_path):
    card = _card()
    logged = card["first_logged"]
    cmd = card["command"].split()[1:]  # python -m metadino.foundations.build ...
    cmd = [sys.executable, *[a for a in cmd if a not in ("--install",)]]
    cmd[cmd.index("--out") + 1] = str(tmp_path / "rebuild")
    subprocess.run([*cmd, "--stop-after", str(logged[-1]["step"])], check=True, capture_output=True, timeout=600)
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "rebuild" / "run" / "metrics.jsonl").read_text().splitlines())}
    for want in logged:
        for key in LOSS_KEYS:
            assert rows[want["step"]][key] == pytest.approx(want[key], rel=1e-3, abs=1e-4), (want["step"], key)
