"""Adaptation modes of a backbone: LoRA adapters (peft), layer freezing, parameter counting, merging.

LoRA is injected in place (``peft.inject_adapter_in_model``) into the module that owns the weights:
the built-in ViT itself, or the transformers model inside an ``HFBackbone``. The backbone object and its
``forward``/``blocks``/``layer_id`` stay what they were; an adapted ``nn.Linear`` becomes a peft LoRA
layer whose frozen weight is ``<name>.base_layer.weight`` and whose adapters are
``<name>.lora_A.default.weight`` / ``<name>.lora_B.default.weight`` (``lora_B`` starts at zero, so an
adapted model starts out equal to its base).

Target names are logical so that one config works on every backbone and transformers version:

============  ====================  ======================================  ==========================
logical name  built-in ViT          transformers >= 5.18 (Dinov2*, DINOv3)  transformers <= 5.17 Dinov2*
============  ====================  ======================================  ==========================
qkv           attn.qkv (fused)      attention.{q,k,v}_proj                  attention.attention.{query,key,value}
proj          attn.proj             attention.o_proj                        attention.output.dense
mlp           mlp.fc1, mlp.fc2      mlp.fc1/fc2 or mlp.{gate,up,down}_proj  mlp.fc1/fc2 or mlp.weights_in/out
============  ====================  ======================================  ==========================

Any other entry is a literal module-name suffix (``q_proj``, ``attention.query``, ``mlp.fc1``...), matched
against the ``nn.Linear`` layers inside the transformer blocks only.

Freezing (``requires_grad=False``) is by layer id: layer 0 is everything before the first block (patch
embedding, position embedding, cls/register/mask tokens), layer i+1 is block i. Freezing the mask token
with the embedding lets autograd stop at the first trainable block, which is where the speed-up comes from.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from metadino.errors import UserError
from metadino.models.backbone import Backbone

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "LOGICAL_TARGETS",
    "METADINO_ADAPTER_FILE",
    "apply_lora",
    "base_fingerprint",
    "count_parameters",
    "freeze_backbone",
    "has_lora",
    "load_adapter_weights",
    "lora_target_names",
    "merge_lora",
    "merged_copy",
    "resolve_target_names",
    "save_adapter",
    "strip_lora",
    "translate_hf_names",
]

# Logical target -> module-name suffixes (relative to a block) under every naming scheme we know.
LOGICAL_TARGETS: dict[str, tuple[str, ...]] = {
    "qkv": (
        "attn.qkv",
        "attention.q_proj", "attention.k_proj", "attention.v_proj",
        "attention.attention.query", "attention.attention.key", "attention.attention.value",
    ),
    "proj": ("attn.proj", "attention.o_proj", "attention.output.dense"),
    "mlp": (
        "mlp.fc1", "mlp.fc2",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        "mlp.weights_in", "mlp.weights_out",
    ),
}

# transformers renamed Dinov2's attention layers in 5.18: legacy -> current (used to load adapters across versions).
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    (".attention.attention.query", ".attention.q_proj"),
    (".attention.attention.key", ".attention.k_proj"),
    (".attention.attention.value", ".attention.v_proj"),
    (".attention.output.dense", ".attention.o_proj"),
)

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
METADINO_ADAPTER_FILE = "metadino_adapter.json"
_PEFT_PREFIX = "base_model.model."  # key prefix of peft's saved adapters (PeftModel.save_pretrained)
_ADAPTER = "default"


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def resolve_target_names(
    root: nn.Module, blocks: Sequence[nn.Module], targets: Sequence[str], *, skip_blocks: int = 0
) -> list[str]:
    """Full names (within `root`) of the ``nn.Linear`` layers of blocks ``skip_blocks..`` that `targets` name.

    Args:
        root: the module LoRA goes into.
        blocks: its transformer blocks, in order (submodules of `root`).
        targets: logical names (:data:`LOGICAL_TARGETS`) and/or literal module-name suffixes.
        skip_blocks: the first blocks get no adapters (they are frozen).
    Raises:
        UserError: a target matches no linear layer (the message lists the names that exist).
    """
    block_ids = {id(b): i for i, b in enumerate(blocks)}
    block_prefix: dict[int, str] = {}
    for name, module in root.named_modules():
        if id(module) in block_ids:
            block_prefix[block_ids[id(module)]] = name + "."
    if len(block_prefix) != len(blocks):
        raise TypeError("the blocks are not submodules of the LoRA root module")
    linears: list[tuple[int, str, str]] = []  # (block, full name, name relative to the block)
    for name, module in root.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        for i, prefix in block_prefix.items():
            if name.startswith(prefix):
                linears.append((i, name, name[len(prefix):]))
                break
    chosen: list[str] = []
    for target in targets:
        suffixes = LOGICAL_TARGETS.get(target, (target,))
        hits = [(i, full) for i, full, rel in linears if any(_matches(rel, s) or _matches(full, s) for s in suffixes)]
        if not hits:
            available = sorted({rel for _, _, rel in linears})
            raise UserError(
                f"config key 'adapt.lora.target_modules': '{target}' matches no linear layer of "
                f"{type(root).__name__}; use qkv, proj, mlp or one of the layer names in a block: {', '.join(available)}"
            )
        chosen += [full for i, full in hits if i >= skip_blocks and full not in chosen]
    if not chosen:
        raise UserError(
            f"config key 'adapt.freeze_blocks': all {len(blocks)} blocks are frozen, so no LoRA adapter is left; "
            "lower adapt.freeze_blocks"
        )
    return chosen


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def freeze_backbone(backbone: Backbone, n_blocks: int) -> None:
    """Freeze (``requires_grad=False``) layer 0 (patch/position embeddings, cls/register/mask tokens) and the
    first `n_blocks` blocks; everything else is left as it is."""
    if not 0 <= n_blocks <= backbone.depth:
        raise UserError(f"config key 'adapt.freeze_blocks': {n_blocks} is not in [0, {backbone.depth}] "
                        f"(the backbone has {backbone.depth} blocks)")
    for name, p in backbone.named_parameters():
        if backbone.layer_id(name) <= n_blocks:
            p.requires_grad_(False)


def apply_lora(
    backbone: Backbone,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    targets: Sequence[str],
    skip_blocks: int = 0,
    train_norm: bool = True,
    target_names: Sequence[str] | None = None,
) -> list[str]:
    """Inject LoRA adapters in place; afterwards only the adapters (and the final norm when `train_norm`)
    have ``requires_grad``. Returns the adapted module names (within :attr:`Backbone.weights_module`).

    `target_names` (exact names, e.g. from a saved adapter) bypasses the resolution of `targets`.
    """
    from peft import LoraConfig, inject_adapter_in_model  # imported here: peft takes seconds to import

    if not 0 <= skip_blocks <= backbone.depth:
        raise UserError(f"config key 'adapt.freeze_blocks': {skip_blocks} is not in [0, {backbone.depth}] "
                        f"(the backbone has {backbone.depth} blocks)")
    if has_lora(backbone):
        raise ValueError("the backbone already has LoRA adapters")
    root = backbone.weights_module
    names = list(target_names) if target_names is not None else resolve_target_names(
        root, list(backbone.blocks), targets, skip_blocks=skip_blocks)
    # peft annotates lora_alpha as int, but only ever divides by it (scaling = alpha / r): a float alpha is fine
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,  # type: ignore[arg-type]
                        target_modules=names, bias="none")
    inject_adapter_in_model(config, root, adapter_name=_ADAPTER)
    backbone.train(backbone.training)  # the new dropout modules start in train mode; follow the backbone
    _set_trainable(backbone, False)
    for name, p in root.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            p.requires_grad_(True)
    if train_norm:
        _set_trainable(getattr(root, backbone.final_norm_name), True)
    return names


def has_lora(module: nn.Module) -> bool:
    """Whether any submodule is a LoRA layer (checked without importing peft)."""
    return any(hasattr(m, "lora_A") and hasattr(m, "base_layer") for m in module.modules())


def lora_target_names(backbone: Backbone) -> list[str]:
    """Names (within :attr:`Backbone.weights_module`) of the LoRA layers, in module order."""
    return [n for n, m in backbone.weights_module.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def merge_lora(backbone: Backbone) -> Backbone:
    """Fold every adapter into its base weight (``W + scale * B @ A``) and put the plain ``nn.Linear`` back,
    in place. Returns `backbone` (a no-op without adapters)."""
    root = backbone.weights_module
    for name in lora_target_names(backbone):
        layer = root.get_submodule(name)
        layer.merge(safe_merge=True)  # type: ignore[operator]
        _replace(root, name, layer.get_base_layer())  # type: ignore[operator]
    return backbone


def strip_lora(backbone: Backbone) -> Backbone:
    """Drop the adapters without merging them (the base model back), in place. Returns `backbone`."""
    root = backbone.weights_module
    for name in lora_target_names(backbone):
        _replace(root, name, root.get_submodule(name).get_base_layer())  # type: ignore[operator]
    return backbone


def merged_copy(backbone: Backbone) -> Backbone:
    """A merged deep copy; `backbone` keeps its adapters."""
    return merge_lora(copy.deepcopy(backbone)) if has_lora(backbone) else backbone


def count_parameters(modules: nn.Module | Iterable[nn.Module]) -> tuple[int, int]:
    """(trainable, total) element counts; a parameter shared by several modules counts once."""
    if isinstance(modules, nn.Module):
        modules = [modules]
    seen: dict[int, Tensor] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, sum(p.numel() for p in seen.values())


# --------------------------------------------------------------------------------------------------------
# Adapter-only files (peft's format, so PeftModel.from_pretrained(base, dir) also reads them)


def base_fingerprint(backbone: Backbone, *, exclude: Sequence[str] = ()) -> str:
    """SHA-256 over the frozen base weights (LoRA adapters and names under `exclude` left out).

    Independent of parameter names (they change between transformers versions): per-tensor digests are sorted.
    """
    digests = []
    for name, p in backbone.weights_module.named_parameters():
        if ".lora_A." in name or ".lora_B." in name or any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        t = p.detach().float().contiguous().cpu()
        digests.append(hashlib.sha256(str(tuple(t.shape)).encode() + t.numpy().tobytes()).hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()


def save_adapter(
    backbone: Backbone,
    directory: str | Path,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    train_norm: bool,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the adapters (and the final norm when it trained) as a peft adapter directory, plus
    ``metadino_adapter.json`` (`extra`, the target names, the norm and the base fingerprint)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    root = backbone.weights_module
    names = lora_target_names(backbone)
    if not names:
        raise ValueError("the backbone has no LoRA adapters to save")
    norm = backbone.final_norm_name
    state: dict[str, Tensor] = {}
    for name in names:
        layer = root.get_submodule(name)
        for part in ("lora_A", "lora_B"):
            state[f"{_PEFT_PREFIX}{name}.{part}.weight"] = getattr(layer, part)[_ADAPTER].weight
    if train_norm:
        for pname, p in getattr(root, norm).named_parameters():
            state[f"{_PEFT_PREFIX}{norm}.{pname}"] = p
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / ADAPTER_WEIGHTS_FILE),
              metadata={"format": "pt"})
    # peft annotates lora_alpha as int; a float works (scaling = alpha / r)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,  # type: ignore[arg-type]
                        target_modules=names, bias="none",
                        modules_to_save=[norm] if train_norm else None)
    config.save_pretrained(str(directory))
    meta = {
        "format_version": 1,
        **(extra or {}),
        "target_names": names,
        "rank": rank, "alpha": alpha, "dropout": dropout,
        "train_norm": train_norm, "norm": norm,
        "base_fingerprint": base_fingerprint(backbone, exclude=[norm] if train_norm else []),
    }
    (directory / METADINO_ADAPTER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def translate_hf_names(names: Sequence[str], available: Iterable[str]) -> list[str]:
    """Map module names saved under one transformers naming scheme (5.17's ``attention.attention.query``
    or 5.18+'s ``attention.q_proj``) to the scheme of `available` (the current model's names)."""
    have = set(available)
    out = []
    for name in names:
        if name not in have:
            for old, new in _HF_RENAMES:
                cand = name.replace(old, new) if old in name else name.replace(new, old) if new in name else None
                if cand is not None and cand in have:
                    name = cand
                    break
        out.append(name)
    return out


def load_adapter_weights(backbone: Backbone, directory: str | Path, *, source: str) -> Backbone:
    """Rebuild a saved adapter on its base `backbone` (in place, checked against the base fingerprint)
    and merge it. Returns the merged backbone."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / METADINO_ADAPTER_FILE).read_text())
    root = backbone.weights_module
    linear_names = [n for n, m in root.named_modules() if isinstance(m, nn.Linear)]
    saved_names = list(meta["target_names"])
    names = translate_hf_names(saved_names, linear_names)
    missing = [n for n in names if n not in linear_names]
    if missing:
        raise UserError(f"the adapter in {source} targets layers the base model does not have ({', '.join(missing[:3])}); "
                        "it was saved from another architecture: export the run merged (without --adapter-only)")
    norm = meta["norm"]
    exclude = [norm] if meta["train_norm"] else []
    if base_fingerprint(backbone, exclude=exclude) != meta["base_fingerprint"]:
        raise UserError(f"the base model of the adapter in {source} differs from the one it was trained on "
                        f"({meta.get('base', 'unknown base')}); point it to the original base or use a merged export")
    apply_lora(backbone, rank=int(meta["rank"]), alpha=float(meta["alpha"]), dropout=float(meta["dropout"]),
               targets=(), target_names=names, train_norm=bool(meta["train_norm"]))
    state = load_file(str(directory / ADAPTER_WEIGHTS_FILE))
    rename = dict(zip(saved_names, names))
    own = dict(root.named_parameters())
    for key, value in state.items():
        rel = key.removeprefix(_PEFT_PREFIX)
        for part in (".lora_A.", ".lora_B."):
            if part in rel:
                module, _, tail = rel.partition(part)
                rel = f"{rename.get(module, module)}{part}{_ADAPTER}.{tail}"
                break
        if rel not in own or own[rel].shape != value.shape:
            raise UserError(f"the adapter weights in {source} do not match the base model (key {key}); "
                            "re-export the run")
        with torch.no_grad():
            own[rel].copy_(value)
    return merge_lora(backbone)
