"""Decode one image — a file, a URL or bytes from the table — to a float32 ``[C, H, W]`` tensor.

Supported formats (the library of each; no decoder is written here):

- PNG, JPEG and JPEG 2000 (``.jp2``, ``.j2k``) through Pillow (which ships OpenJPEG), upright by their EXIF
  orientation tag (a phone or camera JPEG stored sideways is read as it is displayed).
- TIFF through tifffile + imagecodecs (:mod:`metadino.data.tiff`: compressed tiles, OME-TIFF series, pyramid
  levels, Z/T planes, whole-slide tiles).
- OME-Zarr (NGFF, a ``.zarr`` folder) through zarr (:mod:`metadino.data.ngff`).
- DICOM (``.dcm``, ``.dicom``) through pydicom (:mod:`metadino.data.dicom`: modality units, MONOCHROME1,
  frames, optional VOI window).
- ``.npy`` through numpy, memory-mapped: a single image, or one item (``index``) of a stack ``[N, ...]``.

A path may be an fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://`` …; the filesystem's package must be
installed, e.g. ``s3fs``): the file is read into memory and decoded like a local one (not OME-Zarr).

Value scaling (never clamped, so un-normalized float data survives intact):

- ``uint8`` -> ``/ 255``, ``uint16`` -> ``/ 65535``, other integer types -> ``/ iinfo(dtype).max``
  (signed types keep their sign);
- floating point -> kept as is (cast to float32);
- ``bool`` -> 0/1.

No-data pixels (NaN, and pixels equal to ``ReadOptions.nodata_value``) follow ``ReadOptions.nodata``: refused
(the default), filled with a value, or filled with the channel's mean. Channel layout of 3-D arrays follows
:func:`metadino.data.layout.channels_first`.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from metadino.data.layout import MAX_CHANNELS, channels_first, check_fits_memory, too_large
from metadino.data.reading import DEFAULT_READ, ReadOptions, Tile
from metadino.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "MAX_CHANNELS", "is_url", "load_image", "load_image_bytes", "read_image_size", "to_float"]

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".jp2", ".j2k", ".tif", ".tiff", ".dcm", ".dicom", ".npy", ".zarr",
)
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".jp2", ".j2k")
_TIFF_SUFFIXES = (".tif", ".tiff")
_DICOM_SUFFIXES = (".dcm", ".dicom")
_EXIF_ORIENTATION = 0x0112
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# File signatures, for bytes without a name (a plain bytes column)
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG", ".png"), (0, b"\xff\xd8\xff", ".jpg"), (0, b"II*\x00", ".tif"), (0, b"MM\x00*", ".tif"),
    (0, b"II+\x00", ".tif"), (0, b"MM\x00+", ".tif"), (0, b"\x93NUMPY", ".npy"), (128, b"DICM", ".dcm"),
    (0, b"\x00\x00\x00\x0cjP  ", ".jp2"), (0, b"\xffO\xffQ", ".j2k"),
)


def is_url(path: str | Path) -> bool:
    """A text with a scheme (``s3://…``, ``https://…``); ``file://`` counts as a URL too."""
    return bool(_URL.match(str(path)))


def load_image(
    path: str | Path, options: ReadOptions = DEFAULT_READ, *, index: int | None = None, tile: Tile | None = None
) -> torch.Tensor:
    """Decode one image to float32 ``[C, H, W]`` (formats and value rules in the module docstring).

    Args:
        path: a file with one of :data:`IMAGE_SUFFIXES` (case-insensitive), an OME-Zarr folder, or an fsspec URL.
        options: decoding choices shared by every row (:class:`~metadino.data.reading.ReadOptions`).
        index: the item of a stacked ``.npy`` ``[N, ...]`` or the frame of a multi-frame DICOM.
        tile: read only this rectangle (TIFF and OME-Zarr read only the tiles under it).

    Raises:
        UserError: missing, unreadable, truncated, unsupported or not a 2-D image with channels; always naming
            the file.
    """
    text = str(path)
    suffix = _suffix(text)
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(
            f"cannot read image {text}: suffix '{suffix or '(none)'}' is not supported; "
            f"convert it to one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if is_url(text):
        return load_image_bytes(_fetch(text, suffix), text, options, index=index, tile=tile)
    local = Path(text)
    if not (local.is_dir() if suffix == ".zarr" else local.is_file()):
        raise UserError(f"image file {local} does not exist; check the path (and the table's root folder)")
    return _decode(local, local, suffix, options, index, tile)


def load_image_bytes(
    data: bytes, name: str, options: ReadOptions = DEFAULT_READ, *, index: int | None = None,
    tile: Tile | None = None,
) -> torch.Tensor:
    """Decode an image held in memory (a bytes cell of a Parquet table, a fetched URL).

    ``name`` names it in messages, and its suffix picks the decoder; without a known suffix, the file signature
    does (PNG, JPEG, TIFF, JPEG 2000, DICOM, ``.npy``).
    """
    suffix = _suffix(name)
    if suffix not in IMAGE_SUFFIXES or suffix == ".zarr":
        suffix = next((s for at, magic, s in _MAGIC if data[at:at + len(magic)] == magic), "")
    if not suffix:
        raise UserError(
            f"cannot read image {name}: its bytes are not PNG, JPEG, JPEG 2000, TIFF, DICOM or .npy "
            f"(first bytes {data[:8]!r}); store encoded image files in the column"
        )
    return _decode(io.BytesIO(data), name, suffix, options, index, tile)


def _decode(source: Path | BinaryIO, name: str | Path, suffix: str, options: ReadOptions, index: int | None,
            tile: Tile | None) -> torch.Tensor:
    if index is not None and suffix not in (".npy", *_DICOM_SUFFIXES):
        raise UserError(f"image {name}: an item index (data.index_column) applies to .npy stacks and multi-frame "
                        f"DICOM files, not to {suffix} files")
    try:
        if suffix in _PIL_SUFFIXES:
            array = _crop(_read_pil(source, name, options), tile, name)
        elif suffix in _TIFF_SUFFIXES:
            from metadino.data.tiff import read_tiff

            array = read_tiff(source, options, tile)  # type: ignore[arg-type]  # tifffile takes file objects too
        elif suffix == ".zarr":
            from metadino.data.ngff import read_ngff

            array = read_ngff(Path(source), options, tile)  # type: ignore[arg-type]
        elif suffix in _DICOM_SUFFIXES:
            from metadino.data.dicom import load_dicom

            array = _crop(load_dicom(source, frame=index, voi_window=options.voi_window, name=name), tile, name)
        else:
            array = _read_npy(source, name, options, index, tile)
    except UserError:
        raise
    except Exception as err:  # decoders raise many types (OSError, ValueError, struct.error, ...)
        raise UserError(
            f"cannot decode image {name}: {type(err).__name__}: {err}; the file is corrupt, truncated "
            f"or not a {suffix[1:].upper()} image — re-export it or remove its row from the table"
        ) from err
    if array.size == 0:
        raise UserError(f"image {name} is empty (shape {tuple(array.shape)}); re-export it or remove its row")
    return to_float(array, name, options)


def _suffix(text: str) -> str:
    """The suffix of a path or URL (a URL's query and fragment ignored), lower case."""
    if is_url(text):
        text = text.split("?", 1)[0].split("#", 1)[0]
    return Path(text.rstrip("/")).suffix.lower()


def _fetch(url: str, suffix: str) -> bytes:
    if suffix == ".zarr":
        raise UserError(f"cannot read {url}: OME-Zarr is read from local folders only; copy it to local disk")
    try:
        import fsspec

        with fsspec.open(url, "rb") as handle:
            return bytes(handle.read())
    except ImportError as err:  # fsspec knows the scheme but its package (s3fs, gcsfs, aiohttp) is missing
        raise UserError(f"cannot read {url}: {err}; install the package for that filesystem") from err
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"image {url} does not exist or cannot be opened ({type(err).__name__}: {err})") from err
    except OSError as err:
        raise UserError(f"cannot read image {url}: {type(err).__name__}: {err}") from err


def _crop(array: np.ndarray, tile: Tile | None, name: str | Path) -> np.ndarray:
    """A tile of an image decoded whole (formats without tiles); level 0 only."""
    if tile is None:
        return array
    if tile.level not in (None, 0):
        raise UserError(f"image {name}: tile level {tile.level} asked, but the file has one resolution level")
    _, h, w = array.shape
    if tile.x < 0 or tile.y < 0 or tile.width < 1 or tile.height < 1 or tile.x + tile.width > w \
            or tile.y + tile.height > h:
        raise UserError(f"image {name}: tile x={tile.x}, y={tile.y}, {tile.width}x{tile.height} lies outside the "
                        f"image of width {w} and height {h}")
    return array[:, tile.y:tile.y + tile.height, tile.x:tile.x + tile.width]


def read_image_size(path: Path, options: ReadOptions = DEFAULT_READ) -> tuple[int, int] | None:
    """(H, W) of an image file from its header, with the layout rule of :func:`metadino.data.layout.channels_first`.

    Returns None when the layout is not a 2-D image (decoding reports that). Raises whatever the decoder
    raises for unreadable files.
    """
    suffix = path.suffix.lower()
    if suffix in _PIL_SUFFIXES:
        from PIL import Image

        with Image.open(path) as img:
            width, height = img.size
        return int(height), int(width)
    if suffix in _TIFF_SUFFIXES:
        from metadino.data.tiff import tiff_size

        return tiff_size(path, options)
    if suffix == ".zarr":
        from metadino.data.ngff import ngff_size

        return ngff_size(path, options)
    if suffix == ".npy":
        shape = tuple(int(s) for s in np.load(path, mmap_mode="r", allow_pickle=False).shape)
    else:
        return None
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        a, b, c = shape
        if a <= MAX_CHANNELS and a < b and a < c:
            return b, c
        if c <= MAX_CHANNELS and c < a and c < b:
            return a, b
    return None


# --------------------------------------------------------------------------------------------- reading


# --------------------------------------------------------------------------------------------- Pillow


def _read_pil(source: Path | BinaryIO, name: str | Path, options: ReadOptions) -> np.ndarray:
    """PNG/JPEG/JPEG 2000 -> ``[C, H, W]`` array with the file's integer dtype, upright by its EXIF orientation."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = options.max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; one limit here: above it, refuse.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode_pil(source, _suffix(str(name)))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))  # Pillow: "Image size (N pixels) exceeds limit ..."
        raise too_large(name, f"{int(found.group(1)):,} pixels" if found else str(err), options.max_pixels) from err
    except OSError as err:
        if re.search(r"(decoder|encoder) \S+ not available", str(err)):  # Pillow built without that codec
            raise UserError(
                f"image {name} needs a codec this Pillow lacks ({err}); install a Pillow wheel that bundles it "
                f"(`pip install -U pillow`; JPEG 2000 needs OpenJPEG)"
            ) from err
        raise


def _decode_pil(source: Path | BinaryIO, suffix: str) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(source) as opened:
        opened.load()  # force the full decode here so truncation is caught inside the caller's guard
        mode = opened.mode
        img: Image.Image = opened
        if opened.getexif().get(_EXIF_ORIENTATION, 1) != 1:  # only then: exif_transpose copies the image
            img = ImageOps.exif_transpose(opened)
        if mode == "P":
            img = img.convert("RGB")
        elif mode == "PA":
            img = img.convert("RGBA")
        elif mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "I;16L", "F"):
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...
        array = np.asarray(img)
    if mode == "I" and suffix == ".png":
        # Older Pillow opens 16-bit grayscale PNGs as 32-bit "I"; the data are still 16-bit.
        array = array.astype(np.uint16)
    if array.ndim == 2:
        return array[None]
    return np.moveaxis(array, -1, 0)


# ---------------------------------------------------------------------------------------------- numpy


def _read_npy(source: Path | BinaryIO, name: str | Path, options: ReadOptions, index: int | None,
              tile: Tile | None) -> np.ndarray:
    """A ``.npy`` image, or item `index` of a stack; memory-mapped, so one item of a large stack reads only it."""
    array = np.load(source, mmap_mode="r" if isinstance(source, Path) else None, allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise UserError(f"{name} does not hold a single numpy array; save one array per file with np.save")
    if index is not None:
        if array.ndim not in (3, 4):
            raise UserError(f"{name} has shape {tuple(array.shape)}; an item index (data.index_column) needs a "
                            f"stack [N, H, W] or [N, H, W, C] / [N, C, H, W]")
        if not 0 <= index < array.shape[0]:
            raise UserError(f"{name} holds {array.shape[0]} images but the row asks for item {index}; valid items "
                            f"are 0 to {array.shape[0] - 1}")
        array = array[index]
    elif array.ndim == 4:
        raise UserError(f"{name} holds a stack of {array.shape[0]} images (shape {tuple(array.shape)}); name each "
                        f"row's item with data.index_column")
    layout = channels_first(array, name)  # a view of the memory map: nothing is read yet
    _, h, w = layout.shape
    if tile is not None:
        return np.array(_crop(layout, tile, name))
    if h * w > options.max_pixels:
        raise too_large(name, f"{w} x {h} = {h * w:,} pixels", options.max_pixels)
    check_fits_memory(name, tuple(layout.shape), layout.dtype)
    return np.array(layout)


# ------------------------------------------------------------------------------------ values, no-data


def to_float(array: np.ndarray, name: str | Path, options: ReadOptions = DEFAULT_READ) -> torch.Tensor:
    """Scale by dtype (module docstring), apply the no-data policy, return a contiguous float32 tensor."""
    dtype = array.dtype
    nodata = _nodata_mask(array, options)
    if dtype == np.bool_:
        out = array.astype(np.float32)
    elif np.issubdtype(dtype, np.integer):
        # Division (not multiplication by 1/max) keeps the maximum exactly 1.0.
        out = array.astype(np.float32) / np.float32(np.iinfo(dtype).max)
    elif np.issubdtype(dtype, np.floating):
        out = array.astype(np.float32)
    else:
        raise UserError(f"image {name} has unsupported pixel type {dtype}; save integer or float pixels")
    if nodata is not None:
        out = _fill_nodata(out, nodata, name, options)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _nodata_mask(array: np.ndarray, options: ReadOptions) -> np.ndarray | None:
    """Where the raw pixels mean "no data" (NaN; and ``nodata_value``), or None when there are none."""
    mask = np.isnan(array) if np.issubdtype(array.dtype, np.floating) else None
    if options.nodata_value is not None:
        equal = array == np.asarray(options.nodata_value).astype(array.dtype) \
            if np.issubdtype(array.dtype, np.integer) and float(options.nodata_value).is_integer() \
            else array == options.nodata_value
        mask = equal if mask is None else mask | equal
    return mask if mask is not None and mask.any() else None


def _fill_nodata(out: np.ndarray, mask: np.ndarray, name: str | Path, options: ReadOptions) -> np.ndarray:
    if options.nodata == "error":
        what = "NaN" if options.nodata_value is None else f"NaN or {options.nodata_value:g}"
        channels = [int(c) for c in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))]
        raise UserError(
            f"image {name} has {int(mask.sum()):,} no-data pixels ({what}) in channel(s) {channels}; set "
            f"data.read.nodata to fill or mean (and data.read.fill_value), or remove its row"
        )
    out = out.copy() if not out.flags.writeable else out
    for c in range(out.shape[0]):
        hole = mask[c]
        if not hole.any():
            continue
        if options.nodata == "mean" and not hole.all():
            value = float(out[c][~hole].mean())
        else:
            value = options.fill_value
        out[c][hole] = value
    return out
