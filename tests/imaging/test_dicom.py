"""DICOM series reading: slice/phase ordering, LPS->RAS affine, and the errors that must be loud.

Series are written here with pydicom on an oblique plane whose direction cosines are exact
decimals (products of 3-4-5 and 7-24-25 rotations), so the expected affine is known exactly.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_medlearn.imaging.io import (
    dicom_series_uid,
    folder_has_dicom,
    read_dicom_folder,
    read_dicom_series,
    read_volume,
)

ROWS, COLS = 6, 8                     # y, x
PIXEL_SPACING = (1.5, 1.25)           # (between rows = dy, between columns = dx)
SLICE_GAP = 5.0
ORIGIN_LPS = np.array([-20.5, 30.25, 12.0])
# rotation about y (0.6, 0.8) then about x (0.96, 0.28): exact decimal entries
_RY = np.array([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [-0.8, 0.0, 0.6]])
_RX = np.array([[1.0, 0.0, 0.0], [0.0, 0.96, -0.28], [0.0, 0.28, 0.96]])
ROT = _RY @ _RX
ROW_COS, COL_COS, NORMAL = ROT[:, 0], ROT[:, 1], ROT[:, 2]
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _ds(values) -> list[str]:
    """Decimal strings short enough for DICOM's DS (16 characters)."""
    return [f"{round(float(v), 6):.6f}".rstrip("0").rstrip(".") for v in values]


