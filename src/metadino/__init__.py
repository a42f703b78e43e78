"""metadino: metadata-guided self-supervised adaptation of vision foundation models."""

__version__ = "0.4.0"
