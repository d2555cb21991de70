"""npe2 hooks: which paths get a reader, which layers come out, and writers that keep the affine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_medlearn._io_plugin import get_reader, labels_layer_data, write_image, write_labels
from napari_medlearn.imaging.volume import Volume

MANIFEST = Path(__file__).parents[2] / "src" / "napari_medlearn" / "napari.yaml"

# oblique and float32-representable, as NIfTI stores it
OBLIQUE = np.array([
    [-0.875, 0.25, 0.5, 12.5],
    [0.125, 1.75, -0.375, -40.25],
    [0.0625, 0.5, 2.5, 7.0],
    [0.0, 0.0, 0.0, 1.0],
])


def _dicom_helpers():
    """The series writer of test_dicom.py, loaded by path so any pytest import mode works."""
    spec = importlib.util.spec_from_file_location("_medlearn_dicom_helpers",
                                                  Path(__file__).with_name("test_dicom.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def labels_file(tmp_path) -> Path:
    labels = np.zeros((7, 5, 3), np.uint8)  # NIfTI (x, y, z)
    labels[2:5, 1:4, 1] = 1
    labels[3, 2, 2] = 3
    path = tmp_path / "heart_seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, OBLIQUE), path)
    return path


@pytest.fixture
def image_file(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    scan = rng.normal(100, 20, size=(7, 5, 3)).astype(np.float32)
    path = tmp_path / "heart.nii.gz"
    nib.save(nib.Nifti1Image(scan, OBLIQUE), path)
    return path


def test_get_reader_accepts_nifti_and_dicom_folders_only(tmp_path, labels_file):
    assert callable(get_reader(str(labels_file)))
    assert callable(get_reader([str(labels_file)]))

    dicom = tmp_path / "dicom"
    files = _dicom_helpers().write_series(dicom, n_t=2, n_z=3)
    assert callable(get_reader(str(dicom)))
    assert callable(get_reader(str(files[(0, 0)])))

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01" * 200)
    assert get_reader(str(empty)) is None
    assert get_reader(str(empty / "notes.txt")) is None
    assert get_reader(str(garbage)) is None
    assert get_reader(str(tmp_path / "absent.nii.gz")) is None
    assert get_reader([str(labels_file), str(garbage)]) is None


def test_reader_makes_labels_and_image_layers(labels_file, image_file):
    reader = get_reader(str(labels_file))
    [(data, kwargs, layer_type)] = reader(str(labels_file))
    assert layer_type == "labels" and kwargs["name"] == "heart_seg"
    assert data.dtype == np.uint8 and data.shape == (3, 5, 7)
    np.testing.assert_array_equal(kwargs["metadata"]["affine"], OBLIQUE[:, [2, 1, 0, 3]])

    [(data, kwargs, layer_type)] = reader(str(image_file))
    assert layer_type == "image" and kwargs["name"] == "heart"


def test_labels_rule():
    geometry = dict(spacing=(1.0, 1.0, 1.0))
    few = Volume.from_spacing(np.array([[[0, 1, 2]]], np.int32), **geometry)
    many = Volume.from_spacing(np.arange(64, dtype=np.int16).reshape(1, 8, 8), **geometry)
    negative = Volume.from_spacing(np.array([[[-1, 0, 1]]], np.int16), **geometry)
    float_mask = Volume.from_spacing(np.array([[[0.0, 1.0, 1.0]]], np.float32), **geometry)
    assert labels_layer_data(few, "scan") is not None
    assert labels_layer_data(many, "scan") is None          # a scan: too many values
    assert labels_layer_data(many, "brain_aseg") is not None  # ...unless named as labels
    assert labels_layer_data(negative, "scan") is None
    assert labels_layer_data(float_mask, "scan") is None
    as_int = labels_layer_data(float_mask, "liver_mask")
    assert as_int is not None and as_int.dtype == np.uint8


def test_reader_gives_one_image_layer_per_dicom_series(tmp_path):
    helpers = _dicom_helpers()
    helpers.write_series(tmp_path, n_t=3, n_z=4)
    helpers.write_series(tmp_path, n_t=1, n_z=2, description="LGE", series_number=7, seed=1)
    layers = get_reader(str(tmp_path))(str(tmp_path))
    assert [(k["name"], t, d.shape) for d, k, t in layers] == [
        ("cine SA", "image", (3, 4, 6, 8)), ("LGE", "image", (2, 6, 8))]
    cine_kwargs = layers[0][1]
    assert cine_kwargs["scale"] == pytest.approx((40.0, 5.0, 1.5, 1.25))
    np.testing.assert_allclose(cine_kwargs["metadata"]["affine"], helpers.expected_affine(), atol=1e-9)


def test_write_labels_keeps_the_source_affine(tmp_path, labels_file):
    data, kwargs, _ = get_reader(str(labels_file))(str(labels_file))[0]
    edited = data.astype(np.int32)  # napari's labels dtype after painting
    edited[0, 0, 0] = 2
    out = tmp_path / "edited_seg.nii.gz"
    assert write_labels(str(out), edited, kwargs) == [str(out)]
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(img.affine, OBLIQUE)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), edited.T)
    # saving where the user chose overwrites, as napari expects
    assert write_labels(str(out), data, kwargs) == [str(out)]
    np.testing.assert_array_equal(np.asanyarray(nib.load(out).dataobj), nib.load(labels_file).dataobj)


def test_write_labels_from_scale_and_translate_only(tmp_path):
    labels = np.zeros((2, 3, 4), np.int64)
    labels[1, 2, 3] = 5
    out = tmp_path / "from_scale"
    [written] = write_labels(str(out), labels, {"scale": (2.0, 1.5, 1.0), "translate": (10.0, 20.0, 30.0)})
    assert written.endswith(".nii.gz")
    img = nib.load(written)
    assert img.get_data_dtype() == np.uint8 and img.shape == (4, 3, 2)
    # NIfTI i -> R (x, 1 mm), j -> A (y, 1.5 mm), k -> S (z, 2 mm); origin = translate
    np.testing.assert_array_equal(img.affine, [
        [1.0, 0, 0, 30.0], [0, 1.5, 0, 20.0], [0, 0, 2.0, 10.0], [0, 0, 0, 1]])
    assert np.asanyarray(img.dataobj)[3, 2, 1] == 5


def test_write_image_round_trip(tmp_path, image_file):
    data, kwargs, _ = get_reader(str(image_file))(str(image_file))[0]
    out = tmp_path / "copy.nii"
    write_image(str(out), data, kwargs)
    img, src = nib.load(out), nib.load(image_file)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, src.affine)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.asanyarray(src.dataobj))


def test_manifest_commands_resolve():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    ours = {"napari-medlearn.get_reader": get_reader, "napari-medlearn.write_labels": write_labels,
            "napari-medlearn.write_image": write_image}
    for command in manifest.contributions.commands:
        if command.id in ours:
            module, _, attr = command.python_name.partition(":")
            assert getattr(importlib.import_module(module), attr) is ours[command.id]


def test_napari_labels_layer_state_round_trip(tmp_path, labels_file):
    """The writer gets ``layer.as_layer_data_tuple()``'s state from napari, not our kwargs."""
    layers = pytest.importorskip("napari.layers")
    data, kwargs, _ = get_reader(str(labels_file))(str(labels_file))[0]
    layer = layers.Labels(data, **kwargs)
    layer_data, state, _ = layer.as_layer_data_tuple()
    out = tmp_path / "saved.nii.gz"
    write_labels(str(out), layer_data, state)
    np.testing.assert_array_equal(nib.load(out).affine, OBLIQUE)


def test_write_image_refuses_a_colour_layer_clearly(tmp_path):
    target = tmp_path / "photo.nii.gz"
    with pytest.raises(ValueError, match="RGB"):
        write_image(str(target), np.zeros((6, 8, 3), np.uint8),
                    {"rgb": True, "scale": (1.0, 1.0), "translate": (0.0, 0.0), "metadata": {}})
    assert not target.exists()
