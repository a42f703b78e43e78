"""Backbone contract over the built-in ViT and the three transformers model classes, loading and saving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import Tensor

from metadino.errors import UserError
from metadino.models.backbone import Backbone, Tokens, load_backbone_state
from metadino.models.channels import expand_patch_embed_weight
from metadino.models.hf import HFBackbone
from metadino.models.registry import backbone_from_config, build_backbone
from testkit import tiny_hf_model

transformers = pytest.importorskip("transformers")

KINDS = ["builtin", "dinov2", "dinov2_reg", "dinov3"]
REGISTERS = {"builtin": 2, "dinov2": 0, "dinov2_reg": 2, "dinov3": 2}
HF_CLASS = {"dinov2": "Dinov2Model", "dinov2_reg": "Dinov2WithRegistersModel", "dinov3": "DINOv3ViTModel"}


def _tiny_hf(kind: str, num_channels: int = 3) -> torch.nn.Module:
    return tiny_hf_model(kind, num_channels=num_channels)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny HF model directory per class (3 channels)."""
    out = {}
    for kind in HF_CLASS:
        d = tmp_path_factory.mktemp(kind)
        model = _tiny_hf(kind)
        with torch.no_grad():  # non-trivial tokens so masking and registers are visible
            model.embeddings.mask_token.normal_()
            if kind != "dinov2":
                model.embeddings.register_tokens.normal_()
        model.save_pretrained(str(d))
        out[kind] = d
    return out


def _build(kind: str, hf_dirs: dict[str, Path]) -> Backbone:
    if kind == "builtin":
        torch.manual_seed(0)
        bb = build_backbone("builtin:vit-tiny", patch_size=8, image_size=32, embed_dim=32, depth=2, num_heads=2,
                            num_registers=2)
        with torch.no_grad():
            bb.mask_token.normal_()
        return bb
    return build_backbone("hf:" + str(hf_dirs[kind]))


def _mask_token(bb: Backbone) -> Tensor:
    return bb.mask_token if bb.kind == "builtin" else bb.model.embeddings.mask_token


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_shapes_two_sizes(kind: str, hf_dirs: dict[str, Path]) -> None:
    bb = _build(kind, hf_dirs).eval()
    assert (bb.embed_dim, bb.patch_size, bb.in_chans, bb.num_registers) == (32, 8, 3, REGISTERS[kind])
    if kind != "builtin":
        assert isinstance(bb, HFBackbone) and type(bb.model).__name__ == HF_CLASS[kind]
        assert bb.model.config._attn_implementation == "sdpa"
    for size, n in ((32, 16), (16, 4)):
        tok = bb(torch.randn(3, 3, size, size))
        assert isinstance(tok, Tokens)
        assert tok.cls.shape == (3, 32) and tok.patches.shape == (3, n, 32)
        if REGISTERS[kind]:
            assert tok.registers is not None and tok.registers.shape == (3, REGISTERS[kind], 32)
        else:
            assert tok.registers is None
    # non-square crops work too (position embeddings interpolate / RoPE)
    assert bb(torch.randn(1, 3, 16, 32)).patches.shape == (1, 8, 32)


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_are_final_normed_layout(kind: str, hf_dirs: dict[str, Path]) -> None:
    """cls/registers/patches come from one final-normed sequence: each token has ~zero mean over D (LN, unit
    weight) and the last intermediate layer equals forward()."""
    bb = _build(kind, hf_dirs).eval()
    x = torch.randn(2, 3, 32, 32)
    tok = bb(x)
    for t in (tok.cls, tok.patches):
        torch.testing.assert_close(t.mean(-1), torch.zeros_like(t.mean(-1)), atol=1e-5, rtol=0)
    last = bb.intermediate_layers(x, n=2)
    assert len(last) == 2
    torch.testing.assert_close(last[-1].cls, tok.cls)
    torch.testing.assert_close(last[-1].patches, tok.patches)
    assert not torch.allclose(last[0].patches, tok.patches)


