"""How images are prepared for a model: the ``preprocessing.json`` of every model directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from metadino.data.photometric.presets import IMAGENET_MEAN, IMAGENET_STD, Photometric, build_photometric
from metadino.errors import UserError
from metadino.models.backbone import Backbone

__all__ = ["Preprocessing"]

REQUIRED = ("image_size", "in_chans", "patch_size", "photometric")


@dataclass(frozen=True)
class Preprocessing:
    """Input size (resize + centre crop, pixels), channels, photometric preset and normalisation (None: the
    preset's), plus the patch size and embedding width of the model it belongs to."""

    image_size: int
    in_chans: int
    patch_size: int
    photometric: str
    mean: list[float] | None = None
    std: list[float] | None = None
    embed_dim: int | None = None  # informational; filled from the model when a hand-written file leaves it out
    channels: list[str] | None = None  # the channel names in input order (data.channels), when the run named them

    @classmethod
    def default_for(cls, backbone: Backbone) -> Preprocessing:
        """For a plain checkpoint without preprocessing.json: 224 px, ImageNet normalisation for RGB, none otherwise."""
        rgb = backbone.in_chans == 3
        return cls(image_size=224 - 224 % backbone.patch_size, in_chans=backbone.in_chans, patch_size=backbone.patch_size,
                   photometric="natural" if rgb else "none", mean=list(IMAGENET_MEAN) if rgb else None,
                   std=list(IMAGENET_STD) if rgb else None, embed_dim=backbone.embed_dim)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, source: str) -> Preprocessing:
        """From the JSON of `source`; a missing required key is a UserError naming the file and the key (mean, std
        and embed_dim may be absent, as in hand-written files)."""
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict):
            raise UserError(f"'{source}' must hold a JSON object with {', '.join(names)}.")
        missing = [n for n in REQUIRED if n not in data]
        if missing:
            raise UserError(f"'{source}' lacks {', '.join(missing)}; re-export the model with `metadino export`.")
        return cls(**{n: data[n] for n in names if n in data})

    def overridden(self, *, image_size: int | None = None, mean: list[float] | None = None,
                   std: list[float] | None = None) -> Preprocessing:
        """This preprocessing with another input size and/or normalisation (``--image-size``, ``--mean``/``--std``);
        ValueError when they do not fit the model."""
        size = self.image_size if image_size is None else image_size
        if size < self.patch_size or size % self.patch_size:
            raise ValueError(f"an input size of {size} px is not a positive multiple of the model's patch size "
                             f"{self.patch_size}")
        if (mean is None) != (std is None):
            raise ValueError("give both a mean and a std, one value per channel")
        if mean is not None and std is not None:
            if len(mean) != self.in_chans or len(std) != self.in_chans or min(std) <= 0:
                raise ValueError(f"mean and std need {self.in_chans} value(s) each (std > 0)")
            return replace(self, image_size=size, mean=list(mean), std=list(std))
        return replace(self, image_size=size)

    def describe(self) -> str:
        """One line for logs and reports: what the images go through."""
        norm = f"mean {self.mean}, std {self.std}" if self.mean is not None else "the preset's normalisation"
        names = f" ({', '.join(self.channels)})" if self.channels else ""
        return f"{self.image_size} px, {self.in_chans} channel(s){names}, photometric '{self.photometric}', {norm}"

    def transform(self) -> Photometric:
        """The evaluation-time photometric transform (normalisation only: presets augment only in training)."""
        return build_photometric(self.photometric, in_chans=self.in_chans, mean=self.mean, std=self.std)