def write_slice(
    path: Path, pixels: np.ndarray, *, series_uid: str, description: str, series_number: int,
    position: np.ndarray, orientation: np.ndarray = np.concatenate([ROW_COS, COL_COS]),
    instance_number: int = 1, trigger_time: float | None = None,
    slice_location: float | None = None, slope: float | None = None,
    intercept: float | None = None, pixel_spacing=PIXEL_SPACING,
) -> None:
    """One single-frame MR image file (uint16, explicit VR little endian)."""
    sop_uid = generate_uid(entropy_srcs=[str(path)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study"])
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = _ds(position)
    ds.ImageOrientationPatient = _ds(orientation)
    ds.PixelSpacing = _ds(pixel_spacing)
    ds.SliceThickness = "99"  # deliberately not the spacing: the reader must not use it
    if slice_location is not None:
        ds.SliceLocation = _ds([slice_location])[0]
    if trigger_time is not None:
        ds.TriggerTime = _ds([trigger_time])[0]
    if slope is not None:
        ds.RescaleSlope = _ds([slope])[0]
        ds.RescaleIntercept = _ds([intercept or 0.0])[0]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def expected_pixels(t: int, z: int) -> np.ndarray:
    y, x = np.mgrid[:ROWS, :COLS]
    return (1000 * t + 100 * z + 10 * y + x).astype(np.uint16)


def write_series(
    folder: Path, *, n_t: int = 3, n_z: int = 4, description: str = "cine SA",
    series_number: int = 5, seed: int = 0, with_trigger: bool = True, **kwargs,
) -> dict[tuple[int, int], Path]:
    """A cine (or single phase if n_t == 1) series with shuffled file names, shuffled
    InstanceNumbers (when TriggerTime orders the phases) and a wrong SliceLocation.
    Returns {(t, z): path}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    uid = generate_uid(entropy_srcs=[description, str(series_number)])
    keys = [(t, z) for t in range(n_t) for z in range(n_z)]
    names = [f"IM{n:04d}.dcm" for n in rng.sample(range(1000, 9999), len(keys))]
    if with_trigger:
        instance = rng.sample(range(1, len(keys) + 1), len(keys))
    else:  # InstanceNumber is then the only phase order, as on scanners without ECG gating
        instance = [1 + z * n_t + t for t, z in keys]
    files = {}
    for (t, z), name, inst in zip(keys, names, instance):
        path = folder / name
        write_slice(
            path, expected_pixels(t, z), series_uid=uid, description=description,
            series_number=series_number, position=ORIGIN_LPS + z * SLICE_GAP * NORMAL,
            instance_number=inst, trigger_time=40.0 * t + 0.5 * z if with_trigger else None,
            slice_location=100.0 - 37.0 * ((z * 3) % n_z),  # wrong on purpose
            **kwargs,
        )
        files[(t, z)] = path
    return files


def expected_affine() -> np.ndarray:
    lps = np.eye(4)
    lps[:3, 0] = NORMAL * SLICE_GAP
    lps[:3, 1] = COL_COS * PIXEL_SPACING[0]
    lps[:3, 2] = ROW_COS * PIXEL_SPACING[1]
    lps[:3, 3] = ORIGIN_LPS
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def test_cine_order_shape_and_affine(tmp_path):
    write_series(tmp_path)
    (tmp_path / "README.txt").write_text("not DICOM")
    (tmp_path / "junk.dcm").write_bytes(bytes(range(256)) * 2)
    vol = read_dicom_folder(tmp_path)

    assert vol.axes == ("t", "z", "y", "x")
    assert vol.data.shape == (3, 4, ROWS, COLS)
    assert vol.data.dtype == np.uint16
    expected = np.stack([np.stack([expected_pixels(t, z) for z in range(4)]) for t in range(3)])
    np.testing.assert_array_equal(vol.data, expected)
    np.testing.assert_allclose(vol.affine, expected_affine(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(vol.spacing, (SLICE_GAP, 1.5, 1.25), atol=1e-9)
    assert vol.meta["time_step"] == pytest.approx(40.0)
    assert vol.meta["series"] == "cine SA"
    assert vol.meta["modality"] == "MR"

    # an independent check: voxel (z=2, y=3, x=4) sits at IPP_2 + 4 dx row + 3 dy col (LPS)
    lps = ORIGIN_LPS + 2 * SLICE_GAP * NORMAL + 4 * 1.25 * ROW_COS + 3 * 1.5 * COL_COS
    world = vol.affine @ [2, 3, 4, 1]
    np.testing.assert_allclose(world[:3], lps * [-1, -1, 1], atol=1e-9)


def test_phases_fall_back_to_instance_number(tmp_path):
    write_series(tmp_path, n_t=2, n_z=3, with_trigger=False)
    vol = read_dicom_folder(tmp_path)
    assert vol.data.shape == (2, 3, ROWS, COLS)
    assert vol.data[1, 2, 0, 0] == 1200
    assert vol.time_step is None


def test_single_phase_and_rescale(tmp_path):
    write_series(tmp_path, n_t=1, n_z=3, slope=2.0, intercept=-100.0)
    vol = read_dicom_folder(tmp_path)
    assert vol.axes == ("z", "y", "x")
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(
        vol.data, np.stack([expected_pixels(0, z) for z in range(3)]).astype(np.float32) * 2 - 100)
    np.testing.assert_allclose(vol.affine, expected_affine(), atol=1e-9)


def test_single_slice_uses_spacing_tag(tmp_path):
    write_series(tmp_path, n_t=1, n_z=1)
    vol = read_dicom_folder(tmp_path)
    assert vol.data.shape == (1, ROWS, COLS)
    assert vol.spacing[0] == pytest.approx(99.0)  # SliceThickness, only because nothing else


def test_read_volume_on_a_file_reads_its_series(tmp_path):
    files = write_series(tmp_path / "a", n_t=1, n_z=3)
    write_series(tmp_path / "a", n_t=1, n_z=2, description="LGE", series_number=7, seed=1)
    one = files[(0, 1)]
    assert dicom_series_uid(one) is not None
    vol = read_volume(one)
    assert vol.meta["series"] == "cine SA" and vol.data.shape == (3, ROWS, COLS)
    both = read_volume(tmp_path / "a")
    assert [v.meta["series"] for v in both] == ["cine SA", "LGE"]


def test_two_series_in_one_folder_named_in_error(tmp_path):
    write_series(tmp_path, n_t=1, n_z=3)
    write_series(tmp_path, n_t=1, n_z=2, description="LGE", series_number=7, seed=1)
    with pytest.raises(ValueError, match="2 DICOM series") as err:
        read_dicom_folder(tmp_path)
    assert "cine SA" in str(err.value) and "LGE" in str(err.value)
    assert [v.data.shape[0] for v in read_dicom_series(tmp_path)] == [3, 2]


def test_mixed_orientations(tmp_path):
    files = write_series(tmp_path, n_t=1, n_z=3)
    other = np.concatenate([COL_COS, ROW_COS])
    write_slice(files[(0, 1)], expected_pixels(0, 1), series_uid=dicom_series_uid(files[(0, 0)]),
                description="cine SA", series_number=5, orientation=other,
                position=ORIGIN_LPS + SLICE_GAP * NORMAL)
    with pytest.raises(ValueError, match="mixed orientations"):
        read_dicom_folder(tmp_path)


def test_missing_slice(tmp_path):
    files = write_series(tmp_path, n_t=1, n_z=5)
    files[(0, 2)].unlink()
    with pytest.raises(ValueError, match="missing slice"):
        read_dicom_folder(tmp_path)


def test_missing_phase(tmp_path):
    files = write_series(tmp_path, n_t=3, n_z=3)
    files[(1, 2)].unlink()
    with pytest.raises(ValueError, match="missing phase"):
        read_dicom_folder(tmp_path)


def test_inconsistent_image_sizes(tmp_path):
    files = write_series(tmp_path, n_t=1, n_z=3)
    write_slice(files[(0, 1)], np.zeros((ROWS + 1, COLS), np.uint16),
                series_uid=dicom_series_uid(files[(0, 0)]), description="cine SA",
                series_number=5, position=ORIGIN_LPS + SLICE_GAP * NORMAL)
    with pytest.raises(ValueError, match="inconsistent image sizes"):
        read_dicom_folder(tmp_path)


def test_skip_invalid_keeps_good_series(tmp_path):
    write_series(tmp_path, n_t=1, n_z=3)
    bad = write_series(tmp_path, n_t=1, n_z=4, description="LGE", series_number=7, seed=1)
    bad[(0, 1)].unlink()
    with pytest.raises(ValueError, match="LGE"):
        read_dicom_series(tmp_path)
    with pytest.warns(UserWarning, match="missing slice"):
        vols = read_dicom_series(tmp_path, skip_invalid=True)
    assert [v.meta["series"] for v in vols] == ["cine SA"]


def test_empty_or_non_dicom_folder(tmp_path):
    with pytest.raises(ValueError, match="no DICOM files in"):
        read_dicom_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    assert not folder_has_dicom(tmp_path)
    with pytest.raises(ValueError, match="no DICOM files in"):
        read_dicom_series(tmp_path)


def test_written_files_are_valid_dicom(tmp_path):
    files = write_series(tmp_path, n_t=1, n_z=1)
    ds = pydicom.dcmread(files[(0, 0)])
    np.testing.assert_array_equal(ds.pixel_array, expected_pixels(0, 0))


def test_a_file_copied_twice_is_one_image_not_a_second_phase(tmp_path):
    import shutil

    files = write_series(tmp_path, n_t=1, n_z=3)
    for f in files.values():
        shutil.copy(f, f.with_name(f.stem + " (copy).dcm"))
    with pytest.warns(UserWarning, match="3 file.*same SOPInstanceUID"):
        vol = read_dicom_folder(tmp_path)
    assert vol.axes == ("z", "y", "x") and vol.data.shape == (3, ROWS, COLS)
