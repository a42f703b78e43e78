"""Read an OME-Zarr (OME-NGFF v0.4 and v0.5) image with zarr.

An OME-Zarr image is a directory (``.zarr`` / ``.ome.zarr``) holding a Zarr group whose attributes describe a
multiscale pyramid: ``multiscales`` in ``.zattrs`` (v0.4, Zarr format 2) or ``attributes["ome"]["multiscales"]`` in
``zarr.json`` (v0.5, Zarr format 3). What is read:

- ``multiscales[0]``, its dataset ``ReadOptions.level`` (or ``Tile.level``): 0 is full resolution;
- axes by name (``t``, ``c``, ``z``, ``y``, ``x``; else by type ``time``/``channel``): ``c`` is the channel axis
  (none: one channel), ``z``/``t`` are chosen by ``ReadOptions.z``/``t`` (more than one plane and no choice is
  refused), other length-1 axes are dropped;
- a :class:`~metadino.data.reading.Tile` reads only its region (x/y in level-0 pixels, converted by the levels'
  ``scale`` transforms, or their shapes' ratio): only the chunks under it are decoded;
- a bioformats2raw layout (the images in subgroups ``0/``, ``1/``, ... of the top group) reads image
  ``ReadOptions.series``; an HCS plate or well group is refused, naming one of its field images to point at.

Arrays come back ``[C, H, W]`` in the store's dtype.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metadino.data.layout import PLANE_NOUNS, check_fits_memory, check_tile_inside, choose_plane, too_large
from metadino.data.reading import DEFAULT_READ, ReadOptions, Tile
from metadino.errors import UserError

_AXIS_TYPES = {"time": "t", "channel": "c"}


@dataclass(frozen=True)
class _Image:
    """One multiscale image: its group, where it is (for messages) and its OME metadata."""

    group: Any  # zarr.Group
    where: str
    ome: dict[str, Any]  # the OME attributes (v0.4: the group's attributes; v0.5: their "ome" entry)

    @property
    def multiscale(self) -> dict[str, Any]:
        multiscales = self.ome.get("multiscales")
        if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
            raise UserError(f"OME-Zarr {self.where} has an empty or malformed 'multiscales' entry; re-export it")
        return multiscales[0]

    @property
    def datasets(self) -> list[dict[str, Any]]:
        datasets = self.multiscale.get("datasets")
        if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) for d in datasets):
            raise UserError(f"OME-Zarr {self.where} lists no multiscale datasets; re-export it")
        return datasets

    def array(self, level: int) -> Any:
        """The zarr array of resolution level ``level``."""
        datasets = self.datasets
        if not 0 <= level < len(datasets):
            raise UserError(
                f"OME-Zarr {self.where} has {len(datasets)} resolution level{'s' if len(datasets) != 1 else ''} "
                f"(0 to {len(datasets) - 1}) but level {level} was asked for; set data.read.level (or the tile's "
                f"level) to one of them"
            )
        import zarr

        name = str(datasets[level].get("path", ""))
        found = self.group.get(name) if name else None
        if not isinstance(found, zarr.Array):
            raise UserError(f"OME-Zarr {self.where} lists level {level} at '{name}' but holds no array there; "
                            f"re-export it")
        return found

    def axes(self, ndim: int) -> str:
        """The axes as one letter each (``t``, ``c``, ``z``, ``y``, ``x``, ``?`` for any other)."""
        axes = self.multiscale.get("axes")
        if axes is None and ndim == 5:  # v0.1/v0.2 had no axes: always TCZYX
            return "tczyx"
        if not isinstance(axes, list) or len(axes) != ndim:
            raise UserError(
                f"OME-Zarr {self.where} describes its axes as {axes!r} for {ndim}-D data; re-export it with one "
                f"axis entry (name t, c, z, y or x) per dimension"
            )
        letters = "".join(_axis_letter(axis) for axis in axes)
        if letters.count("y") != 1 or letters.count("x") != 1 or any(letters.count(a) > 1 for a in "tcz"):
            raise UserError(
                f"OME-Zarr {self.where} has axes {_axis_names(axes)} that cannot be mapped to channels, height and "
                f"width: it needs one 'y' and one 'x' axis and at most one each of 'c', 'z' and 't'"
            )
        return letters

    def scale(self, level: int) -> list[float] | None:
        """The level's ``scale`` coordinate transformation, if it has one."""
        for transform in self.datasets[level].get("coordinateTransformations") or []:
            if isinstance(transform, dict) and transform.get("type") == "scale":
                scale = transform.get("scale")
                if isinstance(scale, list) and all(isinstance(s, int | float) and s > 0 for s in scale):
                    return [float(s) for s in scale]
        return None


