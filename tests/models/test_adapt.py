"""LoRA target resolution across backbones and transformers naming schemes, zero-init parity, merging,
freezing, parameter counting, adapter files."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from metadino.errors import UserError
from metadino.models.adapt import (
    apply_lora,
    count_parameters,
    freeze_backbone,
    has_lora,
    load_adapter_weights,
    merge_lora,
    merged_copy,
    resolve_target_names,
    save_adapter,
    translate_hf_names,
)
from metadino.models.backbone import Backbone
from metadino.models.hf import HFBackbone
from metadino.models.registry import build_backbone
from testkit import tiny_hf_model

transformers = pytest.importorskip("transformers")

KINDS = ["builtin", "dinov2", "dinov2_reg", "dinov3"]


def _build(kind: str, **extra) -> Backbone:
    if kind == "builtin":
        torch.manual_seed(0)
        return build_backbone("builtin:vit-tiny", patch_size=8, image_size=32, embed_dim=32, depth=2, num_heads=2)
    return HFBackbone(tiny_hf_model(kind, **extra))


def _randomize_adapters(backbone: Backbone, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


EXPECTED = {
    "builtin": {"qkv": ["attn.qkv"], "proj": ["attn.proj"], "mlp": ["mlp.fc1", "mlp.fc2"]},
    "dinov2": {"qkv": ["attention.q_proj", "attention.k_proj", "attention.v_proj"], "proj": ["attention.o_proj"],
               "mlp": ["mlp.fc1", "mlp.fc2"]},
    "dinov2_reg": {"qkv": ["attention.q_proj", "attention.k_proj", "attention.v_proj"], "proj": ["attention.o_proj"],
                   "mlp": ["mlp.fc1", "mlp.fc2"]},
    "dinov3": {"qkv": ["attention.q_proj", "attention.k_proj", "attention.v_proj"], "proj": ["attention.o_proj"],
               "mlp": ["mlp.up_proj", "mlp.down_proj"]},
}
BLOCK_PREFIX = {"builtin": "blocks", "dinov2": "encoder.layer", "dinov2_reg": "encoder.layer", "dinov3": "model.layer"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", ["qkv", "proj", "mlp"])
def test_logical_targets_resolve_on_every_backbone(kind: str, target: str) -> None:
    bb = _build(kind)
    names = resolve_target_names(bb.weights_module, list(bb.blocks), [target], skip_blocks=1)
    want = [f"{BLOCK_PREFIX[kind]}.1.{s}" for s in EXPECTED[kind][target]]
    assert sorted(names) == sorted(want)  # block 0 is skipped


def test_gated_mlp_and_literal_suffixes() -> None:
    bb = _build("dinov3", use_gated_mlp=True)
    names = resolve_target_names(bb.weights_module, list(bb.blocks), ["mlp"])
    assert sorted(n.rsplit(".", 1)[1] for n in names) == sorted(["gate_proj", "up_proj", "down_proj"] * 2)
    literal = resolve_target_names(bb.weights_module, list(bb.blocks), ["q_proj", "model.layer.1.mlp.down_proj"])
    assert literal == ["model.layer.0.attention.q_proj", "model.layer.1.attention.q_proj", "model.layer.1.mlp.down_proj"]
    with pytest.raises(UserError, match=r"'attn\.qkv' matches no linear layer.*attention\.q_proj"):
        resolve_target_names(bb.weights_module, list(bb.blocks), ["attn.qkv"])
    with pytest.raises(UserError, match="adapt.freeze_blocks"):
        resolve_target_names(bb.weights_module, list(bb.blocks), ["qkv"], skip_blocks=2)


class _LegacySelfAttention(nn.Module):  # transformers <= 5.17 Dinov2SelfAttention
    def __init__(self, d: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)


class _LegacyLayer(nn.Module):  # Dinov2Layer: attention.attention.{query,key,value}, attention.output.dense
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attention = nn.Module()
        self.attention.attention = _LegacySelfAttention(d)
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)


def test_legacy_transformers_names_resolve_and_translate() -> None:
    """The same logical targets find 5.17's module names; saved names move between the two schemes."""
    root = nn.Module()
    root.encoder = nn.Module()
    root.encoder.layer = nn.ModuleList([_LegacyLayer(8) for _ in range(2)])
    blocks = list(root.encoder.layer)
    qkv = resolve_target_names(root, blocks, ["qkv"])
    assert qkv == [f"encoder.layer.{i}.attention.attention.{n}" for i in range(2) for n in ("query", "key", "value")]
    assert resolve_target_names(root, blocks, ["proj"]) == [f"encoder.layer.{i}.attention.output.dense" for i in range(2)]
    assert resolve_target_names(root, blocks, ["mlp"], skip_blocks=1) == ["encoder.layer.1.mlp.fc1", "encoder.layer.1.mlp.fc2"]

    new = _build("dinov2")
    current = [n for n, m in new.weights_module.named_modules() if isinstance(m, nn.Linear)]
    legacy_saved = qkv + ["encoder.layer.0.attention.output.dense", "encoder.layer.0.mlp.fc1"]
    assert translate_hf_names(legacy_saved, current) == [
        f"encoder.layer.{i}.attention.{n}_proj" for i in range(2) for n in "qkv"
    ] + ["encoder.layer.0.attention.o_proj", "encoder.layer.0.mlp.fc1"]
    legacy_names = [n for n, m in root.named_modules() if isinstance(m, nn.Linear)]
    assert translate_hf_names(["encoder.layer.1.attention.v_proj"], legacy_names) == ["encoder.layer.1.attention.attention.value"]


