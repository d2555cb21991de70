"""The super-resolution dock widget: outputs on the result's grid overlaying the input, the
cubic-spline baseline beside it, cines, fusion, errors as notifications, Cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.imaging.volume import Volume
from napari_medlearn.methods import sr as M
from napari_medlearn.nets.sr import MultiInputSRNet, SRNet
from napari_medlearn.widgets.sr import FUSE, SuperResolutionWidget

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sr-widget-models")
    torch.manual_seed(0)
    a1 = {"factor": 3, "width": 2, "n_lr": 1, "n_hr": 1}
    a2 = {"n_inputs": 2, "width": 2, "n_stream": 1, "n_fused": 1}
    p1, p2 = folder / "tiny-sr.pt", folder / "tiny-fuse.pt"
    zoo.save_checkpoint(SRNet(**a1), p1, "sr_net", a1, card={"name": "tiny-sr", "task": M.TASK_SINGLE})
    zoo.save_checkpoint(MultiInputSRNet(**a2), p2, "sr_multi_input", a2,
                        card={"name": "tiny-fuse", "task": M.TASK_MULTI})
    return {"single": p1, "fused": p2}


@pytest.fixture
def widget(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path / "empty-zoo"))
    viewer = make_napari_viewer()
    w = SuperResolutionWidget(viewer)
    qtbot.addWidget(w)
    w.device_picker.setCurrentText("cpu")
    return w


def _add_stack(viewer, shape=(4, 14, 12), name="stack", spacing=(6.0, 1.5, 1.5), seed=0):
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    vol = Volume.from_spacing(data, spacing, origin=(10.0, -5.0, 30.0))
    d, kw, _ = vol.to_layer_data(name=name)
    return viewer.add_image(d.copy(), **kw), data


def run_and_wait(w, qtbot):
    worker = w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    return worker


def test_one_stack_overlays_its_source_with_the_spline_beside_it(widget, qtbot, errors, models):
    w = widget
    layer, data = _add_stack(w.viewer)
    w.image_picker.value = layer
    w.model_picker.add_checkpoint(models["single"])
    w.factor.setValue(3)
    run_and_wait(w, qtbot)
    assert not errors, errors
    sr, spline = w.viewer.layers["stack [SR x3]"], w.viewer.layers["stack [cubic spline x3]"]
    assert sr.data.shape == spline.data.shape == (12, 14, 12)
    np.testing.assert_allclose(sr.scale, (2.0, 1.5, 1.5))
    # the same extent: the first input slice's lower face is the first output slice's lower face
    lower_in = layer.data_to_world((-0.5, 0, 0))
    lower_out = sr.data_to_world((-0.5, 0, 0))
    np.testing.assert_allclose(lower_out, lower_in, atol=1e-6)
    np.testing.assert_allclose(sr.data_to_world((11.5, 13, 11)), layer.data_to_world((3.5, 13, 11)), atol=1e-6)
    np.testing.assert_array_equal(layer.data, data)                       # input untouched
    assert sr.metadata["model"] and sr.visible and not spline.visible
    # a second run replaces its outputs, but not one the user renamed (theirs now)
    sr.name = "my SR"
    run_and_wait(w, qtbot)
    names = [x.name for x in w.viewer.layers]
    assert "my SR" in names and names.count("stack [SR x3]") == 1 and names.count("stack [cubic spline x3]") == 1


def test_a_cine_is_done_frame_by_frame(widget, qtbot, errors, models):
    w = widget
    cine = np.random.default_rng(1).random((2, 3, 10, 10)).astype(np.float32)
    layer = w.viewer.add_image(cine, name="cine", scale=(30.0, 8.0, 1.5, 1.5),
                               metadata={"axes": ("t", "z", "y", "x")})
    w.image_picker.value = layer
    w.model_picker.add_checkpoint(models["single"])
    w.factor.setValue(3)
    run_and_wait(w, qtbot)
    assert not errors, errors
    out = w.viewer.layers["cine [SR x3]"]
    assert out.data.shape == (2, 9, 10, 10)
    np.testing.assert_allclose(out.scale[1:], (8.0 / 3, 1.5, 1.5))


def test_fusion_of_two_layers(widget, qtbot, errors, models):
    w = widget
    ref, data = _add_stack(w.viewer, name="axial")
    other = w.viewer.add_image(data.copy(), name="second", metadata=dict(ref.metadata), scale=ref.scale,
                               translate=ref.translate)
    w.set_fusion(ref, [other])
    w.model_picker.add_checkpoint(models["fused"])
    w.factor.setValue(3)
    run_and_wait(w, qtbot)
    assert not errors, errors
    out = w.viewer.layers["axial [SR fused x3]"]
    assert out.data.shape == (12, 14, 12)
    assert "axial [average of interpolated stacks fused x3]" in [l.name for l in w.viewer.layers]


def test_errors_are_notifications(widget, qtbot, errors, models):
    w = widget
    flat = w.viewer.add_image(np.zeros((10, 10), np.float32), name="flat")
    w.image_picker.value = flat
    w.model_picker.add_checkpoint(models["single"])
    w.factor.setValue(3)
    assert w.run() is None
    assert len(errors) == 1 and "2-D" in errors[0]
    nan, _ = _add_stack(w.viewer, name="nan")
    nan.data = np.full((4, 14, 12), np.nan, np.float32)
    w.image_picker.value = nan
    run_and_wait(w, qtbot)                              # raised by the method, in the worker
    assert len(errors) == 2 and "NaN" in errors[1]
    w.model_picker.add_checkpoint(models["fused"])
    w.mode.setCurrentText(FUSE)
    w.model_picker.add_checkpoint(models["fused"])
    w.image_picker.value = nan
    assert w.run() is None
    assert len(errors) == 3 and "other stack" in errors[2]
    assert not any(l.name.endswith("x3]") for l in w.viewer.layers)


def test_cancel_adds_nothing(widget, qtbot, errors, models, monkeypatch):
    w = widget
    monkeypatch.setattr(M, "TILE", 2)
    layer, _ = _add_stack(w.viewer, shape=(4, 40, 40))
    w.image_picker.value = layer
    w.model_picker.add_checkpoint(models["single"])
    w.factor.setValue(3)
    w.run()
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert "stack [SR x3]" not in [l.name for l in w.viewer.layers]
    assert w.runner.status.text() == "cancelled"
