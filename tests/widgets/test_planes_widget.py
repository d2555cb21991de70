"""The standard-plane dock widget: a video in, score plot + checklist + saliency and boxes layers
out, synced with the time slider both ways, live mode, errors as notifications, cancel. A tiny
SonoNet whose last bias favours one plane keeps runs short and predictions known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_medlearn import zoo
from napari_medlearn.nets import SONONET_CLASSES, SonoNet
from napari_medlearn.widgets.planes import PlanesWidget

from sononet_helpers import TINY_SIZE, TINY_SONONET, blob_video

TIMEOUT_MS = 60_000
FAVOURED = "Brain (Tv.)"


@pytest.fixture(scope="module")
def tiny_planes(tmp_path_factory):
    """A tiny untrained SonoNet that calls every frame Brain (Tv.) (its last BN bias raised)."""
    torch.manual_seed(0)
    net = SonoNet(**TINY_SONONET).eval()
    with torch.no_grad():   # small category maps that still vary over the image, one class ahead
        net.adaptation[3].weight.mul_(1e-3)
        net.adaptation[4].running_var.fill_(1.0)
        net.adaptation[4].bias[SONONET_CLASSES.index(FAVOURED)] += 3.0
    path = tmp_path_factory.mktemp("planes-widget") / "tiny-planes.pt"
    zoo.save_checkpoint(net, path, "sononet", TINY_SONONET, card={
        "name": "tiny-planes", "task": "us-standard-planes", "n_classes": 14,
        "class_names": list(SONONET_CLASSES), "input": {"size": TINY_SIZE, "intensity": "zscore255"}})
    return path


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_planes, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path / "empty-zoo"))
    viewer = make_napari_viewer()
    w = PlanesWidget(viewer)
    qtbot.addWidget(w)
    w.device_picker.setCurrentText("cpu")
    w.model_picker.add_checkpoint(tiny_planes)
    return w


@pytest.fixture
def done(widget, qtbot, errors):
    video = blob_video(t=6, shape=(40, 56))
    layer = widget.viewer.add_image(video.copy(), name="sweep", scale=(1.0, 0.5, 0.5), translate=(0, 3.0, -2.0))
    widget.video_picker.value = layer
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert not errors, errors
    return widget


def test_outputs_follow_the_video(done):
    w = done
    src = w.viewer.layers["sweep"]
    np.testing.assert_array_equal(src.data, blob_video(t=6, shape=(40, 56)))      # input untouched
    res = w.result
    assert res.probabilities.shape == (6, 14) and set(res.predicted_names) == {FAVOURED}
    sal = w.viewer.layers["sweep [SonoNet saliency]"]
    assert sal is w.saliency_layer and sal.data.shape == (6, 40, 56)
    assert tuple(sal.contrast_limits) == (0.0, 1.0) and sal.blending == "additive"
    np.testing.assert_allclose(sal.scale, src.scale)
    np.testing.assert_allclose(sal.translate, src.translate)
    boxes = w.viewer.layers["sweep [SonoNet boxes]"]
    valid = np.flatnonzero(np.isfinite(res.boxes).all(1))
    assert len(boxes.data) == len(valid) > 0
    for rect, t in zip(boxes.data, valid):
        assert rect.shape == (4, 3) and np.all(rect[:, 0] == t)        # one rectangle on its own frame
        y0, x0, y1, x1 = res.boxes[t]
        assert np.isclose(rect[:, 1].min(), y0 - 0.5) and np.isclose(rect[:, 2].max(), x1 - 0.5)
    assert list(boxes.features["plane"]) == [FAVOURED] * len(valid)
    np.testing.assert_allclose(boxes.scale, src.scale)
    # the plot has the favoured class's curve; the checklist ticks it with its best frame
    assert FAVOURED in w.score_lines
    np.testing.assert_allclose(w.score_lines[FAVOURED].get_ydata(), res.probabilities[:, 5])
    assert w.found_planes() == {FAVOURED: res.best_frames[FAVOURED]}
    assert w.checklist.count() == 13
    texts = [w.checklist.item(i).text() for i in range(w.checklist.count())]
    assert texts[0].startswith(f"{FAVOURED}: frame {res.best_frames[FAVOURED]}")
    assert "Lips: not found" in texts


def test_time_slider_plot_and_checklist_are_synced(done, qtbot):
    from matplotlib.backend_bases import MouseEvent

    w = done
    src = w.viewer.layers["sweep"]
    w.viewer.dims.set_point(0, 4.0)
    assert w.current_frame() == 4 and list(w.time_line.get_xdata()) == [4, 4]
    assert w.frame_label.text() == f"frame 4: {FAVOURED} ({w.result.probabilities[4, 5]:.2f})"
    # a click on the plot at frame 2 moves the slider there
    ax = w.canvas.axes
    w.canvas.draw()
    x, y = ax.transData.transform((2.2, 0.5))
    event = MouseEvent("button_press_event", w.canvas, x, y, button=1)
    w.canvas.callbacks.process("button_press_event", event)
    assert w.current_frame(src) == 2 and list(w.time_line.get_xdata()) == [2, 2]
    # a click on a found plane jumps to its best frame
    best = w.result.best_frames[FAVOURED]
    w.viewer.dims.set_point(0, 5.0 if best != 5 else 0.0)
    item = w.checklist.item(0)
    w.checklist.itemClicked.emit(item)
    assert w.current_frame(src) == best == item.data(Qt.UserRole)


def test_live_mode_classifies_the_frame_under_the_slider(done, qtbot):
    w = done
    w.viewer.dims.set_point(0, 1.0)
    w.live_check.setChecked(True)
    qtbot.waitUntil(lambda: w.live_result is not None and w.live_result[0] == 1, timeout=TIMEOUT_MS)
    assert w.live_result[1] == FAVOURED
    np.testing.assert_allclose(w.live_result[2], w.result.probabilities[1, 5], atol=1e-4)
    assert FAVOURED in w.live_label.text()
    for f in (2, 3, 4):   # faster than the model: the last position is classified in the end
        w.viewer.dims.set_point(0, float(f))
    qtbot.waitUntil(lambda: w.live_result[0] == 4 and w._live_worker is None, timeout=TIMEOUT_MS)
    w.live_check.setChecked(False)
    assert w.live_label.text() == ""


def test_rerun_replaces_outputs_and_rgb_video(widget, qtbot, errors):
    w = widget
    rgb = np.repeat(blob_video(t=3, shape=(36, 48))[..., None], 3, axis=-1)
    layer = w.viewer.add_image((rgb * 120).astype(np.uint8), name="rgb", rgb=True)
    w.video_picker.value = layer
    for _ in range(2):
        w.run()
        qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert not errors, errors
    names = [l.name for l in w.viewer.layers]
    assert names.count("rgb [SonoNet saliency]") == 1 and names.count("rgb [SonoNet boxes]") == 1
    assert w.saliency_layer.data.shape == (3, 36, 48)


def test_bad_inputs_are_notifications(widget, qtbot, errors, monkeypatch):
    w = widget
    assert w.run() is None and "no video layer" in errors[-1]
    w.viewer.add_image(np.zeros((2, 3, 20, 20), np.float32), name="4d")
    w.video_picker.value = w.viewer.layers["4d"]
    assert w.run() is None and "2D video" in errors[-1]
    bad = blob_video(t=3, shape=(30, 40))
    bad[1, 3, 3] = np.nan
    w.viewer.add_image(bad, name="nan")
    w.video_picker.value = w.viewer.layers["nan"]
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert "NaN" in errors[-1] or "finite" in errors[-1]
    assert w.saliency_layer is None and w.runner.status.text().startswith("failed")
    # no model at all: nothing shipped or imported, no checkpoint
    monkeypatch.setattr(zoo, "available", lambda *args, **kwargs: [])
    w.model_picker._checkpoints.clear()
    w.model_picker.refresh()
    assert w.model_picker.model() is None
    assert w.run() is None and "no standard-plane model" in errors[-1]


def test_cancel_adds_nothing(widget, qtbot, errors):
    w = widget
    w.viewer.add_image(blob_video(t=12, shape=(40, 56)), name="long")
    n_layers = len(w.viewer.layers)
    w.run()
    assert w.running
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert len(w.viewer.layers) == n_layers and w.result is None
    assert w.runner.status.text() == "cancelled" and not errors


def test_single_frame_image(widget, qtbot, errors):
    w = widget
    frame = blob_video(t=1, shape=(40, 56))[0]
    layer = w.viewer.add_image(frame.copy(), name="still", scale=(0.3, 0.3))
    w.video_picker.value = layer
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert not errors, errors
    assert w.result.frames == 1 and w.saliency_layer.data.shape == (40, 56)
    assert all(rect.shape == (4, 2) for rect in w.boxes_layer.data)
    np.testing.assert_allclose(w.saliency_layer.scale, (0.3, 0.3))
    assert w.current_frame() == 0 and w.frame_label.text().startswith(f"frame 0: {FAVOURED}")
    np.testing.assert_array_equal(layer.data, frame)