@pytest.mark.parametrize("kind", KINDS)
def test_zero_initialised_lora_reproduces_the_base_model(kind: str) -> None:
    bb = _build(kind).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = bb(x)
    apply_lora(bb, rank=4, alpha=8.0, dropout=0.0, targets=["qkv", "proj", "mlp"])
    assert has_lora(bb)
    with torch.no_grad():
        out = bb(x)
    assert torch.equal(out.cls, ref.cls) and torch.equal(out.patches, ref.patches)


@pytest.mark.parametrize("kind", KINDS)
def test_merged_equals_unmerged_and_is_a_plain_model(kind: str, tmp_path: Path) -> None:
    bb = _build(kind).eval()
    plain_keys = set(bb.state_dict())
    apply_lora(bb, rank=4, alpha=8.0, dropout=0.1, targets=["qkv", "mlp"])
    _randomize_adapters(bb)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        adapted = bb(x)
        merged_model = merged_copy(bb)
        merged = merged_model(x)
    assert has_lora(bb) and not has_lora(merged_model)  # the original keeps its adapters
    assert set(merged_model.state_dict()) == plain_keys
    torch.testing.assert_close(merged.cls, adapted.cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged.patches, adapted.patches, atol=1e-5, rtol=0)
    if kind != "builtin":  # a merged HF backbone saves as a plain transformers model
        merged_model.save_pretrained(tmp_path / "m")
        reloaded = HFBackbone(transformers.AutoModel.from_pretrained(tmp_path / "m")).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(x).cls, adapted.cls, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["builtin", "dinov2"])
def test_only_adapters_and_final_norm_train(kind: str) -> None:
    bb = _build(kind)
    apply_lora(bb, rank=2, alpha=2.0, dropout=0.0, targets=["qkv"], skip_blocks=1, train_norm=True)
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    norm = "norm" if kind == "builtin" else "model.layernorm"
    adapters = [n for n in trainable if "lora_" in n]
    assert sorted(set(trainable) - set(adapters)) == [f"{norm}.bias", f"{norm}.weight"]
    assert adapters and all(".1." in n for n in adapters)  # block 0 has none
    # qkv: builtin fused D -> 3D (A: r x D, B: 3D x r); HF three D -> D layers
    per_layer = 2 * 32 + 96 * 2 if kind == "builtin" else 3 * (2 * 32 + 32 * 2)
    assert count_parameters(bb) == (per_layer + 64, sum(p.numel() for p in bb.parameters()))
    # gradients reach only the trainable parameters; autograd skips the frozen weights entirely
    tok = bb(torch.randn(2, 3, 32, 32))
    (tok.cls.sum() + tok.patches.sum()).backward()
    assert all((p.grad is not None) == p.requires_grad for p in bb.parameters())

    bb2 = _build(kind)
    apply_lora(bb2, rank=2, alpha=2.0, dropout=0.0, targets=["qkv"], train_norm=False)
    assert all("lora_" in n for n, p in bb2.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["builtin", "dinov3"])
def test_freeze_backbone_embedding_and_first_blocks(kind: str) -> None:
    bb = _build(kind)
    freeze_backbone(bb, 1)
    for name, p in bb.named_parameters():
        assert p.requires_grad == (bb.layer_id(name) >= 2), name
    frozen = [n for n, p in bb.named_parameters() if not p.requires_grad]
    assert any("mask_token" in n for n in frozen) and any("patch_embed" in n for n in frozen)
    trainable, total = count_parameters(bb)
    assert 0 < trainable < total
    with pytest.raises(UserError, match="adapt.freeze_blocks"):
        freeze_backbone(_build(kind), 3)


def test_shared_parameters_count_once() -> None:
    a = nn.Linear(4, 4)
    b = nn.Sequential(a, nn.Linear(4, 2))
    b[1].requires_grad_(False)
    assert count_parameters([a, b]) == (20, 30)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
@pytest.mark.parametrize("kind", ["builtin", "dinov2"])
def test_adapter_files_roundtrip_and_peft_reads_them(kind: str, tmp_path: Path) -> None:
    base = _build(kind).eval()
    adapted = copy.deepcopy(base)
    apply_lora(adapted, rank=4, alpha=4.0, dropout=0.0, targets=["qkv", "proj"], train_norm=True)
    _randomize_adapters(adapted)
    with torch.no_grad():
        getattr(adapted.weights_module, "norm" if kind == "builtin" else "layernorm").weight.add_(0.5)
    save_adapter(adapted, tmp_path / "ad", rank=4, alpha=4.0, dropout=0.0, train_norm=True, extra={"base": "test"})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = adapted(x).cls
        rebuilt = load_adapter_weights(copy.deepcopy(base), tmp_path / "ad", source="test").eval()
        torch.testing.assert_close(rebuilt(x).cls, want, atol=1e-5, rtol=0)
    assert not has_lora(rebuilt)
    if kind != "builtin":  # the directory is a standard peft adapter
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(tmp_path / "ad")).eval()
        with torch.no_grad():
            out = peft_model(pixel_values=x).last_hidden_state[:, 0]
        torch.testing.assert_close(out, want, atol=1e-5, rtol=0)
    other = _build(kind)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(UserError, match="differs from the one it was trained on"):
        load_adapter_weights(other, tmp_path / "ad", source="test")


def test_merge_lora_in_place_is_noop_without_adapters() -> None:
    bb = _build("builtin")
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    assert merge_lora(bb) is bb and merged_copy(bb) is bb
    assert all(torch.equal(before[k], v) for k, v in bb.state_dict().items())
