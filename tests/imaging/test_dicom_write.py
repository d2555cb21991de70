"""DICOM series writing: Volume -> files -> read_dicom_folder gives the same values and geometry."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from napari_medlearn.imaging import dicom_write
from napari_medlearn.imaging.dicom_write import write_dicom_series
from napari_medlearn.imaging.io import read_dicom_folder
from napari_medlearn.imaging.volume import Volume, affine_from_spacing

SPACING = (7.5, 1.25, 0.9)      # (dz, dy, dx): non-square in plane
T, Z, Y, X = 3, 4, 12, 10
TIME_STEP = 33.7
ORIGIN_RAS = np.array([12.25, -40.5, 7.0])


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    """A generic proper rotation (no axis aligned with the world), from three angles."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def _affine(kind: str) -> np.ndarray:
    if kind == "axis-aligned":
        return affine_from_spacing(SPACING, ORIGIN_RAS)
    rot = _rotation(0.3, -0.7, 1.1)
    aff = np.eye(4)
    # columns (z, y, x) as in affine_from_spacing, then rotated: a right-handed frame in LPS
    aff[:3, :3] = rot @ affine_from_spacing(SPACING)[:3, :3]
    aff[:3, 3] = ORIGIN_RAS
    return aff


def _data(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(7)
    if dtype == "uint16":
        return rng.integers(0, 65536, size=shape).astype(np.uint16)
    if dtype == "int16":
        return rng.integers(-1024, 3000, size=shape).astype(np.int16)
    return rng.normal(-3.0, 250.0, size=shape).astype(np.float32)


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
@pytest.mark.parametrize("cine", [False, True], ids=["zyx", "tzyx"])
@pytest.mark.parametrize("kind", ["oblique", "axis-aligned"])
def test_round_trip(tmp_path, kind, cine, dtype):
    shape, axes = ((T, Z, Y, X), ("t", "z", "y", "x")) if cine else ((Z, Y, X), ("z", "y", "x"))
    meta = {"time_step": TIME_STEP} if cine else {}
    vol = Volume(_data(dtype, shape), _affine(kind), axes, meta)
    paths = write_dicom_series(vol, tmp_path / "series")
    assert len(paths) == (T * Z if cine else Z) and all(p.exists() for p in paths)

    back = read_dicom_folder(tmp_path / "series")
    assert back.axes == axes and back.data.shape == shape
    np.testing.assert_allclose(back.affine, vol.affine, rtol=0, atol=1e-4)
    if dtype == "float32":
        slope = float(pydicom.dcmread(paths[0], stop_before_pixels=True).RescaleSlope)
        err = np.abs(back.data.astype(np.float64) - vol.data)
        assert err.max() <= slope / 2 * (1 + 1e-6) + 1e-6 * np.abs(vol.data).max()
    else:
        assert back.data.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back.data, vol.data)
    if cine:
        assert back.time_step == pytest.approx(TIME_STEP, abs=1e-6)
    else:
        assert back.time_step is None


