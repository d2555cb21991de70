import numpy as np
import pytest


def disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture
def dock(make_napari_viewer, qtbot):
    from napari_medlearn.widgets.correction import CorrectionWidget

    viewer = make_napari_viewer()
    w = CorrectionWidget(viewer)
    qtbot.addWidget(w)
    return viewer, w


def test_fill_between_slices_on_the_shown_frame_is_one_undo_step(dock):
    viewer, w = dock
    lab = np.zeros((3, 9, 40, 40), np.uint8)
    lab[1, 2][disc((40, 40), (20, 20), 6)] = 2
    lab[1, 6][disc((40, 40), (20, 20), 10)] = 2
    lab[0, 4, :3, :3] = 1
    layer = viewer.add_labels(lab.copy(), name="cine [cardiac]", scale=(1.0, 8.0, 1.5, 1.5))
    w.labels_picker.value = layer
    w.label_spin.setValue(2)
    viewer.dims.set_point(0, 1)
    edits = []
    layer.events.paint.connect(lambda e: edits.append(e))
    n = w.interpolate()
    assert n > 0 and len(edits) == 1                    # the measures' event fires once
    assert (layer.data[1, 4] == 2).sum() > (lab[1, 2] == 2).sum()
    assert np.array_equal(layer.data[0], lab[0]) and np.array_equal(layer.data[2], lab[2])
    assert "frame 1" in w.status.text()
    layer.undo()
    np.testing.assert_array_equal(layer.data, lab)       # one Ctrl+Z takes it all back


def test_margin_uses_the_layers_scale_in_mm(dock):
    viewer, w = dock
    lab = np.zeros((5, 41, 41), np.uint8)
    lab[2, 20, 20] = 1
    layer = viewer.add_labels(lab, name="mask", scale=(8.0, 1.0, 0.5))
    w.labels_picker.value = layer
    w.label_spin.setValue(1)
    w.margin.setValue(2.0)
    w.grow_shrink()
    row = np.nonzero(layer.data[2, 20])[0]
    assert (row.min(), row.max()) == (16, 24) and not layer.data[1].any()


def test_islands_holes_and_smoothing_from_the_dock(dock):
    viewer, w = dock
    lab = np.zeros((4, 40, 40), np.uint8)
    lab[:, 10:30, 10:30] = 3
    lab[:, 18:22, 18:22] = 0
    lab[2, 35, 35] = 3
    layer = viewer.add_labels(lab, name="mask", scale=(2.0, 1.0, 1.0))
    w.labels_picker.value = layer
    w.label_spin.setValue(3)
    w.island_ml.setValue(0.01)
    assert w.remove_islands() == 1 and layer.data[2, 35, 35] == 0
    assert w.fill_holes() == 4 * 16
    assert w.smooth() > 0
    assert len(layer._undo_history) == 3


def test_refusals_are_one_notification_and_change_nothing(dock, errors):
    viewer, w = dock
    viewer.add_image(np.zeros((4, 10, 10)), name="scan")
    assert w.interpolate() == 0 and "choose a Labels layer" in errors[-1] and "'scan' is an image" in errors[-1]
    lab = np.zeros((4, 10, 10), np.uint8)
    lab[1, 3:6, 3:6] = 1
    layer = viewer.add_labels(lab.copy(), name="mask")
    w.labels_picker.value = layer
    w.label_spin.setValue(1)
    assert w.interpolate() == 0 and "at least two slices" in errors[-1]
    w.margin.setValue(-100.0)
    assert w.grow_shrink() == 0 and "larger than the volume" in errors[-1]
    w.label_spin.setValue(2)
    assert w.fill_holes() == 0 and "label 2 is not drawn" in errors[-1]
    np.testing.assert_array_equal(layer.data, lab)
    assert len(layer._undo_history) == 0


def test_paint_within_the_window_keeps_the_stroke_inside_it_in_one_undo_step(dock, qtbot):
    viewer, w = dock
    image = np.zeros((3, 30, 30), np.float32)
    image[:, :, 15:] = 200.0
    viewer.add_image(image, name="scan")
    layer = viewer.add_labels(np.zeros((3, 30, 30), np.uint8), name="mask")
    w.labels_picker.value = layer
    w.image_picker.value = viewer.layers["scan"]
    w.window_low.setValue(100.0)
    w.window_high.setValue(300.0)
    w.window_check.setChecked(True)
    layer.selected_label = 1
    layer.brush_size = 12
    viewer.dims.set_point(0, 1)
    layer.paint((1, 15, 15), 1)                          # a brush dab across the dark/bright edge
    qtbot.waitUntil(lambda: "left as they were" in w.status.text(), timeout=5000)
    painted = layer.data[1] == 1
    assert painted.any() and not painted[:, :15].any()
    assert painted[:, 15:].sum() > 20
    layer.undo()
    assert not layer.data.any()


