"""Decode one single-frame DICOM file to an array with pydicom (used by :func:`metadino.data.images.load_image`).

Value rules (they follow :mod:`metadino.data.images`' contract: integers scaled to [0, 1], floats kept):

- **Modality units are kept.** When the file's Modality LUT changes the values — *Rescale Slope* != 1 or
  *Rescale Intercept* != 0, or a *Modality LUT Sequence* — and always for CT, the output is the modality LUT's
  output as float32, unscaled: CT arrives in Hounsfield units (air ~ -1000, water 0), PET in its rescaled
  units. These are floats, so the contract keeps them as they are; normalise them in the model's
  preprocessing (e.g. ``(HU + 1000) / 2000``).
- **Otherwise the stored integers are scaled by their real bit depth**: ``value / (2**BitsStored - 1)`` (so a
  12-bit CR/DX image fills [0, 1], not [0, 0.0625] as dividing by the uint16 maximum would), or by
  ``2**(BitsStored - 1) - 1`` for signed pixels (sign kept). pydicom already masks the bits above
  *BitsStored*. Identity rescale tags (slope 1, intercept 0, which DX files must carry) count as no rescale.
- **MONOCHROME1** (high stored value = dark, common for CR/DX) is inverted so that high = bright, as in
  MONOCHROME2: ``lo + hi - value`` where ``lo``/``hi`` are the output values of the smallest and largest
  storable pixel; for scaled pixels that is ``1 - value``.
- **VOI windowing** (Window Center/Width, VOI LUT) is off by default: the window is a display choice that throws
  away range, and the model sees the full modality range. With ``voi_window`` (``data.read.voi_window``), the
  file's first VOI LUT or window is applied (pydicom's ``apply_voi_lut``) and its output range scaled to [0, 1].
- Colour files (RGB, YBR_*) come back as RGB (pydicom converts YBR) with integers scaled by *BitsStored*;
  no modality LUT applies to them.
- **Multi-frame** files (*NumberOfFrames* > 1: CT/MR enhanced, tomosynthesis, cine) need a frame: the row's
  ``data.index_column`` value (only that frame is decoded); without one they are refused.
- A compressed transfer syntax whose decoder is not installed is refused with a message naming the transfer
  syntax and the packages that decode it (``pylibjpeg`` with ``pylibjpeg-libjpeg`` / ``pylibjpeg-openjpeg``
  / ``pylibjpeg-rle``, or ``python-gdcm``). JPEG Baseline, JPEG 2000 and RLE decode through Pillow and pydicom
  itself without extra packages.

The returned array is ``[C, H, W]`` (``C`` = 1 for monochrome, 3 for colour).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from metadino.errors import UserError


def load_dicom(source: str | Path | BinaryIO, *, frame: int | None = None, voi_window: bool = False,
               name: str | Path | None = None) -> np.ndarray:
    """Read one DICOM image (or one frame) as ``[C, H, W]`` (float32, value rules in the module docstring).

    Args:
        source: a file path or an open binary file.
        frame: the frame of a multi-frame file (0-based).
        voi_window: apply the file's VOI LUT / window and scale it to [0, 1].
        name: how messages name the file (default: the path).

    Raises:
        UserError: not a DICOM file, no pixel data, several frames and no frame chosen, a frame out of range, or
            no installed decoder for its transfer syntax. Other decode errors propagate (``load_image`` reports
            them as a corrupt file).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = name if name is not None else source
    try:
        ds = pydicom.dcmread(source)
    except InvalidDicomError as err:
        raise UserError(
            f"{path} is not a DICOM file ({err}); re-export it as DICOM Part 10 or remove its row from the table"
        ) from err
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UserError(
            f"DICOM {path} holds no pixel data (a report, DICOMDIR or presentation state?); remove its row"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is None and frames > 1:
        raise UserError(
            f"DICOM {path} is multi-frame ({frames} frames); choose a frame per row with data.index_column "
            f"(0 to {frames - 1}), or save one frame per file"
        )
    if frame is not None and not 0 <= frame < frames:
        raise UserError(f"DICOM {path} has {frames} frame(s) but the row asks for frame {frame}; valid frames are "
                        f"0 to {frames - 1}")
    _check_decoder(ds, path)
    if frames > 1:
        from pydicom.pixels.utils import pixel_array

        stored = np.asarray(pixel_array(ds, index=frame))  # decodes that frame only
    else:
        stored = np.asarray(ds.pixel_array)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if stored.ndim == 3:  # colour: [H, W, 3], already RGB
        return np.moveaxis(_scale_stored(stored, ds), -1, 0).astype(np.float32)
    if stored.ndim != 2:
        raise UserError(f"DICOM {path} has pixel data of shape {tuple(stored.shape)}; expected one 2-D frame")
    if voi_window:
        return _windowed(stored, ds, photometric, path)[None]
    if np.issubdtype(stored.dtype, np.floating):  # Float / Double Float Pixel Data: already real values
        out = stored.astype(np.float32)
    elif _has_modality_lut(ds):
        from pydicom.pixels.processing import apply_modality_lut

        out = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
        if photometric == "MONOCHROME1":
            lo, hi = np.asarray(apply_modality_lut(_stored_range(ds, stored.dtype), ds), dtype=np.float32)
            out = lo + hi - out
    else:
        out = _scale_stored(stored, ds)
        if photometric == "MONOCHROME1":
            lo, hi = _scale_stored(_stored_range(ds, stored.dtype), ds)
            out = lo + hi - out
    return out[None]


def _windowed(stored: np.ndarray, ds: Any, photometric: str, path: str | Path | BinaryIO) -> np.ndarray:
    """Modality LUT, then the first VOI LUT or window, scaled from its output range to [0, 1]."""
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    if not ds.get("VOILUTSequence") and ds.get("WindowCenter") is None:
        raise UserError(f"DICOM {path} has no VOI LUT or window (Window Center/Width) but data.read.voi_window is "
                        "on; turn it off for files without one")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    out = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    # The VOI output range: the window maps everything below/above it to its ends, a LUT to its first/last entry.
    ends = np.asarray(apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0), dtype=np.float64)
    lo, hi = float(ends.min()), float(ends.max())
    scaled = ((out - lo) / max(hi - lo, 1e-12)).astype(np.float32)
    return 1.0 - scaled if photometric == "MONOCHROME1" else scaled