@pytest.mark.parametrize("kind", KINDS)
def test_mask_replaces_only_masked_first_layer_inputs(kind: str, hf_dirs: dict[str, Path]) -> None:
    bb = _build(kind, hf_dirs).eval()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5, 6]] = True
    masks[1, 15] = True
    seen: list[Tensor] = []
    hook = bb.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        plain, masked = bb(x), bb(x, masks)
        none = bb(x, None)
    hook.remove()
    first_plain, first_masked = seen[0], seen[1]
    r = bb.num_registers
    changed = (first_plain != first_masked).any(-1)  # [B, 1 + R + N]
    expected = torch.cat([torch.zeros(2, 1 + r, dtype=torch.bool), masks], dim=1)
    assert torch.equal(changed, expected)
    assert not torch.allclose(plain.patches, masked.patches)
    assert not torch.allclose(plain.cls, masked.cls)
    torch.testing.assert_close(none.patches, plain.patches)  # None == all-False mask


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind: str, hf_dirs: dict[str, Path]) -> None:
    bb = _build(kind, hf_dirs).train()
    # masks=None: the mask token must still be in the graph (DDP), with a zero gradient
    tok = bb(torch.randn(2, 3, 32, 32))
    (tok.cls.sum() + tok.patches.sum()).backward()
    no_grad = [n for n, p in bb.named_parameters() if p.grad is None]
    assert no_grad == []
    assert torch.count_nonzero(_mask_token(bb).grad) == 0
    # with a mask, the mask token gets a real gradient
    bb.zero_grad(set_to_none=True)
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[:, :2] = True
    tok = bb(torch.randn(2, 3, 16, 16), masks)
    (tok.cls.sum() + tok.patches.pow(2).sum()).backward()
    assert _mask_token(bb).grad is not None and _mask_token(bb).grad.abs().sum() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_layer_id_and_patch_embed_cover_all_params(kind: str, hf_dirs: dict[str, Path]) -> None:
    bb = _build(kind, hf_dirs)
    depth = len(bb.blocks)
    assert depth == bb.depth == 2
    ids = {n: bb.layer_id(n) for n, _ in bb.named_parameters()}
    assert set(ids.values()) == set(range(depth + 2))
    in_block = {}
    for i, blk in enumerate(bb.blocks):
        for p in blk.parameters():
            in_block[id(p)] = i + 1
    for n, p in bb.named_parameters():
        if id(p) in in_block:
            assert ids[n] == in_block[id(p)], n
        elif any(k in n for k in ("cls_token", "mask_token", "register_tokens", "pos", "patch_embed")):
            assert ids[n] == 0, n
        else:  # final norm
            assert ids[n] == depth + 1 and "norm" in n, n
    patch = [n for n, _ in bb.named_parameters() if bb.is_patch_embed(n)]
    assert len(patch) == 2 and all(n.endswith(("weight", "bias")) for n in patch)
    # prefixes (e.g. peft's base_model.model.) do not change the answer
    some = next(n for n in ids if ids[n] == 2)
    assert bb.layer_id("base_model.model." + some) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_grad_checkpointing_same_result(kind: str, hf_dirs: dict[str, Path]) -> None:
    bb = _build(kind, hf_dirs).train()
    x = torch.randn(2, 3, 32, 32)
    grads, calls = [], []
    for enable in (False, True):
        bb.set_grad_checkpointing(enable)
        bb.zero_grad(set_to_none=True)
        count = [0]
        hook = bb.blocks[0].norm1.register_forward_pre_hook(lambda *_, count=count: count.__setitem__(0, count[0] + 1))
        torch.manual_seed(1)  # DINOv3 draws a random RoPE rescale in train mode
        tok = bb(x)
        (tok.cls.pow(2).sum() + tok.patches.sum()).backward()
        hook.remove()
        calls.append(count[0])
        grads.append({n: p.grad.clone() for n, p in bb.named_parameters()})
    assert calls == [1, 2]  # the block really is recomputed in backward
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_roundtrip(kind: str, hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    bb = _build(kind, hf_dirs).eval()
    bb.save_pretrained(tmp_path / "out")
    again = build_backbone(str(tmp_path / "out")).eval()
    assert again.config_dict() == bb.config_dict()
    x = torch.randn(2, 3, 24, 32)
    with torch.no_grad():
        a, b = bb(x), again(x)
    torch.testing.assert_close(a.cls, b.cls, atol=0, rtol=0)
    torch.testing.assert_close(a.patches, b.patches, atol=0, rtol=0)
    if kind == "builtin":
        cfg = json.loads((tmp_path / "out" / "config.json").read_text())
        assert cfg["metadino_backbone"] == "builtin" and cfg["embed_dim"] == 32 and cfg["num_registers"] == 2
    else:
        hf = transformers.AutoModel.from_pretrained(str(tmp_path / "out")).eval()
        assert type(hf).__name__ == HF_CLASS[kind]
        with torch.no_grad():
            ref = hf(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ref[:, 0], a.cls)


def test_run_directory_resolves_to_backbone_subdir(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    bb = _build("dinov2", hf_dirs)
    bb.save_pretrained(tmp_path / "backbone")
    assert build_backbone(str(tmp_path)).config_dict() == bb.config_dict()


@pytest.mark.parametrize("kind", KINDS)
def test_config_dict_rebuilds_architecture(kind: str, hf_dirs: dict[str, Path]) -> None:
    bb = _build(kind, hf_dirs).eval()
    cfg = bb.config_dict()
    json.dumps(cfg)  # JSON-able (goes into checkpoints)
    rebuilt = backbone_from_config(cfg).eval()
    assert rebuilt.config_dict() == cfg
    load_backbone_state(rebuilt, bb.state_dict(), source="test")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).patches, bb(x).patches)


