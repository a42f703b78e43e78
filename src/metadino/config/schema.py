"""The run configuration as a tree of dataclasses.

Every field carries its help text (``metadata["help"]``), written for the person running the tool: what the key
does, its units, and when to change it. The README's config reference and ``metadino config`` are rendered from
these texts (:mod:`metadino.config.reference`), so this file is the one place to document a key.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Literal

Precision = Literal["fp32", "bf16", "fp16"]
SSLMethod = Literal["dinov1", "dinov2"]
# The augmentation presets of the data layer (metadino.data.photometric.PHOTOMETRIC_PRESETS; a test keeps the two
# equal). Spelled out here so that the config layer imports nothing from the layers below it.
PhotometricPreset = Literal["natural", "microscopy", "xray", "satellite", "none"]


def opt(default: Any, help: str, *, key: str | None = None) -> Any:
    """A config field with its help text. A list or dict default is copied for every instance."""
    metadata = {"help": help} if key is None else {"help": help, "key": key}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type, help: str | None = None, *, key: str | None = None) -> Any:
    """A nested section (a dataclass built with its own defaults); its help defaults to the class docstring."""
    text = help if help is not None else " ".join(inspect.cleandoc(cls.__doc__ or "").split())
    metadata = {"help": text} if key is None else {"help": text, "key": key}
    return dataclasses.field(default_factory=cls, metadata=metadata)


@dataclass
class ReadConfig:
    """How image files are decoded (the same for every row)."""

    series: int = opt(0, "TIFF series to read (an image of a multi-series OME-TIFF, or the subgroup of a bioformats2raw OME-Zarr).")
    level: int = opt(0, "Resolution level: 0 = full resolution; n = the n-th sub-resolution of a TIFF pyramid or OME-Zarr multiscale.")
    z: int | None = opt(None, "Z plane of files with a Z axis (OME-TIFF, OME-Zarr); null: a file with several planes is refused.")
    t: int | None = opt(None, "Time point of files with a T axis; null: a file with several time points is refused.")
    max_pixels: int = opt(
        1_000_000_000,
        "Largest height x width decoded (Pillow's own limit, ~89 Mpx, is too small for scenes and slides); a larger "
        "image, or one that would not fit in free memory, is refused naming its size: use data.read.level or tiles.",
    )
    nodata: Literal["error", "fill", "mean"] = opt(
        "error",
        "No-data pixels (NaN, and pixels equal to data.read.nodata_value): error refuses the image (the pre-check "
        "lists it), fill writes data.read.fill_value, mean writes the channel's mean over its valid pixels.",
    )
    nodata_value: float | None = opt(
        None, "A raw pixel value meaning 'no data' (e.g. 0 or -9999 in satellite products), compared before scaling."
    )
    fill_value: float = opt(
        0.0, "Value (after scaling to [0, 1]) for nodata: fill, and for a channel without any valid pixel under mean."
    )
    voi_window: bool = opt(
        False, "DICOM: apply the file's VOI LUT or window (centre/width) and scale it to [0, 1]; off keeps the modality range (CT in HU)."
    )


@dataclass
class DataConfig:
    """Where the images and their metadata live."""

    table: str = opt(
        "",
        "Required. CSV or Parquet file with one row per image. A relative path in a config file is relative to "
        "that file's folder; on the command line, to the working directory.",
    )
    image_column: str = opt(
        "path",
        "Column holding the image paths (relative to data.root unless absolute; fsspec URLs such as s3://... too), "
        "or, in a Parquet table, the image bytes (a binary column or Hugging Face datasets' {bytes, path}).",
    )
    image_template: str | None = opt(
        None,
        "Path built from columns instead: {channel} is replaced by each name in data.channels (one file per "
        "channel), then every {column} by the row's cell. HPA: '{Id}_{channel}.png'; Cell Painting: "
        "'{PathName_Orig{channel}}/{FileName_Orig{channel}}'. null: data.image_column names the file.",
    )
    channels: list[str] | None = opt(
        None,
        "Channel names in order: one file each with {channel} in data.image_template; otherwise the names of the "
        "image's model.in_chans channels. Recorded in the export's preprocessing.",
    )
    channel_columns: list[str] | None = opt(
        None, "One column per channel, each holding that channel's file (channel names: the column names)."
    )
    index_column: str | None = opt(
        None,
        "Column with each row's item of a stacked .npy [N, H, W(, C)] named in the path column (memory-mapped; "
        "MedMNIST via metadino import), or the frame of a multi-frame DICOM.",
    )
    tile_columns: dict[str, str] = opt(
        {},
        "Whole-slide region rows: the columns of x and y (top-left, level-0 pixels), size (or width and height) and "
        "optionally level, e.g. {x: x, y: y, size: size, level: level}. TIFF and OME-Zarr decode only the tiles "
        "under the region.",
    )
    read: ReadConfig = section(ReadConfig)
    root: str | None = opt(None, "Folder that relative image paths start from; null: the table's folder.")
    rows: dict[str, Any] = opt(
        {}, "Row filter, e.g. {split: train}; a value may be a list of accepted values. Empty: every row."
    )
    missing_values: list[str] = opt(
        ["", "NA", "NaN", "nan", "None", "null"], "Cell values that mean 'unknown' in the metadata columns."
    )
    bad_images: Literal["strict", "skip"] = opt(
        "strict",
        "Every selected image is decoded once before the first step (cached per file). An image that does not "
        "decode, has other than model.in_chans channels or NaN/inf pixels: strict stops before training and lists "
        "all bad rows; skip trains without them and lists them in RUN_DIR/skipped_rows.csv.",
    )
    max_bad_fraction: float = opt(
        0.0, "With bad_images: skip, the largest share of selected rows (0..1) that may be skipped; more stops the run."
    )


@dataclass
class ModelConfig:
    """The backbone being adapted."""

    backbone: str = opt(
        "builtin:vit-small",
        "The model to adapt: builtin:vit-tiny, builtin:vit-small or builtin:vit-base (random init), "
        "metadino:synthcell-vit-tiny (the shipped foundation), hf:<hub id or local dir> (DINOv2, DINOv2 with "
        "registers, DINOv3 ViT), or a metadino run or export directory.",
    )
    in_chans: int = opt(
        3,
        "Channels of the input images. A 3-channel checkpoint is expanded to this many (new channels = mean of the "
        "RGB filters, all scaled by 3/N; a single channel gets the sum of the RGB filters).",
    )
    patch_size: int = opt(16, "Patch size in pixels of the built-in ViT (HF checkpoints bring their own).")
    embed_dim: int | None = opt(None, "Width of the built-in ViT; null: the preset's.")
    depth: int | None = opt(None, "Number of blocks of the built-in ViT; null: the preset's.")
    num_heads: int | None = opt(None, "Attention heads of the built-in ViT; null: the preset's.")
    num_registers: int = opt(0, "Register tokens of the built-in ViT.")
    layerscale_init: float | None = opt(
        1e-5,
        "LayerScale init of the built-in ViT: 1.0e-05 as DINOv2, null for none (DINOv1). Short from-scratch runs "
        "learn faster with larger values. Write 1.0e-5, not 1e-5: YAML reads the latter as text.",
    )
    drop_path_rate: float = opt(0.1, "Stochastic depth of the student (built-in ViT), in [0, 1).")
    channel_expansion: Literal["mean"] = opt(
        "mean", "How the new input channels of a pretrained patch embedding are initialised (as FINO expands RGB weights to 4-channel microscopy)."
    )
    grad_checkpointing: bool = opt(
        False, "Activation checkpointing in the student backbone: saves memory, costs time."
    )


@dataclass
class HeadConfig:
    """A DINO-style projection head: MLP -> L2-normalised bottleneck -> prototypes."""

    out_dim: int = opt(65536, "Number of prototypes (the size of the softmax the student matches).")
    hidden_dim: int = opt(2048, "Width of the hidden layers of the head MLP.")
    bottleneck_dim: int = opt(256, "Width of the L2-normalised bottleneck before the prototypes.")
    nlayers: int = opt(3, "Layers of the head MLP.")
    norm_last_layer: bool = opt(
        True,
        "L2-normalised prototypes (DINOv1/v2 weight norm with gain 1, unit-norm rows at init); false: plain linear "
        "prototypes as in DINOv3/FINO.",
    )
    batchnorm: bool | None = opt(
        None,
        "Batch norm after each hidden layer of the head MLP, over the global batch (DINOv1's use_bn_in_head, exact "
        "across ranks). null: on for the DINO head, off for the iBOT head (not measured there). Without it the CLS "
        "tokens of a fresh network, ~90 % alike, give the teacher uniform targets and the DINO term never leaves "
        "ln K (README, 'Why the DINO term sat at ln K').",
    )


@dataclass
class IBOTConfig:
    """iBOT masked-patch objective (dinov2 only)."""

    loss_weight: float = opt(1.0, "Weight of the iBOT masked-patch loss (0 disables it).")
    separate_head: bool = opt(True, "The iBOT loss has its own head; false: it shares ssl.head.")
    head: HeadConfig = section(HeadConfig, "The iBOT head; must equal ssl.head when separate_head is false.")
    mask_ratio: tuple[float, float] = opt(
        (0.1, 0.5), "Share of the patch tokens masked in a masked global crop, drawn uniformly in [min, max]."
    )
    mask_probability: float = opt(0.5, "Share of the global crops that are masked at all.")


@dataclass
class SIGRegConfig:
    """SIGReg (LeJEPA, as used by FINO) on the DINO-head bottleneck of the global crops."""

    weight: float = opt(
        0.0,
        "Weight of SIGReg; 0 disables it. The reference recipes use 0.05 (term = weight x 2 x mean over the 2 "
        "global crops).",
    )
    koleo_too: bool = opt(False, "Keep KoLeo alongside SIGReg (the reference replaces it).")
    num_slices: int = opt(1024, "Random projections SIGReg tests per step.")
    reference_scaling: bool = opt(
        False, "Reproduce the reference's 1/world_size gradient under DDP instead of the true global-batch gradient."
    )


@dataclass
class GramConfig:
    """Gram anchoring (DINOv3 §4): the patch-similarity structure of the student is held to a frozen copy of the
    starting backbone (the published remedy for dense features degrading in continued SSL)."""

    weight: float = opt(
        0.0,
        "Weight of Gram anchoring; 0 disables it. Term = weight x mean over the global-crop images of "
        "(1/N²)‖X_s X_sᵀ − X_g X_gᵀ‖²_F, X the L2-normalised patch tokens (student: its masked global-crop forward; "
        "Gram teacher: a frozen copy of the starting backbone on the unmasked crops, saved in checkpoints). Logged "
        "as gram. DINOv3 ramps it to 2 in its Gram stage.",
    )
    clip_negatives: Literal["none", "both", "teacher"] = opt(
        "none",
        "Negative similarities set to 0 before the difference: none (DINOv3's default), both matrices (DINOv3 "
        "remove_neg), or the teacher's (remove_only_teacher_neg: the student's only where both are negative).",
    )


@dataclass
class DistillConfig:
    """Distillation: a larger frozen model provides the DINO/iBOT targets instead of the EMA teacher."""

    teacher: str | None = opt(
        None,
        "Backbone spec of a larger frozen, pretrained teacher (same forms as model.backbone, not builtin:) that "
        "provides the DINO/iBOT targets; null: the usual EMA teacher.",
    )


@dataclass
class SSLConfig:
    """The self-supervised objective."""

    method: SSLMethod = opt(
        "dinov2", "dinov1: DINO loss + softmax centering. dinov2: DINO + iBOT + KoLeo with Sinkhorn-Knopp centering."
    )
    dino_loss_weight: float = opt(1.0, "Weight of the DINO (CLS-token) loss.")
    head: HeadConfig = section(HeadConfig, "The DINO head.")
    ibot: IBOTConfig = section(IBOTConfig)
    koleo_loss_weight: float = opt(0.1, "Weight of KoLeo on the student CLS of the global crops (dinov2; 0 disables it).")
    student_temp: float = opt(0.1, "Softmax temperature of the student.")
    teacher_temp: float = opt(
        0.04,
        "Softmax temperature of the teacher after the warm-up. 0.04 is DINOv1's default and DINOv2's warm-up start "
        "(DINOv2 warms up to 0.07, the FINO reference uses 0.07); 0.07 from the first step left the targets of a "
        "fresh network uniform in every measured small run.",
    )
    warmup_teacher_temp: float = opt(0.04, "Teacher temperature at step 0, when teacher_temp_warmup_steps > 0.")
    teacher_temp_warmup_steps: int = opt(
        0,
        "Steps of linear teacher-temperature warm-up from warmup_teacher_temp to teacher_temp (DINOv2: 30 of 100 "
        "epochs); 0: none.",
    )
    center_momentum: float = opt(0.9, "Momentum of the softmax centering of the teacher (dinov1).")
    ignore_diagonal: bool = opt(True, "Do not compare a global crop with itself in the DINO loss.")
    ema_momentum: float = opt(
        0.994, "Teacher EMA momentum at step 0; it follows a cosine to ema_momentum_end at the last step."
    )
    ema_momentum_end: float = opt(1.0, "Teacher EMA momentum at the last step.")
    freeze_last_layer_steps: int | None = opt(
        None,
        "The prototype layers (DINO and iBOT heads) get LR 0 for this many steps. null: 30 % of the steps from "
        "scratch (builtin backbones), 2 % from pretrained weights (FINO: 450 of 20 000). Trainable prototypes fold "
        "into a subspace early on, which flattens the targets (README).",
    )
    sigreg: SIGRegConfig = section(SIGRegConfig)
    gram: GramConfig = section(GramConfig)
    distill: DistillConfig = section(DistillConfig)


@dataclass
class LabelGuidedConfig:
    """DINO-LG: centre a share of the local crops on an annotated region of the image."""

    share: float = opt(
        0.0,
        "Share of the local crops centred on the annotated region, in [0, 1]; 0 disables DINO-LG. Rows without a "
        "region get plain crops.",
    )
    bbox_columns: list[str] = opt(
        [], "Four columns x0, y0, x1, y1 of a bounding box, in pixels of the original image (x1, y1 exclusive)."
    )
    mask_column: str | None = opt(
        None,
        "Column holding the path of a mask image (same size as the image, non-zero = region), relative like the "
        "image paths. Give either this or bbox_columns.",
    )


@dataclass
class CropsConfig:
    """Multi-crop augmentation."""

    global_size: int = opt(224, "Side in pixels of the global crops; a multiple of the patch size.")
    local_size: int = opt(96, "Side in pixels of the local crops; a multiple of the patch size, at most global_size.")
    n_local: int = opt(8, "Local crops per image (0: global crops only).")
    global_scale: tuple[float, float] = opt(
        (0.32, 1.0), "Area range [min, max] of the global crops, as a share of the image (RandomResizedCrop)."
    )
    local_scale: tuple[float, float] = opt(
        (0.05, 0.32), "Area range [min, max] of the local crops, as a share of the image (RandomResizedCrop)."
    )
    hflip: bool = opt(True, "Random horizontal flips.")
    vflip: bool = opt(False, "Random vertical flips.")
    photometric: PhotometricPreset = opt(
        "natural",
        "Domain preset of the intensity augmentations (README, 'Domain presets'): natural (DINO colour pipeline, "
        "RGB only), microscopy (per-channel jitter, channel dropout, self-normalisation), xray (windowing, gamma; "
        "grayscale), satellite (90° rotations, flips, per-band jitter), none.",
    )
    mean: list[float] | None = opt(
        None, "Per-channel normalisation mean, one value per input channel; null: ImageNet for natural."
    )
    std: list[float] | None = opt(None, "Per-channel normalisation std (> 0), one value per input channel.")
    label_guided: LabelGuidedConfig = section(LabelGuidedConfig)


@dataclass
class OptimConfig:
    """AdamW with warm-up + cosine learning rate and a cosine weight-decay schedule."""

    lr: float = opt(
        5e-4,
        "Peak AdamW learning rate, reached after warmup_steps (absolute: not rescaled by batch size). Write small "
        "values as 5.0e-5 or 0.00005: YAML reads 5e-5 (no dot) as text.",
    )
    min_lr: float = opt(1e-6, "Learning rate at the end of the cosine decay.")
    warmup_steps: int = opt(0, "Steps of linear learning-rate warm-up from 0.")
    weight_decay: float = opt(0.04, "Weight decay at step 0 (none on biases, norms and layer scale).")
    weight_decay_end: float = opt(0.2, "Weight decay at the last step (cosine schedule from weight_decay).")
    layer_decay: float = opt(
        0.9,
        "Layer-wise LR decay in (0, 1]: block i of L gets layer_decay^(L − i), the patch embedding and tokens "
        "layer_decay^(L+1); 1 disables it.",
    )
    patch_embed_lr_mult: float = opt(0.2, "Extra learning-rate factor of the patch embedding.")
    clip_grad: float = opt(3.0, "Max gradient norm, applied separately to the backbone and each head (0 disables).")
    betas: tuple[float, float] = opt((0.9, 0.999), "AdamW betas.")


@dataclass
class TrainConfig:
    """The run itself."""

    steps: int = opt(1000, "Optimizer steps of the run. Fixed once the run starts (the schedules are functions of it); "
                           "split a long run into jobs with --stop-after.")
    batch_size: int = opt(32, "Images per process per step.")
    seed: int = opt(0, "Seed of every random choice (initialisation, crops, masks).")
    device: str = opt("auto", "auto | cpu | cuda | cuda:N | mps.")
    num_workers: int | Literal["auto"] = opt(
        "auto",
        "Data-loader processes per training process (results do not depend on it). auto: 2 on a CPU (the model needs "
        "the cores); beside a GPU, the cores this process may use divided among the node's processes, less one, at "
        "most 16. A run whose steps wait for data warns and logs data_wait_share.",
    )
    precision: Precision = opt(
        "fp32",
        "fp32; bf16 (autocast, CPU and GPU); or fp16 (autocast with a dynamic loss scale, for GPUs without bf16, as "
        "FINO trained): a step whose gradients overflow is skipped — weights, optimizer moments, EMA teacher, centres "
        "and prototypes untouched, the schedules do not advance — and the scale halves; its batch is used up.",
    )
    parallel: Literal["ddp", "fsdp"] = opt(
        "ddp",
        "Under torchrun: ddp (every rank holds the whole model) or fsdp (FSDP2: each block of student and teacher "
        "sharded over the ranks with parameters, gradients and AdamW moments; compute in train.precision, gradients "
        "reduced in fp32; checkpoints sharded, loadable on another number of ranks).",
    )
    fsdp_reshard_after_forward: bool = opt(
        True, "fsdp: free each block's gathered parameters after its forward (less memory, one more all-gather)."
    )
    compile: bool = opt(
        False,
        "torch.compile the student and teacher backbones (inductor). Faster steps on GPU after a cold compile of about "
        "a minute (a C++ compiler is needed on CPU); results equal eager within float tolerance.",
    )
    checkpoint_every: int = opt(500, "Steps between checkpoints.")
    keep_checkpoints: int = opt(2, "Newest checkpoints kept in the run directory.")
    log_every: int = opt(10, "Steps between log lines.")
    log_to: list[Literal["jsonl", "tensorboard"]] = opt(
        ["jsonl"],
        "Where each log record goes: RUN_DIR/metrics.jsonl (always; the report reads it) and, with tensorboard, "
        "RUN_DIR/tensorboard/ too (loss terms, guide terms and λ, learning rate, gradient norms, images/s; "
        "`pip install tensorboard`, then `tensorboard --logdir RUN_DIR`).",
    )
    on_nonfinite: Literal["stop", "skip"] = opt(
        "stop", "A step whose loss is NaN or infinite: stop the run, or skip it (no update of weights, optimizer, "
        "EMA teacher, centres or prototypes; logged) up to train.max_skipped_steps times.")
    max_skipped_steps: int = opt(10, "With on_nonfinite: skip, the run stops at the next non-finite step after this many.")


@dataclass
class GuideConfig:
    """One metadata column driving a guide head."""

    column: str = opt("", "Required. The metadata column that drives this guide (one guide per column).")
    role: Literal["informative", "spurious"] = opt(
        "informative", "informative: pulled into the representation; spurious: pushed out by gradient reversal."
    )
    head: Literal["classification", "regression", "prototypical"] = opt(
        "classification", "Guide head: classification, regression, or prototypical (an EMA prototype bank)."
    )
    weight: float = opt(
        0.1, "Weight of the guide loss (a spurious guide's is divided by guidance.spurious_weight_divisor)."
    )
    hidden_dims: list[int] = opt(
        [512, 256], "MLP widths of classification/regression heads (prototypical heads have no parameters)."
    )
    dropout: float = opt(0.0, "Dropout in the MLP of classification/regression heads, in [0, 1).")
    multilabel: bool | None = opt(
        None, "BCE over a multi-hot target; null: inferred from the column (cells like 'a|b')."
    )
    separator: str = opt("|", "Separator of the labels in a multi-label cell.")
    output_activation: Literal["none", "sigmoid", "tanh"] = opt("none", "Output activation of a regression head.")
    target_min: float | None = opt(
        None, "Lower end of the regression target range used for normalisation; null: the column's min in the table."
    )
    target_max: float | None = opt(
        None, "Upper end of the regression target range used for normalisation; null: the column's max in the table."
    )
    temperature: float = opt(0.07, "Prototype base temperature (initial per-class concentration).")
    momentum: float = opt(0.999, "EMA momentum of the prototype centroids and concentrations.")
    phi_min: float = opt(0.01, "Lower bound of a prototype's concentration.")
    grl_space: Literal["embedding", "prototype"] = opt(
        "embedding", "Where a classification/regression guide reads: the CLS embedding, or the DINO-head logits."
    )
    given: list[str] = opt(
        [],
        "Conditional suppression (spurious guides with a classification or regression head): the adversary also "
        "sees these columns.",
    )


@dataclass
class LambdaConfig:
    """The λ schedule: strength of gradient reversal and of the guides over the run."""

    schedule: Literal["sigmoid", "linear", "constant"] = opt(
        "sigmoid", "Gradient-reversal / guide strength over the run: DANN sigmoid, linear, or constant 1."
    )
    warmup_steps: int = opt(0, "λ = 0 for this many steps, then the schedule runs over the remaining steps.")
    start: Literal["step0", "unfreeze"] = opt(
        "step0",
        "step0: the ramp starts at warmup_steps (released code). unfreeze: at the later of warmup_steps and the end "
        "of the heads-only stage (stages.heads_only_steps, resolved), λ = 0 before: the FINO paper's ramp counted "
        "from the unfreeze point.",
    )


@dataclass
class GuidanceConfig:
    """Metadata guidance (FINO)."""

    # `lambda` is a Python keyword, so the field is `lambda_` and its YAML key is given explicitly.
    lambda_: LambdaConfig = section(LambdaConfig, key="lambda")
    balance: bool = opt(False, "Equalise the guides' gradient norms at the CLS token to their geometric mean.")
    balance_per_rank: bool = opt(
        False, "Reference behaviour under DDP: balance the norms of each rank's local batch; default: the global batch."
    )
    balance_momentum: float = opt(
        0.0,
        "0: balance each step's gradient norms (released code). > 0: balance an EMA of each guide's norm with this "
        "momentum (FINO paper: 0.99), started from the guide's first non-zero norm, saved in checkpoints, logged as "
        "guide/<column>/grad_norm_ema. Needs balance: true, not with balance_per_rank.",
    )
    spurious_weight_divisor: float = opt(
        10.0, "The reference divides a spurious guide's weight by 10 (w_eff = weight / 10); 1 disables the rule."
    )
    guides: list[GuideConfig] = opt([], "One entry per metadata column that guides the training.")


@dataclass
class StagesConfig:
    """Two-stage finetune (FINO): heads first, then the backbone."""

    heads_only_steps: int | None = opt(
        None,
        "Backbone LR 0 for this many steps (Adam moments stay warm); null: 10 % of the run for a pretrained "
        "backbone, 0 from scratch.",
    )
    ramp_steps: int | None = opt(
        None, "Linear backbone LR ramp after stage 1; null: 5 % of the run for a pretrained backbone, 0 otherwise."
    )
    train_patch_embed: bool = opt(True, "The patch embedding trains in stage 1 (reference recipes).")
    freeze_tokens: bool = opt(True, "The cls/mask/register tokens are frozen in stage 1.")
    unfreeze_last_n_blocks: int = opt(
        0, "> 0: only the last N blocks ever train (patch embedding, tokens and the final norm stay frozen)."
    )


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft) on the backbone's linear layers."""

    rank: int = opt(8, "Rank of the LoRA adapters.")
    alpha: float = opt(16.0, "LoRA scaling numerator (the update is scaled by alpha / rank).")
    dropout: float = opt(0.0, "Dropout on the adapter input, in [0, 1).")
    target_modules: list[str] = opt(
        ["qkv"],
        "Layers that get adapters: qkv (attention input projections, under whatever name the transformers version "
        "uses: query/key/value or q_proj/k_proj/v_proj), proj (attention output), mlp, or literal module-name "
        "suffixes.",
    )


@dataclass
class AdaptConfig:
    """Which backbone parameters train (DINO-MX adaptation modes)."""

    mode: Literal["full", "lora", "freeze"] = opt(
        "full",
        "full: every parameter trains; lora: only adapters (+ heads, + the final norm if train_norm); freeze: the "
        "patch embedding and the first freeze_blocks blocks are frozen (README, 'Adaptation modes').",
    )
    freeze_blocks: int = opt(0, "freeze and lora modes: the first N blocks get no gradients (lora: no adapters there).")
    train_norm: bool = opt(True, "lora mode: the final norm of the backbone trains as well.")
    lora: LoRAConfig = section(LoRAConfig)


@dataclass
class Config:
    """A whole run: one section per concern."""

    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    ssl: SSLConfig = section(SSLConfig)
    crops: CropsConfig = section(CropsConfig)
    optim: OptimConfig = section(OptimConfig)
    train: TrainConfig = section(TrainConfig)
    guidance: GuidanceConfig = section(GuidanceConfig)
    stages: StagesConfig = section(StagesConfig)
    adapt: AdaptConfig = section(AdaptConfig)
