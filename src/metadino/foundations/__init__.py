"""Foundation models that ship with metadino (package data), addressed as ``metadino:<name>``.

Each lives in a folder of this package next to this file: ``config.json`` + ``model.safetensors`` (a built-in
ViT export, weights stored in float16 to stay small, loaded as float32), ``preprocessing.json`` and a model card
(``README.md`` for people, ``card.json`` for tests and tools). ``python -m metadino.foundations.build`` rebuilds
them; the card records the exact command.
"""

from __future__ import annotations

from pathlib import Path

from metadino.errors import UserError

PREFIX = "metadino:"
FOUNDATIONS: dict[str, str] = {
    "synthcell-vit-tiny": "6-block ViT (192 wide, patch 8, 4 channels) pretrained with DINOv2 on a synthetic "
                          "fluorescence-microscopy source domain (seed 1000: its own cell lines, antibodies, plates)",
}


def foundation_dir(spec: str) -> Path:
    """The package folder of ``metadino:<name>``; UserError naming the shipped ones otherwise."""
    name = spec.removeprefix(PREFIX)
    if name not in FOUNDATIONS:
        known = ", ".join(PREFIX + k for k in FOUNDATIONS)
        raise UserError(f"unknown metadino foundation {spec!r}; shipped: {known} (random-init presets are builtin:vit-*)")
    directory = Path(__file__).resolve().parent / name
    if not (directory / "model.safetensors").is_file():
        raise UserError(f"the weights of {spec!r} are missing from {directory}; rebuild them with "
                        f"`python -m metadino.foundations.build --install` or reinstall metadino")
    return directory
