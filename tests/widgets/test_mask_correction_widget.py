import numpy as np
import pytest

from acnn_helpers import ring_labels, tiny_acnn_checkpoint


@pytest.fixture(scope="module")
def tiny_acnn(tmp_path_factory):
    return tiny_acnn_checkpoint(tmp_path_factory.mktemp("acnn-widget"))


def test_proposal_beside_original_accept_and_reject(make_napari_viewer, qtbot, tiny_acnn, errors):
    from napari_medlearn.widgets.acnn import MaskCorrectionWidget

    viewer = make_napari_viewer()
    lab = ring_labels(shape=(6, 40, 40), spacing=(8.0, 2.0, 2.0))
    lab[3, 18:21, 16:19] = 0                     # a hole
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]   # an oblique plane
    original = viewer.add_labels(lab.copy(), name="mask", scale=(8.0, 2.0, 2.0), translate=(0, 5, 5), affine=tilt)
    w = MaskCorrectionWidget(viewer)
    qtbot.addWidget(w)
    w.model_picker.add_checkpoint(tiny_acnn)
    w.labels_picker.value = original
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert w.runner.status.text() == "done"
    prop, changed = viewer.layers["mask [proposal]"], viewer.layers["mask [changed]"]
    np.testing.assert_array_equal(original.data, lab)                  # the original is untouched
    np.testing.assert_array_equal(changed.data.astype(bool), prop.data != lab)
    assert tuple(prop.scale) == tuple(original.scale) and tuple(prop.translate) == tuple(original.translate)
    for layer in (prop, changed):                                       # on the original, voxel for voxel
        np.testing.assert_allclose(layer.data_to_world((3, 10, 20)), original.data_to_world((3, 10, 20)))
    assert "before" in w.plausibility_label.text() and "LV" in w.volumes_label.text()
    assert w.accept_button.isEnabled()
    accepted = w.accept()
    assert accepted.name == "mask [corrected]" and "mask [proposal]" not in viewer.layers
    assert "mask" in viewer.layers and (accepted.data[3, 18:21, 16:19] == 1).all()
    np.testing.assert_allclose(accepted.data_to_world((3, 10, 20)), original.data_to_world((3, 10, 20)))
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    w.reject()
    assert "mask [proposal]" not in viewer.layers and "mask [changed]" not in viewer.layers
    assert not w.accept_button.isEnabled() and not errors


def test_bad_labels_give_a_notification_and_no_layers(make_napari_viewer, qtbot, tiny_acnn, errors):
    from napari_medlearn.widgets.acnn import MaskCorrectionWidget

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.full((4, 20, 20), 9, np.uint8), name="odd")
    w = MaskCorrectionWidget(viewer)
    qtbot.addWidget(w)
    w.model_picker.add_checkpoint(tiny_acnn)
    w.labels_picker.value = layer
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=60000)
    assert errors and "unknown label values [9]" in str(errors[-1])
    assert [ly.name for ly in viewer.layers] == ["odd"]


def test_a_harmful_proposal_hides_nothing_and_waits_for_the_reviewer(make_napari_viewer, qtbot, errors):
    from napari_medlearn.methods import MaskResult
    from napari_medlearn.widgets.acnn import MaskCorrectionWidget

    viewer = make_napari_viewer()
    lab = ring_labels(shape=(6, 40, 40), spacing=(8.0, 2.0, 2.0))
    cine = np.stack([lab, lab])
    original = viewer.add_labels(cine.copy(), name="mask", scale=(1.0, 8.0, 2.0, 2.0))
    proposal = cine.copy()
    proposal[1][proposal[1] == 1] = 2                        # frame 1: the LV turned to myocardium
    w = MaskCorrectionWidget(viewer)
    qtbot.addWidget(w)
    w.source = original
    w.show_result(MaskResult(labels=proposal, plausibility=0.0, plausibility_before=0.0,
                             changed=proposal != cine, spacing=(8.0, 2.0, 2.0)))
    assert not original.visible                               # nothing removed still shows underneath
    changed = viewer.layers["mask [changed]"]
    assert set(np.unique(changed.data)) == {0, 3}             # moved between structures
    text = w.warning_label.text()
    assert "frame 1: LV cavity removed entirely" in text and "plausibility does not rise" in text
    assert w.table.rowCount() == 2 and "\u2192 0.0" in w.table.item(1, 1).text()
    assert "frame 1" in w.volumes_label.text()
    assert not w.accept_button.isEnabled() and w.accept() is None and "tick" in errors[-1]
    w.seen_check.setChecked(True)
    assert w.accept_button.isEnabled()
    accepted = w.accept()
    assert accepted is not None and original.visible
    np.testing.assert_array_equal(original.data, cine)
