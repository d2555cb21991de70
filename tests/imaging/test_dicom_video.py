"""DICOM clips (ultrasound, captures): multi-frame, colour and palette files read frame by frame."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_medlearn._io_plugin import read_layers
from napari_medlearn.imaging.io import dicom_videos, is_dicom_video, read_dicom_series, read_dicom_video

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"


def grey_clip(path, frames: np.ndarray, **tags) -> None:
    """A multi-frame grey ultrasound file, as an ultrasound machine writes one."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesDescription = generate_uid(), "US", "fetal sweep"
    ds.NumberOfFrames, (ds.Rows, ds.Columns) = frames.shape[0], frames.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, tags.pop("photometric", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = frames.astype(np.uint8).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def test_grey_multiframe_clip_with_frame_time(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (5, 40, 48)).astype(np.uint8)
    grey_clip(tmp_path / "clip.dcm", frames, FrameTime="40", PixelSpacing=["0.3", "0.25"])
    assert is_dicom_video(tmp_path / "clip.dcm")
    arr, meta = read_dicom_video(tmp_path / "clip.dcm")
    np.testing.assert_array_equal(arr, frames)
    assert meta["time_step"] == 40.0 and meta["spacing"] == (0.3, 0.25) and meta["modality"] == "US"


def test_monochrome1_is_inverted_and_cine_rate_gives_the_step(tmp_path):
    frames = np.arange(2 * 32 * 32).reshape(2, 32, 32) % 200
    grey_clip(tmp_path / "m1.dcm", frames, photometric="MONOCHROME1", CineRate="25")
    arr, meta = read_dicom_video(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(arr, frames.max() - frames)
    assert meta["time_step"] == pytest.approx(40.0) and "spacing" not in meta


def test_ybr_colour_clip_with_ultrasound_regions():
    path = get_testdata_file("examples_ybr_color.dcm")       # 30 frames, YBR_FULL_422, in pydicom
    arr, meta = read_dicom_video(path)
    assert arr.shape == (30, 240, 320, 3) and arr.dtype == np.uint8
    assert meta["time_step"] == pytest.approx(33.333)
    assert meta["spacing"][0] == pytest.approx(0.5105, abs=1e-4)      # 0.05105 cm per pixel


def test_palette_picture_becomes_8_bit_rgb():
    arr, _ = read_dicom_video(get_testdata_file("examples_palette.dcm"))
    assert arr.shape == (1, 350, 800, 3) and arr.dtype == np.uint8 and arr.max() > 0


def test_folder_of_clips_and_a_series_opens_as_one_layer_each(tmp_path):
    import importlib.util
    import shutil
    from pathlib import Path

    # the series writer of test_dicom.py, loaded by path so any pytest import mode works
    spec = importlib.util.spec_from_file_location("_medlearn_dicom_helpers", Path(__file__).with_name("test_dicom.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    helpers.write_series(tmp_path, n_t=1, n_z=3)
    grey_clip(tmp_path / "clip1.dcm", np.zeros((3, 32, 32)), FrameTime="30")
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), tmp_path / "clip2.dcm")
    assert [p.name for p in dicom_videos(tmp_path)] == ["clip1.dcm", "clip2.dcm"]
    assert len(read_dicom_series(tmp_path, skip_video=True)) == 1
    layers = read_layers(str(tmp_path))
    shapes = sorted(layer[0].shape for layer in layers)
    assert shapes == [(3, 6, 8), (3, 32, 32), (30, 240, 320, 3)]
    clip = next(layer for layer in layers if layer[0].ndim == 4)
    assert clip[1]["rgb"] and clip[1]["scale"][0] == pytest.approx(33.333)
    # only clips: still opens
    only = tmp_path / "only"
    only.mkdir()
    grey_clip(only / "c.dcm", np.zeros((2, 32, 32)))
    assert [layer[0].shape for layer in read_layers(str(only / "c.dcm"))] == [(2, 32, 32)]
    assert [layer[0].shape for layer in read_layers(str(only))] == [(2, 32, 32)]


def test_mr_and_ct_slices_are_not_clips():
    for name in ("MR_small.dcm", "CT_small.dcm"):
        assert not is_dicom_video(get_testdata_file(name))
