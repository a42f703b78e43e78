"""Read a TIFF (plain, OME-TIFF, pyramidal, whole-slide) with tifffile and imagecodecs.

Compressed tiles decode through imagecodecs: PackBits, LZW, Deflate/ZIP, ZSTD, JPEG, JPEG 2000, WebP, LERC and the
other codecs it provides. A codec that is not installed is reported as such (which codec, what to install), not as
a corrupt file.

What is read:

- the series ``ReadOptions.series`` (an OME-TIFF image, a whole-slide baseline, ...); a file with several series
  warns, naming the count and the series read;
- its resolution level ``ReadOptions.level`` (or ``Tile.level``): 0 is full resolution, then the pyramid's
  sub-resolutions (SubIFDs or reduced pages, as tifffile lists them in ``series.levels``);
- axes by tifffile's labels (``series.axes``): ``C`` and ``S`` (samples, e.g. RGB) are channels, ``Z``/``T`` are
  chosen by ``ReadOptions.z``/``t`` (a file with more than one plane and no choice is refused), length-1 axes are
  dropped. Unlabelled axes (``Q``, ``I``: plain multi-page or shaped files, whose Y/X labels tifffile guesses) fall
  back to :func:`metadino.data.layout.channels_first` on the 3-D array;
- a :class:`~metadino.data.reading.Tile` reads only its region, through tifffile's Zarr store, so only the tiles
  or strips under the region are decoded.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metadino.data.layout import channels_first, check_fits_memory, check_tile_inside, choose_plane, too_large
from metadino.data.reading import DEFAULT_READ, ReadOptions, Tile
from metadino.errors import UserError

# How tifffile words a codec it cannot decode (CompressionCodec / PredictorCodec KeyErrors, re-raised by
# TiffPage.decode as ValueError): "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package",
# "<COMPRESSION.X: n> not supported" / "not implemented", "n is not a known COMPRESSION".
_TIFF_CODEC_ERROR = re.compile(
    r"(COMPRESSION|PREDICTOR)\.?\w*.*(requires the 'imagecodecs' package|not supported|not implemented)"
    r"|is not a known (COMPRESSION|PREDICTOR)"
)
_CHANNEL_AXES = "CS"
_PLANE_AXES = ("Z", "T")


@dataclass(frozen=True)
class _Plan:
    """How a level's array becomes ``[C, H, W]``: what to index, and the roles of the axes that remain."""

    index: tuple[int | slice, ...]  # one entry per axis of the level; ints drop the axis
    kept: tuple[int, ...]  # axes (of the level) that remain after indexing
    height_axis: int  # of the level
    width_axis: int
    labelled: bool  # False: unlabelled axes remain and channels_first decides the layout

    @property
    def selects(self) -> bool:
        """True when the index drops an axis (a Z/T plane), so that a full decode would decode unread planes."""
        return any(isinstance(i, int) for i in self.index)


def read_tiff(path: Path, options: ReadOptions = DEFAULT_READ, tile: Tile | None = None) -> np.ndarray:
    """The chosen series, level and plane as ``[C, H, W]`` in the file's dtype (module docstring for the rules).

    Args:
        path: the TIFF file.
        options: series, level, z, t and the pixel limit.
        tile: read only this region (x/y in level-0 pixels, width/height in pixels of the level read).

    Raises:
        UserError: no image, a series/level/plane out of range or not chosen, a tile outside the image, a codec
            that is not installed, above the pixel limit or the free memory, or a layout that is not an image.
    """
    import tifffile

    level_index = options.level if tile is None or tile.level is None else tile.level
    with tifffile.TiffFile(path) as tif:
        series = _series(tif, path, options.series, warn=True)
        level = _level(series, path, level_index)
        axes, shape = str(level.axes), tuple(int(s) for s in level.shape)
        plan = _plan(path, axes, shape, options)
        height, width = shape[plan.height_axis], shape[plan.width_axis]
        index = list(plan.index)
        if tile is not None:
            base = tuple(int(s) for s in series.levels[0].shape)
            y0, x0 = _tile_origin(path, tile, level_index, (height, width),
                                  (base[plan.height_axis], base[plan.width_axis]))
            index[plan.height_axis] = slice(y0, y0 + tile.height)
            index[plan.width_axis] = slice(x0, x0 + tile.width)
            height, width = tile.height, tile.width
        pixels = height * width
        if pixels > options.max_pixels:
            raise too_large(path, f"{width} x {height} = {pixels:,} pixels", options.max_pixels)
        page = level.keyframe
        try:
            if tile is None and not plan.selects:
                check_fits_memory(path, shape, level.dtype)
                array = np.asarray(level.asarray())
            else:
                selected = tuple(
                    len(range(*i.indices(n))) for i, n in zip(index, shape, strict=True) if isinstance(i, slice)
                )
                check_fits_memory(path, selected, level.dtype)
                array = _read_region(series, level_index, shape, tuple(index))
        except (ValueError, KeyError, NotImplementedError) as err:
            if _TIFF_CODEC_ERROR.search(str(err)):
                raise _codec_error(path, page, err) from err
            raise
    return _to_chw(array, plan, path)


