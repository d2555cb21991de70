"""Review traps and defaults that fit the data: a sample opens with its image active, named axes,
its truth in the structure colours and its matching model chosen; a model made for other images
is said once (dock and notification); pickers leave a sample's truth for the work; a refused Run
does not keep the previous run's status."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_medlearn.imaging import structures
from napari_medlearn.widgets import _fit
from napari_medlearn.widgets.acnn import MaskCorrectionWidget
from napari_medlearn.widgets.cardiac import CardiacWidget


@pytest.fixture
def warnings_shown(monkeypatch):
    shown = []
    monkeypatch.setattr(_fit, "show_warning", shown.append)
    return shown


def test_the_cardiac_sample_opens_ready_to_review(make_napari_viewer, qtbot, warnings_shown, monkeypatch):
    from napari_medlearn.samples import cardiac_phantom

    small = cardiac_phantom.cardiac_cine_phantom
    monkeypatch.setattr(cardiac_phantom, "cardiac_cine_phantom", lambda seed: small(seed=seed, n_frames=3, matrix=64))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-medlearn", "cardiac_cine")
    image, truth = viewer.layers["cardiac cine (phantom)"], viewer.layers["cardiac cine (phantom) truth"]
    qtbot.waitUntil(lambda: viewer.layers.selection.active is image, timeout=5000)
    assert viewer.dims.axis_labels == ("t", "z", "y", "x")
    np.testing.assert_allclose(truth.colormap.map(1), structures.color_dict("cardiac")[1])
    w = CardiacWidget(viewer)
    qtbot.addWidget(w)
    assert w.model_picker.model() == "cardiac-fcn-phantom"       # the model made for phantoms
    assert w.fit.label.text() == "" and warnings_shown == []
    # mask correction: the truth is the only labels layer; a visible one of the user's is preferred
    mc = MaskCorrectionWidget(viewer)
    qtbot.addWidget(mc)
    edited = viewer.add_labels(np.zeros(truth.data.shape, np.uint8), name="my labels", **{
        k: getattr(truth, k) for k in ("scale", "translate")})
    assert mc.labels_picker.value is edited
    viewer.layers.selection.active = truth
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="scratch", visible=False)
    assert mc.labels_picker.value is edited


def test_a_model_made_for_other_images_is_said_once(make_napari_viewer, qtbot, warnings_shown):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 3, 16, 16), np.float32), name="patient cine",
                     metadata={"image_kind": "real"})
    w = CardiacWidget(viewer)
    qtbot.addWidget(w)
    assert w.fit.label.text() == ""                       # the default ACDC model saw real scans
    w.model_picker.setCurrentIndex(w.model_picker.findData("cardiac-fcn-phantom"))
    assert "trained on phantom images" in w.fit.label.text() and "'patient cine' is a real image" in w.fit.label.text()
    assert len(warnings_shown) == 1
    w.model_picker.setCurrentIndex(w.model_picker.findData("cardiac-fcn-acdc"))
    assert w.fit.label.text() == "" and not w.fit.label.isVisibleTo(w)
    w.model_picker.setCurrentIndex(w.model_picker.findData("cardiac-fcn-phantom"))
    assert w.fit.label.text() and len(warnings_shown) == 1   # once per model and layer


def test_card_kinds_come_from_the_training_data():
    assert _fit.card_image_kinds({"training": {"data": "40 cardiac cine phantoms"}}) == {"phantom"}
    assert _fit.card_image_kinds({"training": {"data": "ACDC patients plus 8 phantoms"}}) == {"phantom", "real"}
    assert _fit.card_image_kinds({"image_kinds": ["real"], "training": {"data": "phantoms"}}) == {"real"}
    assert _fit.card_image_kinds({}) == set()


def test_a_refused_run_does_not_keep_the_last_runs_status(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    w = CardiacWidget(viewer)
    qtbot.addWidget(w)
    w.runner.status.setText("done")                         # what the previous run left
    qtbot.mouseClick(w.runner.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.runner.status.text() != "", timeout=2000)
    assert w.runner.status.text() == f"not run: {errors[-1]}" and "no image layer" in errors[-1]