def _check_decoder(ds: Any, path: str | Path | BinaryIO) -> None:
    """Refuse a compressed transfer syntax no installed plugin decodes, naming what to install."""
    from pydicom.pixels.decoders.base import get_decoder

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise UserError(
            f"DICOM {path} uses transfer syntax '{syntax.name}' ({syntax}), which pydicom cannot decode; "
            f"convert it to an uncompressed transfer syntax (e.g. `gdcmconv --raw` or dcmtk `dcmdjpeg`)"
        ) from err
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
        raise UserError(
            f"DICOM {path} uses transfer syntax '{syntax.name}' ({syntax}) and no installed package decodes it "
            f"(plugins: {needs}); install one, e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` "
            f"or `pip install python-gdcm`"
        )


def _has_modality_lut(ds: Any) -> bool:
    if ds.get("ModalityLUTSequence"):
        return True
    if str(ds.get("Modality", "")).upper() == "CT":
        return True
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None:
        return False
    return float(slope) != 1.0 or float(intercept) != 0.0


def _bits(ds: Any, dtype: np.dtype[Any]) -> int:
    bits = ds.get("BitsStored")
    return int(bits) if bits else 8 * dtype.itemsize


def _stored_range(ds: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """Smallest and largest storable pixel value (BitsStored, PixelRepresentation), in ``dtype``."""
    bits = _bits(ds, dtype)
    if np.issubdtype(dtype, np.signedinteger):
        return np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=dtype)
    return np.array([0, 2**bits - 1], dtype=dtype)


def _scale_stored(stored: np.ndarray, ds: Any) -> np.ndarray:
    """Integers -> float32 divided by their BitsStored maximum (signed: by the positive maximum)."""
    if stored.dtype == np.bool_:
        return stored.astype(np.float32)
    if not np.issubdtype(stored.dtype, np.integer):
        return stored.astype(np.float32)
    bits = _bits(ds, stored.dtype)
    top = 2 ** (bits - 1) - 1 if np.issubdtype(stored.dtype, np.signedinteger) else 2**bits - 1
    return stored.astype(np.float32) / np.float32(max(top, 1))
