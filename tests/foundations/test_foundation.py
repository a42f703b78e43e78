"""The shipped foundation: its bytes are the card's, it loads as a backbone, and its one rebuild command
reproduces the losses the card recorded."""

import json
import subprocess
import sys

import pytest
import torch

from metadino.errors import UserError
from metadino.export import load_model
from metadino.foundations import PREFIX, foundation_dir
from metadino.foundations.build import LOSS_KEYS, NAME, sha256
from metadino.models.backbone import build_backbone

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


def test_foundation_loads_by_name_as_a_float32_backbone_and_as_a_model():
    backbone = build_backbone(SPEC, in_chans=4)
    arch = _card()["architecture"]
    assert (backbone.depth, backbone.embed_dim, backbone.patch_size, backbone.in_chans) == (
        arch["depth"], arch["embed_dim"], arch["patch_size"], 4)
    assert all(p.dtype == torch.float32 for p in backbone.parameters())
    model, pre = load_model(SPEC)
    assert pre["in_chans"] == 4 and pre["photometric"] == "microscopy"
    tokens = model(torch.randn(2, 4, pre["image_size"], pre["image_size"]))
    assert tokens.cls.shape == (2, arch["embed_dim"]) and torch.isfinite(tokens.cls).all()
    # pretrained, not random: two fresh random inits of the same architecture differ from it
    random = build_backbone("builtin:vit-tiny", in_chans=4, patch_size=8, depth=arch["depth"], image_size=pre["image_size"])
    assert not torch.allclose(random.state_dict()["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"])


def test_unknown_foundation_names_the_shipped_ones():
    with pytest.raises(UserError, match=f"unknown metadino foundation.*{SPEC}"):
        build_backbone("metadino:vit-huge-imaginary")


@pytest.mark.integration
def test_rebuild_command_reproduces_the_first_logged_losses_of_the_card(tmp_path):
    card = _card()
    first = card["first_logged"][0]
    cmd = card["command"].split()[1:]  # python -m metadino.foundations.build ...
    cmd = [sys.executable, *[a for a in cmd if a not in ("--install",)]]
    cmd[cmd.index("--out") + 1] = str(tmp_path / "rebuild")
    subprocess.run([*cmd, "--stop-after", str(first["step"])], check=True, capture_output=True, timeout=600)
    rows = [json.loads(line) for line in (tmp_path / "rebuild" / "run" / "metrics.jsonl").read_text().splitlines()]
    got = next(r for r in rows if r["step"] == first["step"])
    for key in LOSS_KEYS:
        assert got[key] == pytest.approx(first[key], rel=1e-3, abs=1e-4), key
