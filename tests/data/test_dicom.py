"""DICOM through pydicom (issue 12 item 3): modality LUT, MONOCHROME1, BitsStored, multi-frame, decoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid  # noqa: E402

from metadino.data.dicom import load_dicom  # noqa: E402
from metadino.data.images import load_image  # noqa: E402
from metadino.errors import UserError  # noqa: E402


def _write(path: Path, pixels: np.ndarray, *, syntax=ExplicitVRLittleEndian, **tags) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = tags.pop("Modality", "DX")
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = tags.pop("PhotometricInterpretation", "MONOCHROME2")
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = tags.pop("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes() if syntax == ExplicitVRLittleEndian else tags.get("_data", b"")
    ds.save_as(path, enforce_file_format=True)
    return path


def test_ct_slope_intercept_gives_hounsfield_units(tmp_path):
    stored = np.array([[0, 1024], [2024, 4095]], np.uint16)
    path = _write(tmp_path / "ct.dcm", stored, Modality="CT", BitsStored=12, RescaleSlope=1, RescaleIntercept=-1024)
    img = load_image(path)
    assert img.dtype == torch.float32 and img.shape == (1, 2, 2)
    assert img[0].tolist() == [[-1024.0, 0.0], [1000.0, 3071.0]]  # air, water, bone: HU, not [0, 1]
    _write(tmp_path / "pt.dcm", stored, Modality="PT", RescaleSlope=0.5, RescaleIntercept=0)
    assert load_dicom(tmp_path / "pt.dcm")[0].tolist() == [[0.0, 512.0], [1012.0, 2047.5]]


def test_ct_with_identity_rescale_still_in_hu(tmp_path):
    stored = np.array([[-1000, 0, 40]], np.int16)
    path = _write(tmp_path / "ct.DCM", stored, Modality="CT", RescaleSlope=1, RescaleIntercept=0)
    assert load_image(path)[0].tolist() == [[-1000.0, 0.0, 40.0]]


def test_dx_12_bit_scaled_by_bits_stored(tmp_path):
    stored = np.array([[0, 4095], [2048, 1]], np.uint16)
    path = _write(tmp_path / "dx.dicom", stored, BitsStored=12, RescaleSlope=1, RescaleIntercept=0)
    img = load_image(path)
    assert img[0, 0].tolist() == [0.0, 1.0]
    assert img[0, 1, 0].item() == pytest.approx(2048 / 4095)
    # bits above BitsStored are not pixel data (pydicom masks them)
    noisy = stored | np.uint16(0xF000)
    assert torch.equal(load_image(_write(tmp_path / "hi.dcm", noisy, BitsStored=12)), img)


def test_monochrome1_is_inverted(tmp_path):
    stored = np.array([[0, 4095, 1000]], np.uint16)
    m1 = load_image(_write(tmp_path / "m1.dcm", stored, BitsStored=12, PhotometricInterpretation="MONOCHROME1"))
    m2 = load_image(_write(tmp_path / "m2.dcm", stored, BitsStored=12))
    assert m1[0, 0, :2].tolist() == [1.0, 0.0]
    assert torch.allclose(m1, 1 - m2)
    # with a modality LUT: inverted within the rescaled range [-100, 8090] (stored 0..4095, x 2 - 100)
    r = load_image(_write(tmp_path / "r1.dcm", stored, BitsStored=12, PhotometricInterpretation="MONOCHROME1",
                          RescaleSlope=2, RescaleIntercept=-100))
    assert r[0, 0].tolist() == [8090.0, -100.0, 7990.0 - 1900.0]


def test_multi_frame_needs_a_frame_and_reads_only_it(tmp_path):
    frames = np.stack([np.full((4, 4), v, np.uint16) for v in (0, 1000, 65535)])
    path = _write(tmp_path / "cine.dcm", frames)
    with pytest.raises(UserError, match=r"cine\.dcm is multi-frame \(3 frames\); choose a frame.*index_column"):
        load_image(path)
    for i, v in enumerate((0, 1000, 65535)):
        assert torch.equal(load_image(path, index=i), torch.full((1, 4, 4), v / 65535))
    with pytest.raises(UserError, match=r"cine\.dcm has 3 frame\(s\) but the row asks for frame 3"):
        load_image(path, index=3)


def test_voi_window_scales_the_window_to_unit_range(tmp_path):
    from metadino.data.reading import ReadOptions

    stored = np.array([[0, 1000, 1040, 1080, 3000]], np.uint16)  # CT: HU = stored - 1024
    path = _write(tmp_path / "w.dcm", stored, Modality="CT", RescaleSlope=1, RescaleIntercept=-1024,
                  WindowCenter=40, WindowWidth=80)
    plain = load_image(path)
    assert plain[0, 0].tolist() == [-1024.0, -24.0, 16.0, 56.0, 1976.0]  # HU kept by default
    windowed = load_image(path, ReadOptions(voi_window=True))[0, 0]
    # Window [0, 80] HU (DICOM's linear function): below -> 0, above -> 1, inside -> linear.
    assert windowed[0] == 0 and windowed[-1] == 1 and windowed[1] == 0
    assert 0.15 < windowed[2] < 0.25 and 0.65 < windowed[3] < 0.75
    mono1 = _write(tmp_path / "m1.dcm", stored, Modality="CT", RescaleSlope=1, RescaleIntercept=-1024,
                   WindowCenter=40, WindowWidth=80, PhotometricInterpretation="MONOCHROME1")
    assert torch.allclose(load_image(mono1, ReadOptions(voi_window=True))[0, 0], 1 - windowed)
    bare = _write(tmp_path / "bare.dcm", stored)
    with pytest.raises(UserError, match=r"bare\.dcm has no VOI LUT or window"):
        load_image(bare, ReadOptions(voi_window=True))


def test_compressed_syntax_without_decoder_is_named(tmp_path, monkeypatch):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    decoder = get_decoder(JPEGLosslessSV1)
    if decoder.is_available:  # pylibjpeg or gdcm installed here: pretend they are not
        monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    path = _write(tmp_path / "jpl.dcm", np.zeros((4, 4), np.uint16), syntax=JPEGLosslessSV1,
                  _data=encapsulate([b"\xff\xd8\xff\xd9"]))
    with pytest.raises(UserError, match=r"jpl\.dcm uses transfer syntax 'JPEG Lossless.*pylibjpeg.*gdcm") as info:
        load_image(path)
    assert "corrupt" not in str(info.value)


def test_not_dicom_and_no_pixels(tmp_path):
    (tmp_path / "text.dcm").write_text("not a dicom file\n")
    with pytest.raises(UserError, match=r"text\.dcm is not a DICOM file"):
        load_image(tmp_path / "text.dcm")
    path = _write(tmp_path / "sr.dcm", np.zeros((2, 2), np.uint16))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(UserError, match=r"sr\.dcm holds no pixel data"):
        load_image(path)


@pytest.mark.parametrize(("name", "unit"), [("CT_small.dcm", "HU"), ("MR_small.dcm", "scaled")])
def test_files_pydicom_ships(name, unit):
    from pydicom.data import get_testdata_file

    try:
        path = get_testdata_file(name, download=False)
    except Exception:  # pragma: no cover - data package layout differs
        path = None
    if path is None:
        pytest.skip(f"{name} is not available offline")
    ds = pydicom.dcmread(path)
    img = load_image(path)
    assert img.shape == (1, ds.Rows, ds.Columns) and img.dtype == torch.float32
    expected = ds.pixel_array.astype(np.float64)
    if unit == "HU":
        expected = expected * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert img.min().item() < -100  # air/soft tissue below zero: really HU
    else:
        bits = int(ds.BitsStored) - int(ds.PixelRepresentation)  # signed (MR_small is int16): sign bit excluded
        expected = expected / (2**bits - 1)
        assert 0.0 <= img.min().item() and img.max().item() <= 1.0
    assert torch.allclose(img[0], torch.from_numpy(expected).float(), atol=1e-4)


def test_compressed_transfer_syntaxes_decode_through_the_plugins(tmp_path):
    """JPEG 2000 lossless (pylibjpeg-openjpeg) and RLE (pydicom itself): the same values as uncompressed."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 61) % 4096
    plain = _write(tmp_path / "plain.dcm", pixels, BitsStored=12)
    expected = load_image(plain)
    for name, syntax in (("j2k", JPEG2000Lossless), ("rle", RLELossless)):
        ds = pydicom.dcmread(plain)
        try:
            ds.compress(syntax)
        except (RuntimeError, NotImplementedError) as err:  # pragma: no cover - encoder plugin missing
            pytest.skip(f"cannot encode {syntax.name} here: {err}")
        ds.save_as(tmp_path / f"{name}.dcm")
        assert pydicom.dcmread(tmp_path / f"{name}.dcm").file_meta.TransferSyntaxUID == syntax
        assert torch.equal(load_image(tmp_path / f"{name}.dcm"), expected)
