"""One colour and name per structure: the kind a labels layer declares survives Save -> reopen
through the plugin's writer and reader (a NIfTI header extension), and the cards agree."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medlearn import zoo
from napari_medlearn._io_plugin import get_reader, write_image, write_labels
from napari_medlearn.imaging import structures
from napari_medlearn.imaging.io import read_nifti, write_nifti
from napari_medlearn.imaging.volume import Volume, affine_from_spacing


def _ours(path) -> list:
    return [e for e in nib.load(path).header.extensions if e.get_code() == structures.NIFTI_ECODE]


def _cardiac_layer_data():
    labels = np.zeros((3, 6, 7), np.uint8)
    labels[1, 1:3, 1:3], labels[1, 3:5, 3:5], labels[2, 2, 5] = 1, 2, 3
    vol = Volume(labels, affine_from_spacing((8.0, 1.5, 1.5)), ("z", "y", "x"), {"structures": "cardiac"})
    return vol.to_layer_data(name="heart [cardiac]", layer_type="labels")


def test_labels_saved_and_reopened_keep_their_structure_colours_and_names(tmp_path):
    data, kwargs, _ = _cardiac_layer_data()
    out = tmp_path / "heart_cardiac.nii.gz"
    write_labels(str(out), data, kwargs)
    assert len(_ours(out)) == 1
    (back, back_kwargs, layer_type), = get_reader(str(out))(str(out))
    assert layer_type == "labels"
    colors = back_kwargs["colormap"].color_dict
    for value, (_name, rgba) in structures.STRUCTURES["cardiac"].items():
        np.testing.assert_allclose(colors[value], rgba)
    assert back_kwargs["features"]["structure"][:4] == ["background", "LV cavity", "myocardium", "RV cavity"]
    # saved again from the reopened layer: still one record, still cardiac
    again = tmp_path / "again_seg.nii.gz"
    write_labels(str(again), back, back_kwargs)
    assert len(_ours(again)) == 1
    assert read_nifti(again).meta["structures"] == "cardiac"


def test_only_labels_that_say_their_kind_carry_a_record(tmp_path):
    """A float map never carries one; a volume whose metadata no longer says a kind loses the
    record its template header had; without a record a file opens as before."""
    data, kwargs, _ = _cardiac_layer_data()
    prob = tmp_path / "p.nii.gz"
    write_image(str(prob), data.astype(np.float32) / 3, kwargs)     # a probability map from labels' metadata
    assert _ours(prob) == []
    labelled = tmp_path / "l_seg.nii.gz"
    write_labels(str(labelled), data, kwargs)
    vol = read_nifti(labelled)                                      # its header (with the record) is the template
    assert vol.meta["structures"] == "cardiac"
    meta = {k: v for k, v in vol.meta.items() if k != "structures"}
    plain = write_nifti(Volume(vol.data, vol.affine, vol.axes, meta), tmp_path / "plain.nii.gz")
    assert _ours(plain) == []
    assert read_nifti(plain).meta.get("structures") is None
    (_d, back_kwargs, _t), = get_reader(str(plain))(str(plain))
    assert "colormap" not in back_kwargs and "structures" not in back_kwargs["metadata"]


def test_a_foreign_comment_extension_is_kept_and_ignored(tmp_path):
    data, kwargs, _ = _cardiac_layer_data()
    out = tmp_path / "c_seg.nii.gz"
    write_labels(str(out), data, kwargs)
    img = nib.load(out)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(structures.NIFTI_ECODE, b"scanner note {not json"))
    nib.save(img, out)
    vol = read_nifti(out)
    assert vol.meta["structures"] == "cardiac"
    rewritten = write_nifti(vol, tmp_path / "r_seg.nii.gz")
    contents = [bytes(e.get_content()) for e in _ours(rewritten)]
    assert b"scanner note {not json" in contents and len(contents) == 2


@pytest.mark.parametrize("name", [n for n in zoo.available() if zoo.card(n).get("task") in structures.TASK_KINDS])
def test_every_segmentation_card_uses_values_the_structures_know(name):
    card = zoo.card(name)
    kind = structures.TASK_KINDS[card["task"]]
    values = {int(v) for v in card["labels"]} - {0}
    assert values <= set(structures.STRUCTURES[kind]), (name, values)