# -- model hints (issue 39) --------------------------------------------------------------------
def _mouse(layer, kind, position, modifiers=()):
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import (mouse_move_callbacks, mouse_press_callbacks,
                                           mouse_release_callbacks)

    from types import SimpleNamespace

    event = ReadOnlyWrapper(SimpleNamespace(
        type=f"mouse_{kind}", is_dragging=kind == "move", modifiers=list(modifiers),
        position=layer.data_to_world(position), button=1, view_direction=None,
        dims_displayed=[2, 3], handled=False, pos=(0, 0)))
    {"press": mouse_press_callbacks, "move": mouse_move_callbacks,
     "release": mouse_release_callbacks}[kind](layer, event)


def _hint_case(viewer, w):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "methods"))
    from test_refine import _case

    image, labels, truth, probs = _case()
    cine = viewer.add_image(np.stack([image, image]), name="cine", scale=(1.0, 8.0, 1.5, 1.5))
    layer = viewer.add_labels(np.stack([labels, labels]), name="cine [cardiac]", scale=(1.0, 8.0, 1.5, 1.5))
    w.labels_picker.value = layer
    w.image_picker.value = cine
    w.second_channel.value = cine
    viewer.dims.set_point(0, 1)
    w.hint_posteriors[(id(layer), id(cine), 1)] = (probs, (0, 1, 2, 3))   # a model's, cached
    return layer, labels, truth


def test_a_click_in_hint_mode_refines_the_shown_frame_as_one_undo_step(dock):
    viewer, w = dock
    layer, labels, truth = _hint_case(viewer, w)
    before = layer.data.copy()
    w.hint_check.setChecked(True)
    layer.selected_label = 1
    edits = []
    layer.events.paint.connect(lambda e: edits.append(e))
    _mouse(layer, "press", (1, 1, 20, 20))
    _mouse(layer, "release", (1, 1, 20, 20))
    assert len(edits) == 1                                   # the measures follow once
    assert (layer.data[1, 1][truth[1] == 1] == 1).mean() > 0.9
    np.testing.assert_array_equal(layer.data[0], before[0])  # the other frame untouched
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_shift_click_is_negative_and_a_drag_is_a_scribble(dock):
    viewer, w = dock
    layer, labels, truth = _hint_case(viewer, w)
    w.hint_check.setChecked(True)
    layer.selected_label = 1
    _mouse(layer, "press", (1, 0, 20, 20), ["Shift"])        # LV present on slice 0: "not LV here"
    _mouse(layer, "release", (1, 0, 20, 20), ["Shift"])
    assert (layer.data[1, 0][truth[0] == 1] == 1).mean() < 0.1
    _mouse(layer, "press", (1, 1, 17, 20))
    _mouse(layer, "move", (1, 1, 20, 20))
    _mouse(layer, "move", (1, 1, 23, 20))
    _mouse(layer, "release", (1, 1, 23, 20))
    assert (layer.data[1, 1][truth[1] == 1] == 1).mean() > 0.9
    assert "scribble" in w.status.text()


def test_a_hint_of_a_label_the_task_lacks_changes_nothing(dock, errors):
    viewer, w = dock
    layer, labels, truth = _hint_case(viewer, w)
    before = layer.data.copy()
    w.hint_check.setChecked(True)
    layer.selected_label = 7
    _mouse(layer, "press", (1, 1, 20, 20))
    _mouse(layer, "release", (1, 1, 20, 20))
    np.testing.assert_array_equal(layer.data, before)
    assert len(errors) == 1 and "not one of this task's labels" in errors[0]


def test_a_click_on_a_lesion_session_uses_both_channels_posteriors(dock):
    from napari_medlearn.methods.refine import Hint

    viewer, w = dock
    lab = np.zeros((12, 40, 40), np.uint8)
    core = np.zeros(lab.shape, bool)
    core[3:9, 14:26, 14:26] = True
    img = np.where(core, 3.0, 0.0).astype(np.float32) + np.random.default_rng(1).normal(0, 0.05, lab.shape)
    flair = viewer.add_image(img, name="flair")
    t1c = viewer.add_image(img.copy(), name="t1c")
    layer = viewer.add_labels(lab, name="flair [lesions]", metadata={"postprocess": {}})
    w.labels_picker.value = layer
    assert w.hint_task.currentText() == "lesions"
    w.image_picker.value = flair
    w.second_channel.value = t1c
    probs = np.zeros((4,) + lab.shape, np.float32)
    probs[0], probs[1] = np.where(core, 0.6, 0.9), np.where(core, 0.4, 0.1)
    w.hint_posteriors[(id(layer), id(flair), id(t1c))] = (probs, (0, 1, 2, 4))
    n = w.apply_hint(Hint((6, 20, 20), 1, True))
    assert n > 0.8 * core.sum() and (layer.data[core] == 1).mean() > 0.8   # spread through the slices


def test_a_lesion_hint_without_its_second_channel_is_refused(dock, errors):
    from napari_medlearn.methods.refine import Hint

    viewer, w = dock
    flair = viewer.add_image(np.zeros((12, 40, 40), np.float32), name="flair")
    layer = viewer.add_labels(np.zeros((12, 40, 40), np.uint8), name="flair [lesions]", metadata={"postprocess": {}})
    w.labels_picker.value = layer
    w.image_picker.value = flair
    w.second_channel.value = flair
    assert w.apply_hint(Hint((6, 20, 20), 1, True)) == 0
    assert len(errors) == 1 and "second channel" in errors[0] and not layer.data.any()
