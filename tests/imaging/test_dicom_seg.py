"""DICOM SEG out and in: labels on a DICOM series -> highdicom SEG -> the same labels, on the
source instances' positions (checked by highdicom and, independently, by pydicom alone)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from napari_medlearn.imaging.dicom_seg import (
    CARDIAC_STRUCTURES, LESION_STRUCTURES, Algorithm, read_seg, read_seg_series, write_seg,
)
from napari_medlearn.imaging.dicom_write import write_dicom_series
from napari_medlearn.imaging.io import read_dicom_folder, read_dicom_series


@pytest.fixture(scope="module")
def cine(tmp_path_factory):
    """A 3-phase cardiac phantom cine written as a DICOM series, its truth labels on the grid
    the reader gives."""
    from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom

    ph = cardiac_cine_phantom(seed=3, n_frames=3, matrix=40)
    image, labels = ph.volumes()
    folder = tmp_path_factory.mktemp("cine") / "series"
    write_dicom_series(image, folder, series_description="sax cine")
    source = read_dicom_folder(folder)
    assert np.allclose(source.affine, image.affine)      # so the truth sits on the read grid
    return folder, source, labels


@pytest.fixture(scope="module")
def lesion(tmp_path_factory):
    """A synthetic lesion session (FLAIR + truth with BraTS values 1, 2, 4) as a DICOM series."""
    from napari_medlearn.samples.brain_lesions import synthetic_lesion_case

    case = synthetic_lesion_case(seed=5, spacing_mm=4.0)
    vols = case.volumes()
    folder = tmp_path_factory.mktemp("lesion") / "flair"
    write_dicom_series(vols["FLAIR"], folder, series_description="FLAIR")
    source = read_dicom_folder(folder)
    labels = np.asarray(vols["labels"].data)
    assert set(np.unique(labels)) == {0, 1, 2, 4}
    return folder, source, labels


def _unpacked_frames(ds) -> np.ndarray:
    frames = np.asarray(ds.pixel_array)
    return frames[None] if frames.ndim == 2 else frames


def test_cine_seg_reads_back_identical_one_seg_per_phase(cine, tmp_path):
    folder, source, labels = cine
    files = write_seg(labels, folder, CARDIAC_STRUCTURES, Algorithm("bai-fcn", "1.0", "ab" * 32),
                      tmp_path / "seg.dcm")
    assert [f.name for f in files] == ["seg_t01.dcm", "seg_t02.dcm", "seg_t03.dcm"]
    back = read_seg_series(files)
    assert back.labels.shape == labels.data.shape
    np.testing.assert_array_equal(back.labels, labels.data)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    assert [s["label"] for s in back.segments] == ["LV cavity", "myocardium", "RV cavity"]
    assert [s["value"] for s in back.segments] == [1, 2, 3]
    assert all(s["algorithm_type"] == "AUTOMATIC" and s["algorithm"] == "bai-fcn" for s in back.segments)
    np.testing.assert_allclose(back.segments[0]["color"], (1.0, 0.25, 0.25), atol=0.02)
    ds = pydicom.dcmread(files[0])
    algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmVersion == "1.0" and "ab" * 32 in str(algo.AlgorithmParameters)
    assert ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "87878005"


def test_every_frame_sits_on_its_source_instance_checked_with_pydicom_alone(cine, tmp_path):
    """Independent of highdicom's reader: per frame, the referenced source file's IPP, the
    frame's own IPP, and its pixels against the labels of that file's slice and phase."""
    folder, source, labels = cine
    files = write_seg(labels, folder, CARDIAC_STRUCTURES, Algorithm("m", "1"), tmp_path / "seg.dcm")
    by_uid = {}
    for p in folder.iterdir():
        s = pydicom.dcmread(p)
        by_uid[s.SOPInstanceUID] = s
    normal = np.cross(*np.asarray(source_iop := next(iter(by_uid.values())).ImageOrientationPatient,
                                  float).reshape(2, 3))
    positions = sorted({round(float(np.asarray(s.ImagePositionPatient, float) @ normal), 3)
                        for s in by_uid.values()})
    n_checked = 0
    for t, path in enumerate(files):
        seg = pydicom.dcmread(path)
        assert seg.FrameOfReferenceUID == next(iter(by_uid.values())).FrameOfReferenceUID
        frames = _unpacked_frames(seg)
        iop = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
        np.testing.assert_allclose(np.asarray(iop, float), np.asarray(source_iop, float), atol=1e-6)
        for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
            ref = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            src = by_uid[ref]
            ipp = np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float)
            np.testing.assert_allclose(ipp, np.asarray(src.ImagePositionPatient, float), atol=1e-4)
            assert int(src.TemporalPositionIdentifier) == t + 1          # the phase's own instance
            z = positions.index(round(float(ipp @ normal), 3))
            number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            np.testing.assert_array_equal(frames[i].astype(bool), labels.data[t, z] == number)
            n_checked += 1
    assert n_checked == 3 * labels.data.shape[1] * 3      # phases x slices x segments


def test_lesion_session_seg_with_brats_values_and_hand_edits(lesion, tmp_path):
    folder, source, labels = lesion
    [path] = write_seg(source.with_data(labels), folder, LESION_STRUCTURES,
                       Algorithm("deepmedic", "2", "cd" * 32, edited=True), tmp_path / "lesion_seg.dcm")
    back = read_seg(path)
    np.testing.assert_array_equal(back.labels, labels)             # 1, 2, 4 come back as 1, 2, 4
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
    assert [(s["number"], s["value"], s["label"]) for s in back.segments] == [
        (1, 1, "necrotic core"), (2, 2, "oedema"), (3, 4, "enhancing tumour")]
    assert {s["algorithm_type"] for s in back.segments} == {"SEMIAUTOMATIC"}
    manual = write_seg(labels, folder, LESION_STRUCTURES, Algorithm(), tmp_path / "manual.dcm")
    assert {s["algorithm_type"] for s in read_seg(manual[0]).segments} == {"MANUAL"}


def test_bad_labels_refused_with_one_line(cine, tmp_path):
    folder, source, labels = cine
    with pytest.raises(ValueError, match="one phase of a 3-phase cine"):
        write_seg(labels.data[0], folder, CARDIAC_STRUCTURES, Algorithm(), tmp_path / "a.dcm")
    with pytest.raises(ValueError, match="do not match the source series"):
        write_seg(labels.data[:, :-1], folder, CARDIAC_STRUCTURES, Algorithm(), tmp_path / "a.dcm")
    odd = labels.data.copy()
    odd[0, 0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"values \[7\] that no structure describes"):
        write_seg(odd, folder, CARDIAC_STRUCTURES, Algorithm(), tmp_path / "a.dcm")
    shifted = labels.affine.copy()
    shifted[0, 3] += 5.0
    from napari_medlearn.imaging.volume import Volume

    with pytest.raises(ValueError, match="geometry"):
        write_seg(Volume(labels.data, shifted, labels.axes), folder, CARDIAC_STRUCTURES, Algorithm(),
                  tmp_path / "a.dcm")
    assert not list(tmp_path.iterdir())                            # nothing half-written
    (tmp_path / "b_t02.dcm").write_bytes(b"mine")                  # a user's file is never replaced
    with pytest.raises(FileExistsError, match="b_t02.dcm exists"):
        write_seg(labels.data, folder, CARDIAC_STRUCTURES, Algorithm(), tmp_path / "b.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b_t02.dcm"]


def test_structure_colours_are_the_widgets():
    from napari_medlearn.samples.brain_lesions import LABEL_COLORS as LESION_COLORS
    from napari_medlearn.widgets.cardiac import LABEL_COLORS as CARDIAC_COLORS

    for table, colours in ((CARDIAC_STRUCTURES, CARDIAC_COLORS), (LESION_STRUCTURES, LESION_COLORS)):
        for value, s in table.items():
            assert tuple(colours[value][:3]) == pytest.approx(s.color)


def test_folder_with_series_and_seg_opens_both_aligned(cine, tmp_path):
    """The napari reader: a dropped folder gives the image and the SEG as a labels layer on it."""
    import shutil

    from napari_medlearn._io_plugin import read_layers

    folder, source, labels = cine
    exam = tmp_path / "exam"
    shutil.copytree(folder, exam)
    write_seg(labels, folder, CARDIAC_STRUCTURES, Algorithm("m", "1"), exam / "seg.dcm")
    assert len(read_dicom_series(exam)) == 1                      # the SEG is no slice of a series
    layers = read_layers(str(exam))
    kinds = sorted(kind for _, _, kind in layers)
    assert kinds == ["image", "labels"]
    (img, ikw, _), = [layer for layer in layers if layer[2] == "image"]
    (lab, lkw, _), = [layer for layer in layers if layer[2] == "labels"]
    assert lab.shape == img.shape
    np.testing.assert_array_equal(lab, labels.data)
    np.testing.assert_allclose(lkw["metadata"]["affine"], ikw["metadata"]["affine"], atol=1e-4)
    np.testing.assert_allclose(lkw["scale"], ikw["scale"])
    np.testing.assert_allclose(lkw["translate"], ikw["translate"], atol=1e-4)
    assert lkw["metadata"]["label_names"] == {1: "LV cavity", 2: "myocardium", 3: "RV cavity"}
    assert lkw["colormap"][1][:3] == pytest.approx((1.0, 0.25, 0.25), abs=0.02)
    from napari_medlearn.imaging.io import read_volume

    one_phase = read_volume(exam / "seg_t02.dcm")                 # read_volume of a SEG: its labels
    np.testing.assert_array_equal(one_phase.data, labels.data[1])
    # a SEG file on its own opens as its labels alone
    [(one, _, kind)] = read_layers(str(exam / "seg_t01.dcm"))
    assert kind == "labels" and one.shape == labels.data.shape[1:]


@pytest.mark.parametrize("flip_z", [False, True], ids=["slices-along-normal", "slices-against-normal"])
def test_oblique_series_seg_lands_on_the_reader_grid(tmp_path, flip_z):
    """Whatever order highdicom stacks the SEG's frames in, reading gives the series reader's grid."""
    from napari_medlearn.imaging.volume import Volume, affine_from_spacing

    a, b, c = 0.3, -0.7, 1.1
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ ry @ rx @ affine_from_spacing((4.0, 1.3, 0.9))[:3, :3]
    aff[:3, 3] = (5.0, -12.0, 30.0)
    if flip_z:
        aff[:3, 0] *= -1
    image = Volume(np.random.default_rng(0).integers(0, 999, (6, 14, 11)).astype(np.uint16), aff, ("z", "y", "x"))
    write_dicom_series(image, tmp_path / "s")
    source = read_dicom_folder(tmp_path / "s")
    labels = np.zeros(source.data.shape, np.uint8)
    labels[1, 2:6, 3:7] = 1                                  # asymmetric along z: a flip would show
    labels[2:5, 8:12, 1:4] = 3
    [path] = write_seg(source.with_data(labels), tmp_path / "s", CARDIAC_STRUCTURES, Algorithm(), tmp_path / "seg.dcm")
    back = read_seg(path)
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
