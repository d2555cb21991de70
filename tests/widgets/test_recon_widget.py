"""The reconstruction dock widget: simulate from an image layer or take k-space + mask, run in a
worker, outputs with the input's geometry and figures against the reference, a cine that follows
the time slider, errors as notifications, cancel. Tiny untrained cascades keep runs short."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.imaging import kspace as K
from napari_medlearn.methods.recon import TASK_2D, TASK_2DT, reconstruction_quality
from napari_medlearn.nets import DeepCascade
from napari_medlearn.widgets.recon import KSPACE, SIMULATE, ReconWidget

TIMEOUT_MS = 60_000


def _save(folder, name, args, task):
    torch.manual_seed(0)
    path = folder / f"{name}.pt"
    zoo.save_checkpoint(DeepCascade(**args), path, "deep_cascade", args, card={"name": name, "task": task})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recon-widget-models")
    return {"2d": _save(folder, "tiny-2d", {"dims": 2, "n_cascades": 2, "n_layers": 2, "width": 4}, TASK_2D),
            "3d": _save(folder, "tiny-2dt", {"dims": 3, "n_cascades": 1, "n_layers": 2, "width": 2,
                                             "share_widths": [1]}, TASK_2DT)}


def _phantom(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[:shape[-2], :shape[-1]]
    img[..., (yy - shape[-2] / 2) ** 2 + (xx - shape[-1] / 2) ** 2 < (shape[-1] / 3) ** 2] = 1.0
    return img + 0.1 * rng.random(shape, dtype=np.float32)


@pytest.fixture
def widget(make_napari_viewer, qtbot, models, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path / "empty-zoo"))
    viewer = make_napari_viewer()
    w = ReconWidget(viewer)
    qtbot.addWidget(w)
    w.device_picker.setCurrentText("cpu")
    return w


def run_and_wait(w, qtbot):
    worker = w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    return worker


def test_simulate_from_an_image(widget, qtbot, errors, models):
    w = widget
    image = _phantom((48, 40))
    layer = w.viewer.add_image(image.copy(), name="scan", scale=(0.8, 1.2), translate=(5.0, -3.0))
    w.image_picker.value = layer
    w.model_picker.add_checkpoint(models["2d"])
    w.acceleration.setValue(4)
    w.centre_lines.setValue(6)
    w.seed.setValue(3)
    run_and_wait(w, qtbot)
    assert not errors, errors
    names = [l.name for l in w.viewer.layers]
    for kind in ("cascade", "zero-filled", "mask", "error", "k-space"):
        assert f"scan [{kind} R=4]" in names, names
    rec = w.viewer.layers["scan [cascade R=4]"]
    assert rec.data.shape == image.shape and rec.visible
    np.testing.assert_allclose(rec.scale, layer.scale)
    np.testing.assert_allclose(rec.translate, layer.translate)
    np.testing.assert_array_equal(layer.data, image)                       # input untouched
    # the simulation is the one the parameters describe
    k, m = K.simulate_acquisition(image, 4, "cartesian", 6, 3)
    np.testing.assert_array_equal(w.viewer.layers["scan [mask R=4]"].data, np.broadcast_to(m, image.shape))
    np.testing.assert_allclose(w.viewer.layers["scan [zero-filled R=4]"].data, np.abs(K.ifft2c(k)), atol=1e-5)
    np.testing.assert_allclose(w.viewer.layers["scan [error R=4]"].data, np.abs(rec.data - image), atol=1e-6)
    q = reconstruction_quality(image, w.result.image)
    assert w.metric_text("cascade", "PSNR (dB)") == f"{q['psnr_db']:.2f}"
    assert w.metric_text("zero-filled", "SSIM") == f"{reconstruction_quality(image, w.result.zero_filled)['ssim']:.3f}"
    assert w.metric_text("cascade", "PSNR, this image") == "\u2013"              # a single image has no frames
    assert "tiny-2d" in w.info.text()
    assert w.runner.status.text() == "done"
    # a second run refreshes the same layers instead of piling up new ones
    n = len(w.viewer.layers)
    w.seed.setValue(4)
    run_and_wait(w, qtbot)
    assert len(w.viewer.layers) == n and not errors
    # ... except one the user renamed: it is theirs now and keeps its data
    kept = w.viewer.layers["scan [cascade R=4]"]
    kept.name = "my favourite"
    before = kept.data.copy()
    w.seed.setValue(5)
    run_and_wait(w, qtbot)
    np.testing.assert_array_equal(w.viewer.layers["my favourite"].data, before)
    assert "scan [cascade R=4]" in [layer.name for layer in w.viewer.layers] and not errors


def test_a_z_scored_image_layer_keeps_its_signs(widget, qtbot, errors, models):
    from napari_medlearn.methods.recon import simulate

    w = widget
    image = (_phantom((48, 40)) - 0.5) * 2.0                   # background about -1, as a z-scored scan
    layer = w.viewer.add_image(image.copy(), name="z")
    w.image_picker.value = layer
    w.model_picker.add_checkpoint(models["2d"])
    w.acceleration.setValue(4)
    w.centre_lines.setValue(6)
    run_and_wait(w, qtbot)
    assert not errors, errors
    k, m, offset = simulate(image, 4, "cartesian", 6, w.seed.value())
    zf = w.viewer.layers["z [zero-filled R=4]"]
    np.testing.assert_allclose(zf.data, K.ifft2c(k).real + offset, atol=1e-5)
    rec = w.viewer.layers["z [cascade R=4]"]
    assert rec.data.min() < -0.5 and rec.contrast_limits[0] == pytest.approx(float(image.min()))
    np.testing.assert_allclose(w.viewer.layers["z [error R=4]"].data, np.abs(rec.data - image), atol=1e-6)
    first = w.metric_text("cascade", "PSNR (dB)")
    assert first == f"{reconstruction_quality(image, rec.data)['psnr_db']:.2f}"
    # the simulated k-space layer carries its offset: reconstructing it again gives the same image
    kspace_layer = w.viewer.layers["z [k-space R=4]"]
    assert kspace_layer.metadata["offset"] == pytest.approx(offset)
    w.mode.setCurrentText(KSPACE)
    w.kspace_picker.value = kspace_layer
    w.mask_picker.value = w.viewer.layers["z [mask R=4]"]
    run_and_wait(w, qtbot)
    assert not errors, errors
    assert w.result.signed and w.metric_text("cascade", "PSNR (dB)") == first
    np.testing.assert_array_equal(layer.data, image)                       # input untouched


def test_kspace_and_mask_input(widget, qtbot, errors, models, tmp_path):
    w = widget
    image = _phantom((2, 40, 32))
    k, m = K.simulate_acquisition(image, 3, "equispaced", 4, seed=1)
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "m.npy", m)
    layer = w.load_kspace(str(tmp_path / "k.npy"), str(tmp_path / "m.npy"))
    assert layer.name == "k [k-space]" and np.array_equal(layer.metadata["kspace"], k)
    assert w.mode.currentText() == KSPACE and w.mask_picker.value.name == "k [mask]"
    assert not w.image_picker.native.isVisible() or not w.isVisible()
    w.model_picker.add_checkpoint(models["2d"])
    run_and_wait(w, qtbot)
    assert not errors, errors
    rec = w.viewer.layers["k [cascade R=3.08]"]
    assert rec.data.shape == image.shape
    assert "k [error R=3.08]" not in [l.name for l in w.viewer.layers]     # no reference, no error map
    assert w.metric_text("cascade", "PSNR (dB)") == "\u2013"
    assert "no reference" in w.info.text()
    kk = K.fft2c(w.result.image.astype(np.complex128))
    mm = np.broadcast_to(m, k.shape)
    assert np.abs(kk[mm] - k[mm]).max() < 1e-6 * np.abs(k).max()       # the measured lines are kept


def test_cine_follows_the_time_slider(widget, qtbot, errors, models):
    w = widget
    cine = _phantom((5, 32, 32))
    cine[2, 10:20, 10:20] = 3.0                                         # frame 2 differs
    w.viewer.add_image(cine, name="cine", metadata={"axes": ("t", "y", "x")})
    assert w.dynamic.isChecked()                                        # guessed from the axes
    w.model_picker.add_checkpoint(models["3d"])
    w.centre_lines.setValue(2)
    run_and_wait(w, qtbot)
    assert not errors, errors
    assert w.result.axes == "tyx" and w.result.model_name == "tiny-2dt (file tiny-2dt.pt)"
    masks = w.viewer.layers["cine [mask R=4]"].data
    assert not np.array_equal(masks[0], masks[1])                       # one mask per frame
    rec = w.viewer.layers["cine [cascade R=4]"]
    assert rec.data.shape == cine.shape
    w.viewer.dims.set_current_step(0, 0)
    first = w.metric_text("cascade", "PSNR, this image")
    w.viewer.dims.set_current_step(0, 2)
    qtbot.waitUntil(lambda: w.metric_text("cascade", "PSNR, this image") != first, timeout=5000)
    expected = reconstruction_quality(cine[2], w.result.image[2])["psnr_db"]
    assert w.metric_text("cascade", "PSNR, this image") == f"{expected:.2f}"
    assert w.metric_text("cascade", "PSNR (dB)") == f"{reconstruction_quality(cine, w.result.image)['psnr_db']:.2f}"


@pytest.mark.parametrize("case", ["nan", "mask", "no-model"])
def test_bad_input_is_a_notification_and_adds_nothing(widget, qtbot, errors, models, tmp_path, monkeypatch, case):
    w = widget
    if case == "nan":
        data = _phantom((32, 32))
        data[3, 3] = np.nan
        w.viewer.add_image(data, name="bad")
        w.model_picker.add_checkpoint(models["2d"])
    elif case == "mask":
        k, _ = K.simulate_acquisition(_phantom((32, 32)), 4)
        np.save(tmp_path / "k.npy", k)
        np.save(tmp_path / "m.npy", np.ones((5, 32), bool))
        w.load_kspace(str(tmp_path / "k.npy"), str(tmp_path / "m.npy"))
        w.model_picker.add_checkpoint(models["2d"])
    else:
        w.viewer.add_image(_phantom((32, 32)), name="fine")
        monkeypatch.setattr(zoo, "available", lambda task=None: [])    # nothing shipped or imported
        w.model_picker.refresh()
    n_layers = len(w.viewer.layers)
    run_and_wait(w, qtbot)
    assert len(errors) == 1, errors
    assert {"nan": "NaN", "mask": "does not broadcast", "no-model": "no reconstruction model"}[case] in errors[0]
    assert len(w.viewer.layers) == n_layers and w.result is None
    assert w.runner.run_button.isEnabled()


def test_cancel_stops_the_run(widget, qtbot, errors, models):
    w = widget
    w.viewer.add_image(_phantom((40, 32, 32)), name="stack")
    w.dynamic.setChecked(False)
    w.model_picker.add_checkpoint(models["2d"])
    n_layers = len(w.viewer.layers)
    w.run()
    assert w.running
    w.cancel()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert len(w.viewer.layers) == n_layers and w.result is None
    assert w.runner.status.text() == "cancelled" and not errors


def test_mode_switch_shows_the_right_inputs(widget):
    w = widget
    w.show()
    w.mode.setCurrentText(KSPACE)
    assert w.kspace_picker.native.isVisible() and not w.pattern.isVisible()
    w.mode.setCurrentText(SIMULATE)
    assert w.pattern.isVisible() and not w.kspace_picker.native.isVisible()
