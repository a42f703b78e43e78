"""The Hugging Face backbone: transformers' ``Dinov2Model``, ``Dinov2WithRegistersModel`` and ``DINOv3ViTModel``
wrapped to the :class:`~metadino.models.backbone.Backbone` contract, and loading them from the Hub or a directory.
The few version-dependent details (module names, key names) are handled here and nowhere else.

transformers notes (5.17 on the GPU image, 5.23 on CPU):
- ``last_hidden_state`` is already through the final LayerNorm; layout [CLS, registers, patches].
- Dinov2 blends the mask token (``x*(1-m) + tok*m``), DINOv3 uses ``torch.where``; both via ``bool_masked_pos``.
- ``DINOv3ViTModel`` in ``train()`` mode randomly rescales its RoPE coordinates (``pos_embed_rescale``,
  2.0 by default), as DINOv3 was trained. That is left as is: the student gets the augmentation, the
  teacher runs in ``eval()``. Tests that need determinism call ``eval()``.
- Attention projections are named ``attention.attention.query`` in 5.17 and ``attention.q_proj`` in 5.23,
  so nothing here keys on them: layer ids come from the block index in the parameter name.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from metadino.errors import UserError
from metadino.models.backbone import Backbone, Tokens
from metadino.models.channels import expand_patch_embed_weight

if TYPE_CHECKING:  # transformers is imported lazily at run time (it is slow to import)
    from transformers import PreTrainedModel

__all__ = ["SUPPORTED_HF_CLASSES", "HFBackbone", "hf_from_config", "load_hf"]

SUPPORTED_HF_CLASSES: tuple[str, ...] = ("Dinov2Model", "Dinov2WithRegistersModel", "DINOv3ViTModel")

# HF config keys that define the architecture (compared on resume; used to rebuild). Absent keys are skipped.
_HF_ARCH_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "mlp_ratio",
    "hidden_act", "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias", "query_bias",
    "key_bias", "value_bias", "proj_bias", "mlp_bias", "use_swiglu_ffn", "use_gated_mlp", "use_mask_token",
    "num_register_tokens", "rope_theta",
)


def _find_blocks(model: nn.Module, depth: int) -> nn.ModuleList:
    for path in ("encoder.layer", "model.layer", "layer", "encoder.layers", "layers"):
        mod: Any = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList) and len(mod) == depth:
            return mod
    for mod in model.modules():  # unknown layout: the first list of `depth` modules
        if isinstance(mod, nn.ModuleList) and len(mod) == depth:
            return mod
    raise TypeError(f"cannot find the transformer blocks of {type(model).__name__}")


def _square_patch(patch_size: Any) -> int:
    if isinstance(patch_size, (list, tuple)):
        if len(set(patch_size)) != 1:
            raise UserError(f"non-square patch size {tuple(patch_size)} is not supported; use a square patch")
        return int(patch_size[0])
    return int(patch_size)


class HFBackbone(Backbone):
    """Wraps a transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``DINOv3ViTModel``.

    The wrapped model is ``self.model``; the wrapper starts in training mode like any new module.
    """

    kind = "hf"

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        name = type(model).__name__
        if name not in SUPPORTED_HF_CLASSES:
            raise UserError(f"unsupported Hugging Face model class {name}; use one of "
                            f"{', '.join(SUPPORTED_HF_CLASSES)}")
        self.model = model
        cfg = model.config
        self.hf_class = name
        self.embed_dim = int(cfg.hidden_size)
        self.patch_size = _square_patch(cfg.patch_size)
        self.in_chans = int(cfg.num_channels)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_registers = int(getattr(cfg, "num_register_tokens", 0) or 0) if name != "Dinov2Model" else 0
        self.has_mask_token = getattr(model.embeddings, "mask_token", None) is not None
        self._depth = int(cfg.num_hidden_layers)
        _ = (self.blocks, self._final_norm())  # fail early on an unknown layout
        self.train()  # from_pretrained returns eval(); keep the wrapper and the model consistent

    # Looked up on each call (cheap) rather than cached, so it stays right if self.model gets wrapped (e.g. peft).
    @property
    def blocks(self) -> nn.ModuleList:
        return _find_blocks(self.model, self._depth)

    @property
    def weights_module(self) -> nn.Module:
        return self.model

    def _final_norm(self) -> nn.Module:
        for name in ("layernorm", "norm"):
            norm = getattr(self.model, name, None)
            if isinstance(norm, nn.LayerNorm):
                return norm
        raise TypeError(f"cannot find the final norm of {self.hf_class}")

    def _masked_pos(self, masks: Tensor) -> Tensor | None:
        if self.has_mask_token:
            return masks  # always passed (all False when unmasked) so the mask token has a grad under DDP
        if masks.any():
            raise UserError(f"this {self.hf_class} has no mask token (use_mask_token=false), so iBOT masking "
                            "cannot be used; disable iBOT or use a checkpoint with a mask token")
        return None

    def _split(self, hidden: Tensor) -> Tokens:
        r = self.num_registers
        return Tokens(cls=hidden[:, 0], patches=hidden[:, 1 + r:], registers=hidden[:, 1:1 + r] if r else None)

    def forward(self, images: Tensor, masks: Tensor | None = None) -> Tokens:
        masks = self._check_inputs(images, masks)
        out = self.model(pixel_values=images, bool_masked_pos=self._masked_pos(masks))
        return self._split(out.last_hidden_state)

    def intermediate_layers(self, images: Tensor, n: int = 4) -> list[Tokens]:
        masks = self._check_inputs(images, None)
        out = self.model(pixel_values=images, bool_masked_pos=self._masked_pos(masks), output_hidden_states=True)
        # The last `depth` entries are the block outputs (pre-norm) whether or not the embeddings are included.
        hidden: list[Tensor] = list(out.hidden_states)[-self.depth:]
        if not 1 <= n <= len(hidden):
            raise ValueError(f"n must be in [1, {len(hidden)}], got {n}")
        norm = self._final_norm()
        return [self._split(norm(h)) for h in hidden[-n:]]

    def last_block_attention(self, images: Tensor) -> Tensor:
        """[B, heads, T, T] attention probabilities of the last block, through ``output_attentions=True``.

        SDPA does not return its probabilities, so this one call runs with transformers' eager attention (the same
        maths); the implementation the model had is restored afterwards, also when the call fails. Every block's
        probabilities are held until the call returns: on large inputs, call it on small batches.
        """
        masks = self._check_inputs(images, None)
        model: Any = self.model
        if not hasattr(model, "set_attn_implementation") and hasattr(model, "get_base_model"):
            model = model.get_base_model()  # peft wrapper
        before = model.config._attn_implementation

        def use(implementation: str) -> None:
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation(implementation)
            else:  # older transformers: every attention module reads the shared config at call time
                model.config._attn_implementation = implementation

        use("eager")
        try:
            out = self.model(pixel_values=images, bool_masked_pos=self._masked_pos(masks), output_attentions=True)
        finally:
            use(before)
        attentions = list(out.attentions or [])
        if len(attentions) < self.depth:
            raise RuntimeError(f"{self.hf_class} returned {len(attentions)} attention maps for {self.depth} blocks")
        last: Tensor = attentions[-1].float()
        return last

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers >= 5.23 renamed gradient_checkpointing_* to activation_checkpointing_* (old names warn).
        # The type: ignores: transformers leaves these methods unannotated.
        if enable:
            kwargs = {"use_reentrant": False}
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[no-untyped-call]
        elif hasattr(self.model, "activation_checkpointing_disable"):
            self.model.activation_checkpointing_disable()  # type: ignore[no-untyped-call]
        else:
            self.model.gradient_checkpointing_disable()  # type: ignore[no-untyped-call]

    def save_pretrained(self, directory: str | Path) -> None:
        # transformers' own format: AutoModel.from_pretrained(directory) loads it (legacy key names on disk).
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))

    def config_dict(self) -> dict[str, Any]:
        cfg = self.model.config.to_dict()
        hf = {k: cfg[k] for k in _HF_ARCH_KEYS if k in cfg}
        if isinstance(hf.get("patch_size"), tuple):
            hf["patch_size"] = list(hf["patch_size"])
        return {
            "kind": "hf",
            "class": self.hf_class,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_registers": self.num_registers,
            "hf_config": hf,
        }


def _expand_hf_channels(model: PreTrainedModel, in_chans: int, mode: str, source: str) -> None:
    """Replace the patch-embedding conv of an HF model by an expanded one and update its config."""
    embeddings = model.get_submodule("embeddings")
    convs = [(n, m) for n, m in embeddings.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1:
        raise TypeError(f"expected one patch-embedding conv in {type(model).__name__}, found {len(convs)}")
    name, old = convs[0]
    cur = old.in_channels
    if 1 < in_chans < cur:
        raise UserError(f"{source} has {cur} input channels and cannot be shrunk to in_chans={in_chans}; "
                        f"use in_chans >= {cur} or 1 (or select {cur} channels in the data)")
    kh, kw = old.kernel_size  # a Conv2d's sizes are pairs (typed tuple[int, ...] in torch)
    sh, sw = old.stride
    new = nn.Conv2d(in_chans, old.out_channels, kernel_size=(kh, kw), stride=(sh, sw),
                    bias=old.bias is not None).to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(expand_patch_embed_weight(old.weight, in_chans, mode=mode))
        if old.bias is not None and new.bias is not None:  # both or neither
            new.bias.copy_(old.bias)
    parent = embeddings.get_submodule(name.rpartition(".")[0]) if "." in name else embeddings
    setattr(parent, name.rpartition(".")[2], new)
    for m in embeddings.modules():  # Dinov2PatchEmbeddings checks its own num_channels
        if hasattr(m, "num_channels"):
            m.num_channels = in_chans  # type: ignore[assignment]  # torch types Module.__setattr__ for Tensor/Module only
    model.config.num_channels = in_chans


def _hf_class_name(config: Any) -> str:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    found = MODEL_MAPPING_NAMES.get(getattr(config, "model_type", ""), None)
    return found if isinstance(found, str) else type(config).__name__


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or "\\" in ref or ref.count("/") > 1 or Path(ref).exists()


def load_hf(ref: str, *, in_chans: int | None, drop_path_rate: float, channel_expansion: str) -> HFBackbone:
    from transformers import AutoConfig, AutoModel

    local = Path(ref).expanduser()
    if _looks_like_path(ref) and not local.is_dir():
        raise UserError(f"Hugging Face model directory {ref!r} does not exist or is not a directory; pass the "
                        "directory written by save_pretrained "
                        "(hf:/path/to/model) or a hub id such as hf:facebook/dinov2-small")
    target = str(local) if local.is_dir() else ref
    try:
        config = AutoConfig.from_pretrained(target)
    except (OSError, ValueError) as e:
        if local.is_dir():
            raise UserError(f"{ref!r} is not a readable Hugging Face model directory (config.json: {e}); "
                            "point to a directory written by save_pretrained") from None
        raise UserError(
            f"cannot load {ref!r}: it is not a local directory, and the Hugging Face Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1) or has no such model; download it where there is network "
            f"(e.g. `hf download {ref} --local-dir DIR`) and pass hf:DIR"
        ) from None
    cls_name = _hf_class_name(config)
    if cls_name not in SUPPORTED_HF_CLASSES:
        raise UserError(f"{ref!r} is a {cls_name}, which metadino cannot adapt; use a checkpoint of "
                        f"{', '.join(SUPPORTED_HF_CLASSES)} or a builtin: backbone")
    if drop_path_rate and hasattr(config, "drop_path_rate"):
        config.drop_path_rate = float(drop_path_rate)
    cur = int(config.num_channels)
    if in_chans is not None and 1 < in_chans < cur:
        raise UserError(f"{ref!r} has {cur} input channels and cannot be shrunk to in_chans={in_chans}; "
                        f"use in_chans >= {cur} or 1 (or select {cur} channels in the data)")
    kwargs: dict[str, Any] = {"config": config, "dtype": torch.float32, "output_loading_info": True}
    try:  # all three supported classes implement SDPA in transformers >= 5.17
        model, info = AutoModel.from_pretrained(target, attn_implementation="sdpa", **kwargs)
    except (OSError, RuntimeError, ValueError) as e:  # no/corrupt weights; 5.23 raises RuntimeError on shapes
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the weights of {ref!r} ({first}); the directory needs model.safetensors "
                        "(or pytorch_model.bin) matching its config.json, as written by save_pretrained") from None
    # Never a silently random backbone: missing weights are an error (a missing mask token is zero-initialised
    # anyway, which is its standard init).
    missing = [k for k in info.get("missing_keys", []) if "mask_token" not in k]
    mismatched = [str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", [])]
    if missing or mismatched:
        names = ", ".join((missing + mismatched)[:5])
        raise UserError(f"the weights in {ref!r} do not match its config ({len(missing)} missing, "
                        f"{len(mismatched)} of the wrong shape, e.g. {names}); re-export the model with "
                        "save_pretrained")
    if type(model).__name__ not in SUPPORTED_HF_CLASSES:
        raise UserError(f"{ref!r} loads as {type(model).__name__}, which metadino cannot adapt; use a checkpoint of "
                        f"{', '.join(SUPPORTED_HF_CLASSES)}")
    if in_chans is not None and in_chans != cur:
        _expand_hf_channels(model, in_chans, channel_expansion, repr(ref))
    return HFBackbone(model)


def hf_from_config(config: Mapping[str, Any], *, drop_path_rate: float = 0.0) -> HFBackbone:
    """Rebuild (random weights) from :meth:`HFBackbone.config_dict`."""
    from transformers import AutoConfig, AutoModel

    hf = dict(config["hf_config"])
    model_type = hf.pop("model_type")
    if drop_path_rate:
        hf["drop_path_rate"] = drop_path_rate
    cfg = AutoConfig.for_model(model_type, **hf)
    # transformers leaves from_config unannotated (it returns a PreTrainedModel)
    return HFBackbone(AutoModel.from_config(cfg, attn_implementation="sdpa"))  # type: ignore[no-untyped-call]
