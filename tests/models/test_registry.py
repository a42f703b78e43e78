"""Backbone specs resolve through registered loaders (models/registry.py)."""

from __future__ import annotations

import pytest

from metadino.errors import UserError
from metadino.models import registry
from metadino.models.registry import BackboneOptions, build_backbone, register_backbone


def test_a_registered_prefix_resolves_with_the_options_and_is_checked_like_any_checkpoint(monkeypatch):
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))  # leave the real registry untouched
    seen = []

    def tiny(ref: str, options: BackboneOptions):
        seen.append((ref, options.in_chans))
        return build_backbone("builtin:vit-tiny", in_chans=options.in_chans, patch_size=8, image_size=32,
                              embed_dim=32, depth=2, num_heads=2)

    register_backbone("toy", tiny)
    model = build_backbone("toy:some/model", in_chans=5)
    assert seen == [("some/model", 5)] and model.in_chans == 5 and model.depth == 2
    with pytest.raises(UserError, match="depth=2 but depth=3 was requested"):
        build_backbone("toy:x", depth=3)  # a pretrained backbone keeps its architecture
    with pytest.raises(UserError, match="unknown backbone spec prefix"):
        build_backbone("nope:x")
    with pytest.raises(ValueError, match="prefix"):
        register_backbone("two words", tiny)
    with pytest.raises(ValueError, match="cannot be replaced"):
        register_backbone("builtin", tiny)
    from metadino.export import load_model

    backbone, pre = load_model("toy:any")  # commands resolve a registered prefix too
    assert backbone.in_chans == 3 and pre.image_size == 224 - 224 % 8
