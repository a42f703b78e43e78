"""How a file is decoded: the reading options every reader receives (built from the ``data.read`` config section
by :func:`metadino.data.reading.read_options_from`'s caller, the data factory; readers never see the config).

The options apply to every row of a table alike; what differs per row (which file, which frame of a stack,
which tile of a slide) is the row's :class:`~metadino.data.sources.ImageRef`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NoData = Literal["error", "fill", "mean"]
# Largest image (height x width) decoded at full resolution; Pillow's own default (~89 Mpx) is too small for
# satellite and slide scenes.
DEFAULT_MAX_PIXELS = 1_000_000_000


@dataclass(frozen=True)
class ReadOptions:
    """Decoding choices shared by every row.

    Attributes:
        series: TIFF series to read (an OME-TIFF image; a file with several series warns and reads this one).
        level: resolution level: 0 = full resolution; a TIFF pyramid's sub-resolution or an OME-Zarr multiscale
            dataset otherwise.
        z: Z plane of a file with a Z axis (OME-TIFF, OME-Zarr); None: a file with more than one plane is refused.
        t: time point of a file with a T axis; None: a file with more than one time point is refused.
        max_pixels: largest height x width read; a larger image (or one that would not fit in memory) is refused.
        nodata: what happens to no-data pixels (NaN, or pixels equal to ``nodata_value``): ``error`` refuses the
            image, ``fill`` writes ``fill_value``, ``mean`` writes the channel's mean over its valid pixels.
        nodata_value: a raw pixel value that means "no data" (e.g. 0 or -9999 in satellite products), compared
            before scaling; None: only NaN is no-data.
        fill_value: the value (after scaling) written by ``nodata: fill``, and by ``mean`` for a channel with no
            valid pixel at all.
        voi_window: apply a DICOM file's VOI LUT / window (centre, width) and scale the window to [0, 1]; off: the
            modality range is kept (see :mod:`metadino.data.dicom`).
    """

    series: int = 0
    level: int = 0
    z: int | None = None
    t: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    nodata: NoData = "error"
    nodata_value: float | None = None
    fill_value: float = 0.0
    voi_window: bool = False


DEFAULT_READ = ReadOptions()


@dataclass(frozen=True)
class Tile:
    """A rectangle of a large image (a whole-slide region row), read without decoding the rest.

    ``x``/``y`` are the top-left corner in **level-0 (full-resolution) pixels**, as OpenSlide's ``read_region``
    takes them; ``width``/``height`` are in pixels of the level read. ``level`` None: ``ReadOptions.level``.
    """

    x: int
    y: int
    width: int
    height: int
    level: int | None = None
