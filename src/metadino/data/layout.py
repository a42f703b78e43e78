"""The shape rules every reader shares: the channel axis of a 3-D array, and the pixel limit's refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metadino.data.reading import Tile
from metadino.errors import UserError

MAX_CHANNELS = 64  # a 3-D array's channel axis must be at most this long (see channels_first)


def channels_first(array: np.ndarray, path: Path | str) -> np.ndarray:
    """2-D -> ``[1, H, W]``; 3-D -> channel axis first.

    The channel axis of a 3-D array is the **first or last** axis whose length is ``<= 64`` **and strictly smaller
    than both other axes**: ``[4, 512, 512]`` is channel-first, ``[512, 512, 4]`` channel-last. Arrays where no
    axis qualifies (``[64, 64, 64]``, ``[100, 512, 512]``) are refused as ambiguous or volumetric.
    """
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise UserError(
            f"image {path} has {array.ndim}-D data of shape {tuple(array.shape)}; only 2-D images "
            f"[H, W] and 3-D [C, H, W] or [H, W, C] are supported — save one 2-D field of view per file"
        )
    a, b, c = array.shape
    if a <= MAX_CHANNELS and a < b and a < c:
        return array
    if c <= MAX_CHANNELS and c < a and c < b:
        return np.moveaxis(array, -1, 0)
    raise UserError(
        f"image {path} has shape {tuple(array.shape)} and its channel axis cannot be told apart: the "
        f"channel axis must be the first or last axis, at most {MAX_CHANNELS} long and shorter than "
        f"both image axes — save it as [C, H, W]"
    )


def too_large(path: Path | str, size: str, limit: int) -> UserError:
    """The refusal of an image above the pixel limit (``size`` says how large it is)."""
    return UserError(
        f"image {path} is larger than the pixel limit: {size}, more than {limit:,}; if the scene is genuine, "
        f"raise data.read.max_pixels, read a lower resolution level (data.read.level) or cut it into tiles"
    )


def check_fits_memory(path: Path | str, shape: tuple[int, ...], dtype: np.dtype | type) -> None:
    """Refuse a read whose decoded array and its float32 copy would not fit in the memory available now."""
    import psutil

    n = int(np.prod(shape, dtype=np.int64))
    need = n * (np.dtype(dtype).itemsize + 4)
    available = int(psutil.virtual_memory().available)
    if need > available:
        raise UserError(
            f"image {path} ({' x '.join(str(s) for s in shape)} {np.dtype(dtype).name}) needs about "
            f"{need / 2**30:.1f} GiB to decode but {available / 2**30:.1f} GiB of memory is free; read a lower "
            f"resolution level (data.read.level), or cut the scene into tiles (data.tiles)"
        )


PLANE_NOUNS = {"z": "Z planes", "t": "time points"}


def choose_plane(what: str, axis: str, length: int, chosen: int | None) -> int:
    """The index along a Z or T `axis` ("z" / "t") of `length` that ``data.read.<axis>`` (`chosen`) selects: a single
    plane needs no choice; several need one, in range. `what` names the file in messages ("TIFF a.tif")."""
    noun = PLANE_NOUNS[axis]
    if chosen is None:
        if length == 1:
            return 0
        raise UserError(f"{what} holds {length} {noun}; choose one with data.read.{axis}")
    if not 0 <= chosen < length:
        raise UserError(
            f"{what} holds {length} {noun} (0 to {length - 1}) but data.read.{axis} is {chosen}; choose one of them"
        )
    return chosen


def check_tile_inside(what: str, tile: Tile, level: int, origin: tuple[int, int], size: tuple[int, int],
                      base: tuple[int, int]) -> None:
    """Refuse a tile (``x``/``y`` in level-0 pixels, ``width``/``height`` at `level`) whose top-left corner at `level`
    is `origin` (y, x) and that leaves an image of `size` (height, width) at that level (`base`: at level 0).
    `what` names the file ("TIFF a.tif")."""
    (y0, x0), (height, width) = origin, size
    if (tile.width <= 0 or tile.height <= 0 or tile.x < 0 or tile.y < 0
            or x0 + tile.width > width or y0 + tile.height > height):
        raise UserError(
            f"tile at x={tile.x}, y={tile.y} (level-0 pixels) of {tile.width} x {tile.height} pixels at level "
            f"{level} extends outside {what}, which is {width} x {height} pixels at that level "
            f"({base[1]} x {base[0]} at level 0); fix the tile table or regenerate the tiles"
        )