def read_ngff(path: Path, options: ReadOptions = DEFAULT_READ, tile: Tile | None = None) -> np.ndarray:
    """The chosen level and plane (or tile) of an OME-Zarr image as ``[C, H, W]`` in the store's dtype.

    Args:
        path: the OME-Zarr directory (the image group, or a bioformats2raw top group).
        options: series (bioformats2raw image), level, z, t and the pixel limit.
        tile: read only this region (x/y in level-0 pixels, width/height in pixels of the level read).

    Raises:
        UserError: not an OME-Zarr image, a plate/well group, a level/plane/series out of range or not chosen,
            axes that do not map to ``[C, H, W]``, a tile outside the image, above the pixel limit or free memory.
    """
    image = _open(path, options.series, warn=True)
    level = options.level if tile is None or tile.level is None else tile.level
    array = image.array(level)
    shape = tuple(int(s) for s in array.shape)
    axes = image.axes(len(shape))
    index: list[int | slice] = []
    for axis, length in zip(axes, shape, strict=True):
        if axis in PLANE_NOUNS:
            index.append(choose_plane(f"OME-Zarr {image.where}", axis, length, getattr(options, axis)))
        elif axis in "cyx":
            index.append(slice(None))
        elif length == 1:
            index.append(0)
        else:
            raise UserError(
                f"OME-Zarr {image.where} has an axis other than t, c, z, y, x of length {length} (axes "
                f"{_axis_names(image.multiscale.get('axes'))}); re-export it with that axis as c, z or t"
            )
    ya, xa = axes.index("y"), axes.index("x")
    height, width = shape[ya], shape[xa]
    if tile is not None:
        y0, x0 = _tile_origin(image, tile, level, axes, shape)
        index[ya], index[xa] = slice(y0, y0 + tile.height), slice(x0, x0 + tile.width)
        height, width = tile.height, tile.width
    if height * width > options.max_pixels:
        raise too_large(image.where, f"{width} x {height} = {height * width:,} pixels", options.max_pixels)
    selected = tuple(len(range(*i.indices(n))) for i, n in zip(index, shape, strict=True) if isinstance(i, slice))
    check_fits_memory(image.where, selected, array.dtype)
    data = np.asarray(array[tuple(index)])  # zarr decodes only the chunks under the index
    kept = "".join(a for a, i in zip(axes, index, strict=True) if isinstance(i, slice))
    data = np.transpose(data, [kept.index(a) for a in "cyx" if a in kept])
    return data if "c" in kept else data[None]


def ngff_size(path: Path, options: ReadOptions = DEFAULT_READ) -> tuple[int, int]:
    """(height, width) of the chosen image and level, from the metadata alone (no chunk is read)."""
    image = _open(path, options.series, warn=False)
    array = image.array(options.level)
    axes = image.axes(array.ndim)
    return int(array.shape[axes.index("y")]), int(array.shape[axes.index("x")])


def ngff_channel_names(path: Path) -> list[str] | None:
    """The channel labels (``omero.channels[].label``) of the image (series 0), or None when it names none.

    None also when a label is missing or their number differs from the channel axis's length.
    """
    image = _open(path, 0, warn=False)
    omero = image.ome.get("omero")
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(channels, list) or not channels:
        return None
    labels = [c.get("label") if isinstance(c, dict) else None for c in channels]
    if not all(isinstance(label, str) and label for label in labels):
        return None
    array = image.array(0)
    axes = image.axes(array.ndim)
    count = int(array.shape[axes.index("c")]) if "c" in axes else 1
    return [str(label) for label in labels] if len(labels) == count else None