# ----------------------------------------------------------------------------------------------- channels


@pytest.mark.parametrize("kind", ["dinov2", "dinov3"])
def test_hf_channel_expansion(kind: str, hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    rgb = build_backbone("hf:" + str(hf_dirs[kind])).eval()
    four = build_backbone("hf:" + str(hf_dirs[kind]), in_chans=4).eval()
    assert four.in_chans == 4 and four.model.config.num_channels == 4
    (wname, w3), = [(n, p) for n, p in rgb.named_parameters() if rgb.is_patch_embed(n) and n.endswith("weight")]
    w4 = dict(four.named_parameters())[wname]
    mean = w3.mean(dim=1, keepdim=True)
    torch.testing.assert_close(w4, torch.cat([w3, mean], dim=1) * 0.75, atol=0, rtol=0)
    # Identity: filters summed over channels are unchanged (3/4 * (3m + m) = 3m), so an image whose
    # channels are all equal gives the same tokens before and after expansion.
    g = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a, b = rgb(g.expand(-1, 3, -1, -1)), four(g.expand(-1, 4, -1, -1))
    torch.testing.assert_close(a.patches, b.patches, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.cls, b.cls, atol=1e-5, rtol=1e-5)
    # the expanded model saves as a 4-channel HF model and reloads without in_chans
    four.save_pretrained(tmp_path / "four")
    assert transformers.AutoConfig.from_pretrained(str(tmp_path / "four")).num_channels == 4
    again = build_backbone("hf:" + str(tmp_path / "four")).eval()
    x = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(x).patches, four(x).patches, atol=0, rtol=0)
    with pytest.raises(UserError, match="shrunk"):
        build_backbone("hf:" + str(tmp_path / "four"), in_chans=3)


def test_builtin_export_channel_expansion(tmp_path: Path) -> None:
    torch.manual_seed(0)
    bb = build_backbone("builtin:vit-tiny", patch_size=8, image_size=32, embed_dim=32, depth=1, num_heads=2).eval()
    bb.save_pretrained(tmp_path)
    five = build_backbone(str(tmp_path), in_chans=5).eval()
    w3 = bb.patch_embed.proj.weight
    torch.testing.assert_close(five.patch_embed.proj.weight, expand_patch_embed_weight(w3, 5))
    g = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(bb(g.expand(-1, 3, -1, -1)).cls, five(g.expand(-1, 5, -1, -1)).cls,
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="shrunk"):
        build_backbone(str(tmp_path), in_chans=2)


def test_hf_shrinking_raises_but_grayscale_sums_the_filters(hf_dirs: dict[str, Path]) -> None:
    four = build_backbone("hf:" + str(hf_dirs["dinov2"]), in_chans=4)
    four.save_pretrained(hf_dirs["dinov2"].parent / "four")
    with pytest.raises(UserError, match="cannot be shrunk"):
        build_backbone("hf:" + str(hf_dirs["dinov2"].parent / "four"), in_chans=2)
    rgb = build_backbone("hf:" + str(hf_dirs["dinov2"])).eval()
    gray = build_backbone("hf:" + str(hf_dirs["dinov2"]), in_chans=1).eval()
    g = torch.randn(1, 1, 32, 32)
    with torch.no_grad():  # a gray image is embedded exactly as the RGB model saw it replicated
        torch.testing.assert_close(gray(g).cls, rgb(g.expand(-1, 3, -1, -1)).cls, atol=1e-5, rtol=1e-5)


def test_images_with_wrong_channels_or_size(hf_dirs: dict[str, Path]) -> None:
    bb = _build("dinov3", hf_dirs)
    with pytest.raises(UserError, match="channels"):
        bb(torch.randn(1, 4, 32, 32))
    with pytest.raises(UserError, match="multiple of the patch size 8"):
        bb(torch.randn(1, 3, 30, 32))


# ----------------------------------------------------------------------------------------------- errors


