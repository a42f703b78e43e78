"""CLS attention maps of the last block for the built-in ViT and the three transformers classes."""

from __future__ import annotations

import pytest
import torch

from metadino.models.attention import cls_attention
from metadino.models.hf import HFBackbone
from metadino.models.registry import build_backbone
from testkit import tiny_hf_model

KINDS = ["builtin", "builtin_reg", "dinov2", "dinov2_reg", "dinov3"]
REGISTERS = {"builtin": 0, "builtin_reg": 2, "dinov2": 0, "dinov2_reg": 2, "dinov3": 2}


def _backbone(kind: str):
    torch.manual_seed(0)
    if kind.startswith("builtin"):
        bb = build_backbone("builtin:vit-tiny", patch_size=8, image_size=32, embed_dim=32, depth=2, num_heads=2,
                            num_registers=REGISTERS[kind])
        with torch.no_grad():  # LayerScale 1: the blocks change the tokens visibly
            for name, p in bb.named_parameters():
                if name.endswith("gamma"):
                    p.fill_(1.0)
        return bb.eval()
    model = tiny_hf_model(kind)
    with torch.no_grad():
        if kind != "dinov2":
            model.embeddings.register_tokens.normal_()
    return HFBackbone(model).eval()


@pytest.mark.parametrize("kind", KINDS)
def test_maps_have_the_grid_shape_and_with_cls_and_registers_sum_to_one(kind: str) -> None:
    bb = _backbone(kind)
    images = torch.randn(3, 3, 32, 48)  # a non-square input: h = 4, w = 6
    att = cls_attention(bb, images)
    assert att.patches.shape == (3, 2, 4, 6)
    assert att.cls.shape == (3, 2)
    r = REGISTERS[kind]
    assert (att.registers is None) == (r == 0)
    total = att.patches.flatten(2).sum(2) + att.cls + (att.registers.sum(2) if att.registers is not None else 0)
    torch.testing.assert_close(total, torch.ones(3, 2))
    assert torch.all(att.patches >= 0) and torch.all(att.patch_share < 1)
    dist = att.patch_distribution()
    assert dist.shape == (3, 4, 6)
    torch.testing.assert_close(dist.flatten(1).sum(1), torch.ones(3))
    torch.testing.assert_close(att.patch_distribution(mean_heads=False).flatten(2).sum(2), torch.ones(3, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_the_normal_forward_pass_is_unchanged(kind: str) -> None:
    bb = _backbone(kind)
    images = torch.randn(2, 3, 32, 32)
    before = bb(images).cls
    cls_attention(bb, images)
    torch.testing.assert_close(bb(images).cls, before, rtol=0, atol=0)
    if kind not in ("builtin", "builtin_reg"):
        assert bb.model.config._attn_implementation == "sdpa"  # eager only for the attention call


def test_builtin_map_equals_a_hand_computation() -> None:
    bb = _backbone("builtin_reg")
    images = torch.randn(2, 3, 32, 32)
    # by hand: tokens into the last block, its LayerNorm, q and k, softmax(q k^T / sqrt(hd)) of the CLS query
    with torch.no_grad():
        x = bb._embed(images, torch.zeros(2, 16, dtype=torch.bool))
        x = bb.blocks[0](x)
        last = bb.blocks[1]
        y = last.norm1(x)
        q, k, _ = last.attn.qkv(y).chunk(3, dim=-1)
        heads, hd = 2, 16
        q = q.reshape(2, -1, heads, hd).transpose(1, 2)
        k = k.reshape(2, -1, heads, hd).transpose(1, 2)
        probs = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / hd ** 0.5, dim=-1)[:, :, 0]  # [B, heads, T]
        # and the explicit probabilities reproduce the SDPA block output
        v = last.attn.qkv(y).chunk(3, dim=-1)[2].reshape(2, -1, heads, hd).transpose(1, 2)
        full = bb.last_block_attention(images)
        out = last.attn.proj((full @ v).transpose(1, 2).reshape(2, -1, 32))
        torch.testing.assert_close(out, last.attn(y), rtol=1e-5, atol=1e-6)
    att = cls_attention(bb, images)
    torch.testing.assert_close(att.cls, probs[:, :, 0])
    torch.testing.assert_close(att.registers, probs[:, :, 1:3])
    torch.testing.assert_close(att.patches, probs[:, :, 3:].reshape(2, 2, 4, 4))


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_reg", "dinov3"])
def test_hf_maps_are_the_cls_row_of_the_models_eager_attentions_of_the_same_computation(kind: str) -> None:
    bb = _backbone(kind)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        sdpa = bb.model(pixel_values=images).last_hidden_state
        bb.model.set_attn_implementation("eager")
        out = bb.model(pixel_values=images, output_attentions=True)
        bb.model.set_attn_implementation("sdpa")
    torch.testing.assert_close(out.last_hidden_state, sdpa, rtol=1e-4, atol=1e-5)  # eager = the SDPA model
    ref = out.attentions[-1][:, :, 0]
    att = cls_attention(bb, images)
    r = REGISTERS[kind]
    torch.testing.assert_close(att.patches, ref[:, :, 1 + r:].reshape(2, 2, 4, 4))
    torch.testing.assert_close(att.cls, ref[:, :, 0])


def test_a_backbone_without_attention_maps_says_so_in_one_sentence():
    import pytest

    from metadino.errors import UserError
    from metadino.models.backbone import Backbone
    from metadino.models.vit import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=8, in_chans=3, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(UserError, match=r"backbone VisionTransformer does not expose its attention probabilities"):
        Backbone.last_block_attention(vit, torch.zeros(1, 3, 32, 32))  # the contract's default, as a third party has it