def _open(path: Path | str, series: int, *, warn: bool) -> _Image:
    """The multiscale image at ``path`` (or in its bioformats2raw subgroup ``series``)."""
    import zarr

    path = Path(path)
    if not path.is_dir():
        raise UserError(
            f"OME-Zarr {path} {'is not a directory' if path.exists() else 'does not exist'}; an OME-Zarr image is "
            f"a .zarr directory — check the path (and the table's root folder)"
        )
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises GroupNotFoundError, JSON and metadata errors alike
        raise UserError(
            f"{path} is not a Zarr group ({type(err).__name__}: {err}); an OME-Zarr image is a directory with "
            f".zgroup/.zattrs (v0.4) or zarr.json (v0.5) — convert the image with bioformats2raw or ome-zarr-py"
        ) from err
    ome = _ome(group)
    if "multiscales" in ome:
        if series != 0:
            raise UserError(f"OME-Zarr {path} holds a single image but data.read.series is {series}; set it to 0")
        return _Image(group, str(path), ome)
    if "plate" in ome:
        raise UserError(
            f"OME-Zarr {path} is an HCS plate, not an image; point the table at one field image in it, such as "
            f"{path / _plate_field(group, ome)}"
        )
    if "well" in ome:
        images = ome["well"].get("images") if isinstance(ome["well"], dict) else None
        first = images[0].get("path", "0") if isinstance(images, list) and images and isinstance(images[0], dict) \
            else "0"
        raise UserError(
            f"OME-Zarr {path} is an HCS well, not an image; point the table at one of its field images, such as "
            f"{path / str(first)}"
        )
    # bioformats2raw: images in numbered subgroups 0/, 1/, ... (and OME/ with the OME-XML)
    numbered = sorted(int(k) for k in group.group_keys() if k.isdigit())
    if "bioformats2raw.layout" in ome or (numbered and numbered[0] == 0 and "multiscales" in _ome(group["0"])):
        count = len(numbered)
        if series not in numbered:
            raise UserError(
                f"OME-Zarr {path} (bioformats2raw layout) holds {count} image{'s' if count != 1 else ''} "
                f"(subgroups {', '.join(map(str, numbered[:5]))}{', ...' if count > 5 else ''}) but "
                f"data.read.series is {series}; choose one of them"
            )
        if warn and count > 1:
            which = "reading only the first" if series == 0 else f"reading only series {series}"
            warnings.warn(
                f"OME-Zarr {path} holds {count} images (bioformats2raw layout); {which} — point the table at "
                f"one image subgroup to silence this",
                stacklevel=4,
            )
        sub = group[str(series)]
        sub_ome = _ome(sub) if isinstance(sub, zarr.Group) else {}
        if "multiscales" not in sub_ome:
            raise UserError(f"OME-Zarr {path / str(series)} has no 'multiscales' metadata; re-export it")
        return _Image(sub, str(path / str(series)), sub_ome)
    raise UserError(
        f"{path} is a Zarr group but not an OME-Zarr image: its attributes hold no 'multiscales' (nor a plate, "
        f"well or bioformats2raw layout); convert the image with bioformats2raw or ome-zarr-py"
    )


def _ome(group: Any) -> dict[str, Any]:
    """The OME attributes: v0.5 nests them under "ome", v0.4 keeps them at the top."""
    attrs = dict(group.attrs)
    nested = attrs.get("ome")
    return nested if isinstance(nested, dict) else attrs


def _plate_field(group: Any, ome: dict[str, Any]) -> str:
    """The path of the plate's first field image, e.g. ``A/1/0`` (a placeholder when the plate lists none)."""
    plate = ome["plate"] if isinstance(ome["plate"], dict) else {}
    wells = plate.get("wells")
    if isinstance(wells, list) and wells and isinstance(wells[0], dict) and "path" in wells[0]:
        return f"{wells[0]['path']}/0"
    return "<row>/<column>/<field>"


def _axis_letter(axis: Any) -> str:
    """One axis entry (v0.4+: a dict with name and type; v0.3: a name) as t, c, z, y, x or ``?``."""
    if isinstance(axis, str):
        name, kind = axis.lower(), ""
    elif isinstance(axis, dict):
        name, kind = str(axis.get("name", "")).lower(), str(axis.get("type", "")).lower()
    else:
        return "?"
    if name in ("t", "c", "z", "y", "x"):
        return name
    return _AXIS_TYPES.get(kind, "?")


def _axis_names(axes: Any) -> str:
    if not isinstance(axes, list):
        return repr(axes)
    return "[" + ", ".join(str(a.get("name") if isinstance(a, dict) else a) for a in axes) + "]"


def _tile_origin(image: _Image, tile: Tile, level: int, axes: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """The tile's top-left corner in the level's pixels (y, x); refuse a tile that leaves the image."""
    ya, xa = axes.index("y"), axes.index("x")
    height, width = shape[ya], shape[xa]
    base = image.array(0).shape
    base_scale, scale = image.scale(0), image.scale(level)
    if base_scale is not None and scale is not None and len(base_scale) == len(scale) == len(axes):
        # level-0 pixel -> level pixel: divide by the downsample (level scale / level-0 scale); the epsilon keeps
        # 0.5 / 0.25 ratios written as decimals from rounding 1 pixel down
        y0 = math.floor(tile.y * base_scale[ya] / scale[ya] + 1e-9)
        x0 = math.floor(tile.x * base_scale[xa] / scale[xa] + 1e-9)
    else:
        y0, x0 = tile.y * height // int(base[ya]), tile.x * width // int(base[xa])
    check_tile_inside(f"OME-Zarr {image.where}", tile, level, (y0, x0), (height, width),
                      (int(base[ya]), int(base[xa])))
    return y0, x0
