"""Decode one image file to a float32 ``[C, H, W]`` tensor.

Supported files:

- PNG, JPEG and JPEG 2000 (``.jp2``, ``.j2k``) through Pillow (Pillow ships OpenJPEG). Pillow's
  decompression-bomb limit is :data:`MAX_IMAGE_PIXELS` (set on ``PIL.Image``); a larger image is refused with
  a message naming its size and how to raise the limit.
- TIFF through tifffile, with ``imagecodecs`` for the compressed ones: uncompressed, PackBits, LZW, Deflate/ZIP,
  ZSTD, JPEG, JPEG 2000, WebP, LERC and the other codecs imagecodecs provides. A codec that is not installed
  is reported as such (which codec, what to install), not as a corrupt file. Only the **first series** is read
  (``series[0]``, its full-resolution level); a file with several series (multi-series OME-TIFF, pages of
  different shapes) is read with a warning naming the count. A TIFF page larger than :data:`MAX_IMAGE_PIXELS`
  is refused the same way as with Pillow.
- DICOM (``.dcm``, ``.dicom``) through pydicom: see :mod:`metadino.data.dicom` for its value rules (modality
  units such as CT Hounsfield units kept as floats, MONOCHROME1 inverted, multi-frame files refused).
- ``.npy`` through numpy.

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

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from metadino.errors import UserError

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".jp2", ".j2k", ".tif", ".tiff", ".dcm", ".dicom", ".npy",
)
MAX_CHANNELS = 64  # a 3-D array's channel axis must be at most this long (see the module docstring)
# Largest image (height x width) decoded; Pillow's own default (~89 Mpx) is too small for satellite and
# slide scenes. Read at each decode, so assigning a new value to this module attribute takes effect.
MAX_IMAGE_PIXELS = 1_000_000_000

_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".jp2", ".j2k")
_TIFF_SUFFIXES = (".tif", ".tiff")
_DICOM_SUFFIXES = (".dcm", ".dicom")
# How tifffile words a codec it cannot decode (CompressionCodec / PredictorCodec KeyErrors, re-raised by
# TiffPage.decode as ValueError): "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package",
# "<COMPRESSION.X: n> not supported" / "not implemented", "n is not a known COMPRESSION".
_TIFF_CODEC_ERROR = re.compile(
    r"(COMPRESSION|PREDICTOR)\.?\w*.*(requires the 'imagecodecs' package|not supported|not implemented)"
    r"|is not a known (COMPRESSION|PREDICTOR)"
)
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
        elif suffix in _DICOM_SUFFIXES:
            from metadino.data.dicom import load_dicom

            array = load_dicom(path)
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
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its limit; one limit here: above it, refuse.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode_pil(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))  # Pillow: "Image size (N pixels) exceeds limit ..."
        raise _too_large(path, f"{int(found.group(1)):,} pixels" if found else str(err)) from err
    except OSError as err:
        if re.search(r"(decoder|encoder) \S+ not available", str(err)):  # Pillow built without that codec
            raise UserError(
                f"image {path} needs a codec this Pillow lacks ({err}); install a Pillow wheel that bundles it "
                f"(`pip install -U pillow`; JPEG 2000 needs OpenJPEG)"
            ) from err
        raise


def _too_large(path: Path, size: str) -> UserError:
    return UserError(
        f"image {path} is larger than the pixel limit: {size}, more than {MAX_IMAGE_PIXELS:,}; if the scene "
        f"is genuine, raise metadino.data.images.MAX_IMAGE_PIXELS before loading, or cut it into tiles"
    )


def _decode_pil(path: Path) -> np.ndarray:
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
    """Series 0 at full resolution; warn when there are more series; codec errors named as such."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series
        if not series:
            raise UserError(f"TIFF {path} holds no image; re-export it or remove its row from the table")
        if len(series) > 1:
            warnings.warn(
                f"TIFF {path} holds {len(series)} image series; reading only the first "
                f"(shape {tuple(series[0].shape)}) — save one image per file to silence this",
                stacklevel=3,
            )
        page = series[0].keyframe
        pixels = int(page.imagelength) * int(page.imagewidth)
        if pixels > MAX_IMAGE_PIXELS:
            raise _too_large(path, f"{page.imagewidth} x {page.imagelength} = {pixels:,} pixels")
        try:
            return np.asarray(series[0].asarray())
        except (ValueError, KeyError, NotImplementedError) as err:
            if _TIFF_CODEC_ERROR.search(str(err)):
                raise _codec_error(path, page, err) from err
            raise


def _codec_error(path: Path, page: object, err: Exception) -> UserError:
    compression = getattr(getattr(page, "compression", None), "name", None) or "its compression"
    return UserError(
        f"TIFF {path} uses the {compression} codec, which the installed tifffile/imagecodecs cannot decode "
        f"({err}); install or upgrade the codecs with `pip install -U imagecodecs`, or re-save the file "
        f"uncompressed or with LZW/Deflate/ZSTD"
    )


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