def test_file_headers(tmp_path):
    vol = Volume(_data("uint16", (T, Z, Y, X)), _affine("oblique"), ("t", "z", "y", "x"),
                 {"time_step": TIME_STEP})
    paths = write_dicom_series(vol, tmp_path / "s", series_description="cine SA", patient_id="P7")
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    h0 = headers[0]
    assert h0.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert h0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and h0.Modality == "MR"
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({str(h[key].value) for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == len(headers)
    assert sorted(int(h.InstanceNumber) for h in headers) == list(range(1, T * Z + 1))
    assert (h0.SeriesDescription, h0.PatientID, h0.Rows, h0.Columns) == ("cine SA", "P7", Y, X)
    assert [float(v) for v in h0.PixelSpacing] == [1.25, 0.9]  # (row spacing, column spacing)
    assert float(h0.SpacingBetweenSlices) == pytest.approx(7.5)
    assert int(h0.CardiacNumberOfImages) == T
    # names follow the instance UIDs, not the slice/phase order
    assert [p.name for p in paths] == [f"{h.SOPInstanceUID}.dcm" for h in headers]
    assert sorted(p.name for p in paths) != [p.name for p in paths]
    # SliceLocation is the position along the normal, and grows with z here
    iop = np.array([float(v) for v in h0.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    for h in headers:
        ipp = np.array([float(v) for v in h.ImagePositionPatient])
        assert float(h.SliceLocation) == pytest.approx(ipp @ normal, abs=1e-6)
    by_trigger = sorted({float(h.TriggerTime) for h in headers})
    np.testing.assert_allclose(by_trigger, TIME_STEP * np.arange(T), atol=1e-6)


def test_two_d_image_is_one_slice(tmp_path):
    vol = Volume.from_spacing(np.arange(Y * X, dtype=np.uint16).reshape(Y, X), SPACING[1:])
    [path] = write_dicom_series(vol, tmp_path / "s")
    back = read_dicom_folder(tmp_path / "s")
    assert back.data.shape == (1, Y, X)
    np.testing.assert_array_equal(back.data[0], vol.data)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)


def test_slice_axis_against_the_normal_comes_back_reversed(tmp_path):
    aff = _affine("oblique")
    aff[:3, 0] *= -1  # left-handed: slices advance against row x column cosines
    vol = Volume(_data("int16", (Z, Y, X)), aff, ("z", "y", "x"))
    write_dicom_series(vol, tmp_path / "s")
    back = read_dicom_folder(tmp_path / "s")
    np.testing.assert_array_equal(back.data, vol.data[::-1])
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, Z - 1  # back voxel k is original voxel Z-1-k
    np.testing.assert_allclose(back.affine, vol.affine @ flip, atol=1e-4)


def test_existing_folder(tmp_path):
    vol = Volume(_data("uint16", (2, Y, X)), _affine("axis-aligned"), ("z", "y", "x"))
    target = tmp_path / "s"
    target.mkdir()
    write_dicom_series(vol, target)  # an empty folder is fine
    old = sorted(target.iterdir())
    with pytest.raises(FileExistsError, match="overwrite"):
        write_dicom_series(vol, target)
    assert sorted(target.iterdir()) == old
    new = write_dicom_series(vol, target, overwrite=True)
    assert sorted(target.iterdir()) == sorted(new) and not set(new) & set(old)
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        write_dicom_series(vol, target, overwrite=True)
    assert (target / "notes.txt").exists()
    (target / "notes.txt").rename(target / ".notes.txt")     # hidden is still somebody's file
    with pytest.raises(FileExistsError, match=".notes.txt"):
        write_dicom_series(vol, target, overwrite=True)
    (target / ".notes.txt").unlink()
    (target / ".DS_Store").write_bytes(b"finder")          # OS litter goes with the folder
    write_dicom_series(vol, target, overwrite=True)
    assert not (target / ".DS_Store").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # nothing left beside it


def test_text_beyond_latin1_is_kept(tmp_path):
    vol = Volume(_data("uint16", (2, Y, X)), _affine("axis-aligned"), ("z", "y", "x"))
    files = write_dicom_series(vol, tmp_path / "s", series_description="Cœur 心脏", patient_id="Zoë")
    ds = pydicom.dcmread(files[0])
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (ds.SeriesDescription, str(ds.PatientID)) == ("Cœur 心脏", "Zoë")
    plain = write_dicom_series(vol, tmp_path / "t", series_description="LV short axis")
    assert pydicom.dcmread(plain[0]).SpecificCharacterSet == "ISO_IR 100"


@pytest.mark.parametrize("data, axes, match", [
    (np.full((2, Y, X), np.nan, np.float32), ("z", "y", "x"), "NaN"),
    (np.array([[[0.0, np.inf]]]), ("z", "y", "x"), "infinite"),
    (np.zeros((1, 2, 2, Y, X), np.uint16), ("c", "t", "z", "y", "x"), "4 dimensions"),
    (np.zeros(5, np.uint16), ("x",), "at least an image"),
    (np.zeros((2, Y, X), np.int32) + 70000, ("z", "y", "x"), "uint16"),
    (np.zeros((2, Y, X), np.uint16), ("c", "y", "x"), "axes"),
])
def test_bad_input_is_a_value_error(tmp_path, data, axes, match):
    vol = Volume(data, affine_from_spacing(SPACING), axes)
    with pytest.raises(ValueError, match=match):
        write_dicom_series(vol, tmp_path / "s")
    assert not any(tmp_path.iterdir())


def test_failure_leaves_no_folder(tmp_path, monkeypatch):
    real, calls = dicom_write._save_dataset, []

    def fail_third(ds, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(ds, path)

    monkeypatch.setattr(dicom_write, "_save_dataset", fail_third)
    vol = Volume(_data("uint16", (Z, Y, X)), _affine("oblique"), ("z", "y", "x"))
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(vol, tmp_path / "s")
    assert not any(tmp_path.iterdir())


def test_ct_and_unknown_modality(tmp_path):
    vol = Volume(_data("int16", (2, Y, X)), _affine("oblique"), ("z", "y", "x"))
    [p0, _] = write_dicom_series(vol, tmp_path / "ct", modality="CT")
    assert pydicom.dcmread(p0, stop_before_pixels=True).SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    back = read_dicom_folder(tmp_path / "ct")
    assert back.data.dtype == np.int16 and back.meta["modality"] == "CT"
    np.testing.assert_array_equal(back.data, vol.data)
    with pytest.raises(ValueError, match="not supported"):
        write_dicom_series(vol, tmp_path / "us", modality="US")
