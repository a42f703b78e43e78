"""preprocessing.json of a model directory (models/preprocessing.py, models/directory.py)."""

from __future__ import annotations

import json

import pytest

from metadino.errors import UserError
from metadino.models.directory import read_preprocessing, write_preprocessing
from metadino.models.preprocessing import Preprocessing
from metadino.models.registry import build_backbone


def test_default_round_trip_and_a_missing_key_names_file_and_key(tmp_path):
    rgb = Preprocessing.default_for(build_backbone("builtin:vit-tiny", patch_size=14, depth=1))
    assert (rgb.image_size, rgb.photometric, rgb.mean) == (224, "natural", [0.485, 0.456, 0.406])
    multi = Preprocessing.default_for(build_backbone("builtin:vit-tiny", in_chans=4, patch_size=16, depth=1))
    assert (multi.photometric, multi.mean, multi.std) == ("none", None, None)
    write_preprocessing(tmp_path, rgb)
    assert read_preprocessing(tmp_path) == rgb
    data = json.loads((tmp_path / "preprocessing.json").read_text())
    del data["in_chans"]
    (tmp_path / "preprocessing.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"preprocessing.json' lacks in_chans"):
        read_preprocessing(tmp_path)
    assert read_preprocessing(tmp_path / "nothing") is None


def test_a_hand_written_file_needs_only_size_channels_patch_and_preset(tmp_path):
    (tmp_path / "preprocessing.json").write_text(json.dumps({"image_size": 32, "in_chans": 4, "patch_size": 8,
                                                              "photometric": "none"}))
    pre = read_preprocessing(tmp_path)
    assert (pre.mean, pre.std, pre.embed_dim) == (None, None, None)
