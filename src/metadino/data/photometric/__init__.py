"""Photometric augmentation: functional image ops (:mod:`.ops`) and the named presets (:mod:`.presets`)."""

from metadino.data.photometric.presets import PHOTOMETRIC_PRESETS, build_photometric

__all__ = ["PHOTOMETRIC_PRESETS", "build_photometric"]
