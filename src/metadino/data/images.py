"""Decode one image file to a float32 ``[C, H, W]`` tensor.

Supported files: PNG/JPEG (Pillow), TIFF (tifffile) and ``.npy`` (numpy).

Value scaling (never clamped, so un-normalized float data survives intact):

- ``uint8`` -> ``/ 255``, ``uint16`` -> ``/ 65535``, other integer types -> ``/ iinfo(dtype).max``
  (signed types keep their sign);
- floating point -> kept as is (cast to float32);
- ``bool`` -> 0/1.

Channel layout of 3-D arrays (TIFF and ``.npy``): the channel axis is the **first or last** axis whose
length is ``<= 64`` **and strictly smaller than both other axes**. So ``[4, 512, 512]`` is channel-first
and ``[512, 512, 4]`` channel-last. Arrays where no axis qualifies (``[64, 64, 64]``, ``[3, 3, 3]``,
``[100, 512, 512]``) are rejected as ambiguous or volumetric. 2-D arrays are one channel. Pillow
images are always channel-last, and turned upright by their EXIF orientation tag (a phone or camera JPEG stored
sideways is read as it is displayed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metadino.errors import UserError

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")
MAX_CHANNELS = 64  # a 3-D array's channel axis must be at most this long (see the module docstring)

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
_TIFF_SUFFIXES = (".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112


def load_image(path: str | Path) -> torch.Tensor:
    """Decode one image to float32 ``[C, H, W]`` (scaling and layout rules in the module docstring).

    Args:
        path: image file with one of :data:`IMAGE_SUFFIXES` (case-insensitive).

    Returns:
        float32 tensor ``[C, H, W]``.

    Raises:
        UserError: the file is missing, truncated, not an image, has an unsupported suffix, or holds
            data that is not a 2-D image with channels (e.g. 4-D stacks).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserError(
            f"cannot read image {path}: suffix '{path.suffix}' is not supported; "
            f"convert it to one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if not path.is_file():
        raise UserError(f"image file {path} does not exist; check the path (and the table's root folder)")
    try:
        if suffix in _PIL_SUFFIXES:
            array = _read_pil(path)
        elif suffix in _TIFF_SUFFIXES:
            array = _channels_first(_read_tiff(path), path)
        else:
            array = _channels_first(_read_npy(path), path)
    except UserError:
        raise
    except Exception as err:  # decoders raise many types (OSError, ValueError, struct.error, ...)
        raise UserError(
            f"cannot decode image {path}: {type(err).__name__}: {err}; the file is corrupt, truncated "
            f"or not a {suffix[1:].upper()} image — re-export it or remove its row from the table"
        ) from err
    if array.size == 0:
        raise UserError(f"image {path} is empty (shape {tuple(array.shape)}); re-export it or remove its row")
    return _to_float(array, path)


def _read_pil(path: Path) -> np.ndarray:
    """PNG/JPEG -> ``[C, H, W]`` array with the file's integer dtype, upright by its EXIF orientation."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
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
    if mode == "I" and path.suffix.lower() == ".png":
        # Older Pillow opens 16-bit grayscale PNGs as 32-bit "I"; the data are still 16-bit.
        array = array.astype(np.uint16)
    if array.ndim == 2:
        return array[None]
    return np.moveaxis(array, -1, 0)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return np.asarray(tifffile.imread(path))


def _read_npy(path: Path) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise UserError(f"{path} does not hold a single numpy array; save one array per file with np.save")
    return array


def _channels_first(array: np.ndarray, path: Path) -> np.ndarray:
    """Apply the module's layout rule: 2-D -> ``[1, H, W]``; 3-D -> channel axis first."""
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


def _to_float(array: np.ndarray, path: Path) -> torch.Tensor:
    """Scale by dtype (module docstring) and convert to a contiguous float32 tensor."""
    dtype = array.dtype
    if dtype == np.bool_:
        out = array.astype(np.float32)
    elif np.issubdtype(dtype, np.integer):
        # Division (not multiplication by 1/max) keeps the maximum exactly 1.0.
        out = array.astype(np.float32) / np.float32(np.iinfo(dtype).max)
    elif np.issubdtype(dtype, np.floating):
        out = array.astype(np.float32)
    else:
        raise UserError(f"image {path} has unsupported pixel type {dtype}; save integer or float pixels")
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