def test_load_backbone_state_strict() -> None:
    kw = dict(patch_size=8, image_size=32, embed_dim=32, num_heads=2)
    one = build_backbone("builtin:vit-tiny", depth=1, **kw)
    two = build_backbone("builtin:vit-tiny", depth=2, **kw)
    with pytest.raises(UserError, match=r"ckpt\.pt.*unexpected \(blocks\.1\.") as e:
        load_backbone_state(one, two.state_dict(), source="ckpt.pt")
    assert "blocks.1." in str(e.value)
    with pytest.raises(UserError, match=r"missing \(blocks\.1\."):
        load_backbone_state(two, one.state_dict(), source="ckpt.pt")
    wide = build_backbone("builtin:vit-tiny", depth=1, patch_size=8, image_size=32, embed_dim=64, num_heads=2)
    with pytest.raises(UserError, match=r"wrong shape \(blocks\.0\.attn\.proj\.bias \(\(64,\) vs \(32,\)\)"):
        load_backbone_state(one, wide.state_dict(), source="ckpt.pt")
    before = {k: v.clone() for k, v in one.state_dict().items()}
    with pytest.raises(UserError):
        load_backbone_state(one, {k: v for k, v in before.items() if k != "norm.weight"}, source="x")
    assert all(torch.equal(before[k], v) for k, v in one.state_dict().items())  # nothing half-loaded
    twin = build_backbone("builtin:vit-tiny", depth=1, **kw)
    load_backbone_state(twin, one.state_dict(), source="ok")
    assert all(torch.equal(one.state_dict()[k], v) for k, v in twin.state_dict().items())


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="prefix"):
        build_backbone("timmx:vit_small")
    with pytest.raises(UserError, match="builtin:vit-small"):
        build_backbone("builtin:vit-enormous")
    with pytest.raises(UserError, match="does not exist"):
        build_backbone("hf:" + str(tmp_path / "nope"))
    with pytest.raises(UserError, match="not an existing directory"):
        build_backbone(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no config.json"):
        build_backbone(str(tmp_path))
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):
        build_backbone("hf:facebook/this-model-is-not-cached")
    with pytest.raises(UserError, match="divisible"):
        build_backbone("builtin:vit-tiny", embed_dim=30, num_heads=4)


def test_unsupported_hf_class(tmp_path: Path) -> None:
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 patch_size=8, image_size=32)
    transformers.ViTModel(cfg).save_pretrained(str(tmp_path / "vit"))
    with pytest.raises(UserError, match="ViTModel"):
        build_backbone("hf:" + str(tmp_path / "vit"))
    with pytest.raises(UserError, match="ViTModel"):
        build_backbone(str(tmp_path / "vit"))


def test_hf_dir_without_weights(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((hf_dirs["dinov2"] / "config.json").read_text())
    with pytest.raises(UserError, match="weights"):
        build_backbone("hf:" + str(tmp_path))


def test_hf_weights_not_matching_config(hf_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Never a silently random backbone: a missing tensor or a wrong shape in the checkpoint fails loudly."""
    from safetensors.torch import load_file, save_file

    (tmp_path / "config.json").write_text((hf_dirs["dinov2"] / "config.json").read_text())
    state = load_file(str(hf_dirs["dinov2"] / "model.safetensors"))
    dropped = next(k for k in state if k.startswith("encoder.layer.1.") and k.endswith("weight"))
    save_file({k: v for k, v in state.items() if k != dropped}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="1 missing"):
        build_backbone("hf:" + str(tmp_path))
    state["embeddings.cls_token"] = torch.zeros(1, 1, 16)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="cannot load the weights"):
        build_backbone("hf:" + str(tmp_path))


def test_pretrained_architecture_overrides_must_match(hf_dirs: dict[str, Path]) -> None:
    assert build_backbone("hf:" + str(hf_dirs["dinov2"]), embed_dim=32, depth=2).embed_dim == 32
    with pytest.raises(UserError, match="embed_dim=32 but embed_dim=64"):
        build_backbone("hf:" + str(hf_dirs["dinov2"]), embed_dim=64)


def test_hf_drop_path_rate_reaches_config(hf_dirs: dict[str, Path]) -> None:
    bb = build_backbone("hf:" + str(hf_dirs["dinov2"]), drop_path_rate=0.1)
    assert bb.model.config.drop_path_rate == 0.1
    assert any(type(m).__name__.endswith("DropPath") for m in bb.modules())


def test_builtin_layerscale_init_is_configurable_and_survives_export(tmp_path: Path) -> None:
    kw = dict(patch_size=8, image_size=32, embed_dim=32, depth=1, num_heads=2)
    none = build_backbone("builtin:vit-tiny", layerscale_init=None, **kw)
    assert not any(n.endswith("gamma") for n, _ in none.named_parameters())
    big = build_backbone("builtin:vit-tiny", layerscale_init=0.5, **kw)
    gammas = [p for n, p in big.named_parameters() if n.endswith("gamma")]
    assert gammas and all(torch.all(g == 0.5) for g in gammas)
    big.save_pretrained(tmp_path)
    again = build_backbone(str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(big.state_dict().values(), again.state_dict().values()))