def tiff_size(path: Path, options: ReadOptions = DEFAULT_READ) -> tuple[int, int]:
    """(height, width) of the chosen series and level, from the TIFF tags alone (no pixel is decoded).

    For a file whose axes tifffile cannot label (``Q``/``I``), height and width follow the same layout rule as
    :func:`read_tiff`. Raises :class:`UserError` for a series or level out of range, or a layout that is not an
    image (a Z/T axis without a choice is not checked here: the size does not depend on the plane).
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = _series(tif, path, options.series, warn=False)
        level = _level(series, path, options.level)
        shape = tuple(int(s) for s in level.shape)
        # Any in-range plane gives the same size: pick 0 so that an unchosen Z/T is not refused here.
        probe = ReadOptions(series=options.series, level=options.level, z=0, t=0)
        plan = _plan(path, str(level.axes), shape, probe)
        return shape[plan.height_axis], shape[plan.width_axis]


def _series(tif: Any, path: Path, number: int, *, warn: bool) -> Any:
    """Series ``number`` of the file; warn (when asked) that the file holds more than one."""
    series = tif.series
    if not series:
        raise UserError(f"TIFF {path} holds no image; re-export it or remove its row from the table")
    if not 0 <= number < len(series):
        raise UserError(
            f"TIFF {path} holds {len(series)} image series (0 to {len(series) - 1}) but data.read.series is "
            f"{number}; choose one of them"
        )
    if warn and len(series) > 1:
        chosen = series[number]
        # The series-0 wording is matched by tests and users' filters: keep it.
        which = "reading only the first" if number == 0 else f"reading only series {number}"
        warnings.warn(
            f"TIFF {path} holds {len(series)} image series; {which} "
            f"(shape {tuple(chosen.shape)}) — save one image per file to silence this",
            stacklevel=4,
        )
    return series[number]


def _level(series: Any, path: Path, number: int) -> Any:
    levels = series.levels
    if not 0 <= number < len(levels):
        raise UserError(
            f"TIFF {path} has {len(levels)} resolution level{'s' if len(levels) != 1 else ''} "
            f"(0 to {len(levels) - 1}) but level {number} was asked for; set data.read.level (or the tile's "
            f"level) to one of them"
        )
    return levels[number]


def _plan(path: Path, axes: str, shape: tuple[int, ...], options: ReadOptions) -> _Plan:
    """Which axes to index (Z/T planes, length-1 axes) and which are channels, height and width."""
    index: list[int | slice] = []
    unlabelled = False
    for axis, length in zip(axes, shape, strict=True):
        if axis in _PLANE_AXES:
            index.append(choose_plane(f"TIFF {path}", axis.lower(), length, getattr(options, axis.lower())))
        elif axis in _CHANNEL_AXES or axis in "YX":
            index.append(slice(None))
        elif length == 1:
            index.append(0)
        else:
            index.append(slice(None))
            unlabelled = True
    kept = tuple(i for i, entry in enumerate(index) if isinstance(entry, slice))
    kept_axes = "".join(axes[i] for i in kept)
    if not unlabelled and kept_axes.count("Y") == 1 and kept_axes.count("X") == 1:
        return _Plan(tuple(index), kept, axes.index("Y"), axes.index("X"), labelled=True)
    # tifffile's guess (e.g. "QYX" for an [H, W, C] page stack): the shared layout rule decides, checked on a
    # zero-byte stand-in so that a refusal comes before any decode.
    kept_shape = tuple(shape[i] for i in kept)
    standin = np.broadcast_to(np.zeros((), np.uint8), kept_shape)
    chw = channels_first(standin, path).shape
    if len(kept) == 2:
        height_axis, width_axis = kept
    elif chw == kept_shape:  # channel-first
        height_axis, width_axis = kept[1], kept[2]
    else:  # channel-last
        height_axis, width_axis = kept[0], kept[1]
    return _Plan(tuple(index), kept, height_axis, width_axis, labelled=False)


def _tile_origin(
    path: Path, tile: Tile, level: int, size: tuple[int, int], base: tuple[int, int]
) -> tuple[int, int]:
    """The tile's top-left corner in the level's pixels (y, x); refuse a tile that leaves the image."""
    height, width = size
    # Level-0 -> level pixels by the level's downsample (level-0 size / level size), rounded down as OpenSlide does.
    y0, x0 = tile.y * height // base[0], tile.x * width // base[1]
    check_tile_inside(f"TIFF {path}", tile, level, (y0, x0), size, base)
    return y0, x0


def _read_region(series: Any, level: int, shape: tuple[int, ...], index: tuple[int | slice, ...]) -> np.ndarray:
    """``level[index]`` through tifffile's Zarr store: only the chunks (tiles/strips) under the index decode."""
    import zarr

    store = series.aszarr(level=level)
    try:
        array = zarr.open_array(store, mode="r")
        if tuple(array.shape) != shape:  # the store must describe the same axes as series.levels
            raise RuntimeError(f"tifffile's Zarr store has shape {array.shape}, its series {shape}")
        return np.asarray(array[index])
    finally:
        store.close()


def _to_chw(array: np.ndarray, plan: _Plan, path: Path) -> np.ndarray:
    """The indexed array (axes ``plan.kept``) as ``[C, H, W]``: channel axes first, merged, then H and W."""
    if not plan.labelled:
        return channels_first(array, path)
    kept: Sequence[int] = plan.kept
    order = [k for k in kept if k not in (plan.height_axis, plan.width_axis)]
    order += [plan.height_axis, plan.width_axis]
    array = np.transpose(array, [kept.index(k) for k in order])
    height, width = array.shape[-2:]
    # C and S together (an RGB image per OME channel): one channel axis, C-major.
    return array.reshape(-1, height, width)


def _codec_error(path: Path, page: object, err: Exception) -> UserError:
    compression = getattr(getattr(page, "compression", None), "name", None) or "its compression"
    return UserError(
        f"TIFF {path} uses the {compression} codec, which the installed tifffile/imagecodecs cannot decode "
        f"({err}); install or upgrade the codecs with `pip install -U imagecodecs`, or re-save the file "
        f"uncompressed or with LZW/Deflate/ZSTD"
    )
