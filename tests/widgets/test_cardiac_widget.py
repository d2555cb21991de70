"""The cardiac dock widget: run in a worker, overlay, live measures after hand edits, errors,
cancel, save and export. A tiny untrained BaiFCN keeps runs to a fraction of a second; its
labels are arbitrary, so edits set known regions and compare against known volumes."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_medlearn import zoo
from napari_medlearn.batch import REVIEW_COLUMNS
from napari_medlearn.imaging.measures import CARDIAC_MEASURES, display_name
from napari_medlearn.imaging.volume import Volume, affine_from_spacing
from napari_medlearn.methods.report import CARDIAC_COLUMNS
from napari_medlearn.nets import BaiFCN
from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom
from napari_medlearn.widgets._common import TaskRunner
from napari_medlearn.widgets.cardiac import CardiacWidget

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    args = {"filters": (4, 4, 4, 4, 4), "blocks": (1, 1, 1, 1, 1), "same_dim": 4, "fc": 4}
    model = BaiFCN(**args)
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    zoo.save_checkpoint(model, path, "bai_fcn", args, card={
        "name": "tiny", "task": "cardiac-segmentation",
        "input": {"in_plane_spacing_mm": 1.5}, "n_classes": 4})
    return path


@pytest.fixture(scope="module")
def cine():
    """A 3-frame 64x64 phantom with an off-origin affine, as napari layer kwargs."""
    ph = cardiac_cine_phantom(seed=1, n_frames=3, matrix=64)
    affine = affine_from_spacing(ph.spacing, origin=(-40.0, 25.0, 12.5))
    kwargs = Volume(ph.image, affine, ("t", "z", "y", "x"), {"source": "phantom"}).layer_kwargs()
    kwargs["scale"] = (1.0,) + tuple(kwargs["scale"][1:])
    return ph.image, kwargs


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_checkpoint, cine):
    viewer = make_napari_viewer()
    image, kwargs = cine
    viewer.add_image(image.copy(), name="cine", **kwargs)
    w = CardiacWidget(viewer)
    qtbot.addWidget(w)
    w.model_picker.add_checkpoint(tiny_checkpoint)
    w.device_picker.setCurrentText("cpu")
    return w


def run_and_wait(w, qtbot):
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)


@pytest.fixture
def done(widget, qtbot, errors):
    run_and_wait(widget, qtbot)
    assert not errors, errors
    assert widget.labels_layer is not None
    return widget


def frame_ml(w) -> float:
    """Volume of one whole frame in mL."""
    shape = w.labels_layer.data.shape[1:]
    return float(np.prod(shape) * np.prod(w.spacing) / 1000.0)


def wait_for_lvedv(w, qtbot, expected: float) -> None:
    """The measures follow an edit on the next event-loop turn (napari emits `paint` first)."""
    qtbot.waitUntil(lambda: w.measures.get("LVEDV_mL") == pytest.approx(expected), timeout=5000)


def test_picker_lists_image_layers_only_and_follows_the_viewer(widget):
    viewer = widget.viewer
    assert [c.name for c in widget.image_picker.choices] == ["cine"]
    extra = viewer.add_image(np.zeros((4, 4)), name="other")
    viewer.add_labels(np.zeros((4, 4), dtype=np.uint8), name="not an image")
    assert [c.name for c in widget.image_picker.choices] == ["cine", "other"]
    extra.name = "renamed"
    native = widget.image_picker.native
    assert [native.itemText(i) for i in range(native.count())] == ["cine", "renamed"]
    viewer.layers.remove(extra)
    assert [c.name for c in widget.image_picker.choices] == ["cine"]


def test_run_adds_labels_that_overlay_the_input(done, cine):
    w = done
    viewer = w.viewer
    source = viewer.layers["cine"]
    np.testing.assert_array_equal(source.data, cine[0])  # input untouched
    labels = viewer.layers["cine [cardiac]"]
    assert labels is w.labels_layer
    assert labels.data.shape == source.data.shape and labels.data.dtype == np.uint8
    np.testing.assert_allclose(labels.scale, source.scale)
    np.testing.assert_allclose(labels.translate, source.translate)
    np.testing.assert_allclose(labels.affine.affine_matrix, source.affine.affine_matrix)
    np.testing.assert_allclose(labels.metadata["affine"], source.metadata["affine"])
    assert set(np.unique(labels.data)) <= {0, 1, 2, 3}

    prob = w.probability_layer
    assert prob.visible is False and tuple(prob.contrast_limits) == (0.0, 1.0)
    assert prob.data.shape == source.data.shape
    np.testing.assert_allclose(prob.scale, source.scale)

    # the table shows the measures of the labels (an untrained model may find "no heart": dashes)
    for key in CARDIAC_MEASURES:
        v = w.measures[key]
        assert w.measure_text(display_name(key)) == ("\u2013" if np.isnan(v) else f"{v:.1f}")
    assert w.measure_text("ED frame") == str(w.measures["ED_frame"])
    assert w.measure_text("ES frame") == str(w.measures["ES_frame"])
    assert w.qc_label.text().startswith("QC:")
    assert len(w.lv_line.get_xdata()) == len(w.rv_line.get_xdata()) == 3
    assert w.runner.status.text() == "done" and w.runner.run_button.isEnabled()


def test_hand_edits_update_the_measures(done, qtbot):
    w = done
    layer = w.labels_layer
    full = frame_ml(w)
    before = w.measure_text("LVEDV (mL)")
    assert before != f"{full:.1f}"  # nothing segments a whole frame as LV cavity

    # data_setitem (what the fill and paint tools call) emits `paint`: frame 0 all LV cavity,
    # and some myocardium in frame 1 so that QC still sees a heart
    idx = np.nonzero(np.ones(layer.data.shape[1:], dtype=bool))
    layer.data_setitem((np.zeros_like(idx[0]),) + idx, 1)
    layer.data_setitem((np.array([1, 1]), np.array([5, 5]), np.array([30, 31]), np.array([30, 30])), 2)
    wait_for_lvedv(w, qtbot, full)
    assert w.measure_text("LVEDV (mL)") == f"{full:.1f}"
    assert w.measure_text("ED frame") == "0"

    # the brush: erase slice 5 of frame 0 with a brush wider than the slice
    layer.brush_size = 1000
    layer.paint((0, 5, 32, 32), 0)
    wait_for_lvedv(w, qtbot, full * 10 / 11)
    assert w.measure_text("LVEDV (mL)") == f"{full * 10 / 11:.1f}"

    # new data (the `data` event): nothing left -> no measures and a QC flag
    layer.data = np.zeros_like(layer.data)
    qtbot.waitUntil(lambda: np.isnan(w.measures["LVEDV_mL"]), timeout=5000)
    assert np.isnan(w.measures["LVEDV_mL"]) and w.measure_text("LVEDV (mL)") == "\u2013"
    assert "no heart" in w.qc_label.text()

    # in-place change announced with set_data (debounced)
    layer.data[1, :3] = 1
    layer.data[2, 5, 30, 30] = 2
    layer.events.set_data()
    wait_for_lvedv(w, qtbot, full * 3 / 11)
    assert w.measure_text("ED frame") == "1"


@pytest.mark.parametrize("case", ["2d", "nan"])
def test_bad_input_is_a_notification_and_adds_nothing(widget, qtbot, errors, case):
    viewer = widget.viewer
    if case == "2d":
        data = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    else:
        data = np.ones((2, 3, 32, 32), dtype=np.float32)
        data[1, 1, 5, 5] = np.nan
    bad = viewer.add_image(data, name="bad")
    before = data.copy()
    n_layers = len(viewer.layers)
    widget.image_picker.value = bad
    run_and_wait(widget, qtbot)
    assert len(errors) == 1
    assert ("2D" in errors[0]) if case == "2d" else ("NaN" in errors[0])
    assert len(viewer.layers) == n_layers and widget.labels_layer is None
    np.testing.assert_array_equal(bad.data, before)
    assert widget.runner.status.text().startswith("failed")
    assert widget.runner.run_button.isEnabled()


def test_cancel_stops_the_run(widget, qtbot, errors):
    n_layers = len(widget.viewer.layers)
    widget.run()
    assert widget.running and not widget.runner.run_button.isEnabled()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert len(widget.viewer.layers) == n_layers and widget.labels_layer is None
    assert widget.runner.status.text() == "cancelled"
    assert widget.runner.run_button.isEnabled() and not widget.runner.cancel_button.isEnabled()
    assert not errors


def test_an_input_removed_during_the_run_gets_no_result(widget, qtbot, errors):
    viewer = widget.viewer
    widget.run()
    viewer.layers.remove("cine")
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == 0 and widget.labels_layer is None
    assert len(errors) == 1 and "'cine' was removed while it ran" in errors[0]


def test_closing_the_dock_cancels_the_run(make_napari_viewer, qtbot, tiny_checkpoint, cine, errors):
    viewer = make_napari_viewer()
    image, kwargs = cine
    viewer.add_image(image.copy(), name="cine", **kwargs)
    w = CardiacWidget(viewer)
    viewer.window.add_dock_widget(w, name="cardiac")
    w.model_picker.add_checkpoint(tiny_checkpoint)
    w.device_picker.setCurrentText("cpu")
    w.run()
    viewer.window.remove_dock_widget(w)          # what the dock's close button does
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    assert [layer.name for layer in viewer.layers] == ["cine"] and not errors
    assert w.runner.status.text() == "cancelled"


def test_save_labels_writes_nifti_in_the_source_geometry(done, tmp_path):
    from napari_medlearn.imaging.io import read_nifti

    w = done
    w.labels_layer.data_setitem((np.array([0]), np.array([2]), np.array([3]), np.array([4])), 3)
    assert w.labels_layer.data[0, 2, 3, 4] == 3
    out = w.save_labels(tmp_path / "cine_labels")  # suffix added
    assert out == tmp_path / "cine_labels.nii.gz" and out.exists()
    vol = read_nifti(out)
    np.testing.assert_array_equal(vol.data, w.labels_layer.data)
    np.testing.assert_allclose(vol.affine, w.viewer.layers["cine"].metadata["affine"], atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["cine_labels.nii.gz"]  # no temporary left


def test_saving_never_replaces_a_file_unasked(done, tmp_path, monkeypatch, errors):
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    w = done
    (tmp_path / "mine.nii.gz").write_bytes(b"precious")
    (tmp_path / "m.csv").write_bytes(b"my table")
    assert w.save_labels(tmp_path / "mine.nii.gz") is None and "already exists" in errors[-1]
    assert w.export_measures(tmp_path / "m.csv") is None
    # the dialog returns a name without its suffix: the file that would be written exists, so ask
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(tmp_path / "mine"), ""))
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.No)
    assert w.save_labels() is None and "mine.nii.gz already exists" in asked[0]
    assert (tmp_path / "mine.nii.gz").read_bytes() == b"precious"
    assert (tmp_path / "m.csv").read_bytes() == b"my table"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.Yes)
    assert w.save_labels() == tmp_path / "mine.nii.gz"
    assert w.export_measures(tmp_path / "m.csv", overwrite=True) == tmp_path / "m.csv"


def test_export_measures_writes_unit_named_columns(done, qtbot, tmp_path, tiny_checkpoint):
    w = done
    known = np.zeros_like(w.labels_layer.data)  # LV 400, 200, 300 voxels; myocardium 100
    known[0, 2:6, 20:30, 20:30] = 1
    known[1, 2:4, 20:30, 20:30] = 1
    known[2, 2:5, 20:30, 20:30] = 1
    known[:, 2:6, 30:35, 20:25] = 2
    w.labels_layer.data = known
    voxel_ml = float(np.prod(w.spacing)) / 1000.0
    wait_for_lvedv(w, qtbot, 400 * voxel_ml)
    assert w.review_bar.review("flagged") is None                     # a flag needs a reason
    assert w.review_bar.review("approved")["status"] == "approved"
    assert w.review_bar.state_label.text() == "review: approved"
    out = w.export_measures(tmp_path / "measures.csv")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and tuple(rows[0]) == CARDIAC_COLUMNS + REVIEW_COLUMNS
    row = rows[0]
    # the verdict and that the labels were edited by hand (the known labels were set above)
    assert (row["review_status"], row["hand_edited"]) == ("approved", "yes") and row["reviewed_at"]
    assert float(row["LVEDV_mL"]) == pytest.approx(400 * voxel_ml, abs=1e-3)
    assert float(row["LVESV_mL"]) == pytest.approx(200 * voxel_ml, abs=1e-3)
    assert float(row["LVEF_pct"]) == pytest.approx(50.0)
    assert float(row["LVM_g"]) == pytest.approx(100 * voxel_ml * 1.05, abs=1e-3)
    assert (row["ED_frame"], row["ES_frame"]) == ("0", "1")
    assert row["qc"] == ";".join(f["flag"] for f in w.qc)
    assert row["model"] == "tiny (file tiny.pt)" and row["model_sha256"] == zoo.sha256_of(tiny_checkpoint)
    assert row["source"] == "phantom"


def test_nothing_to_save_before_a_run(widget, errors, tmp_path):
    assert not widget.save_button.isEnabled()
    assert widget.save_labels(tmp_path / "x.nii.gz") is None
    assert widget.export_measures(tmp_path / "x.csv") is None
    assert len(errors) == 2 and not list(tmp_path.iterdir())


def test_runner_reports_cancel_when_the_method_stops_itself(qtbot):
    """Cancel pressed mid-step: the method raises InterruptedError on `cancelled`, the worker
    emits neither `returned` nor `aborted`; the runner must still end idle and "cancelled"."""
    import threading
    import time

    runner = TaskRunner()
    qtbot.addWidget(runner)
    inside = threading.Event()

    def steps(cancelled):
        yield 0, 1, "working"
        inside.set()
        while not cancelled():
            time.sleep(0.005)
        raise InterruptedError("cancelled")

    results = []
    runner.start(steps(runner.cancel_requested), results.append)
    assert inside.wait(10)
    runner.cancel()
    qtbot.waitUntil(lambda: not runner.running, timeout=TIMEOUT_MS)
    assert runner.status.text() == "cancelled" and results == []
    assert runner.run_button.isEnabled() and not runner.cancel_button.isEnabled()


def test_measures_follow_a_corrected_copy_accepted_in_mask_correction(done, qtbot, tmp_path):
    """Mask correction's Accept adds '<labels> [corrected]' (metadata corrected_from): the cardiac
    table, curve, save and export then describe that layer; the original stays in the viewer."""
    from acnn_helpers import tiny_acnn_checkpoint

    from napari_medlearn.widgets.acnn import MaskCorrectionWidget

    w = done
    viewer = w.viewer
    original = w.labels_layer
    original.data_setitem((np.array([0]), np.array([5]), np.array([30]), np.array([30])), 3)
    mc = MaskCorrectionWidget(viewer)
    qtbot.addWidget(mc)
    mc.model_picker.add_checkpoint(tiny_acnn_checkpoint(tmp_path))
    mc.labels_picker.value = original
    mc.run()
    qtbot.waitUntil(lambda: not mc.running, timeout=TIMEOUT_MS)
    mc.seen_check.setChecked(True)      # the untrained prior's proposal has warnings: looked at
    accepted = mc.accept()
    assert accepted.metadata["corrected_from"] == original.name
    assert accepted.metadata["correction"]["changed_voxels"] >= 0
    qtbot.waitUntil(lambda: w.labels_layer is accepted, timeout=5000)
    assert original in viewer.layers
    # an edit of the accepted layer moves the measures; the original's data is not what is measured
    idx = np.nonzero(np.ones(accepted.data.shape[1:], dtype=bool))
    accepted.data_setitem((np.zeros_like(idx[0]),) + idx, 1)
    accepted.data_setitem((np.array([1]), np.array([5]), np.array([30]), np.array([30])), 2)
    wait_for_lvedv(w, qtbot, frame_ml(w))
    assert not (np.asarray(original.data)[0] == 1).all()


def test_an_rgb_layer_is_refused_plainly_and_a_stack_without_spacing_warned(widget, qtbot, errors, monkeypatch):
    from napari_medlearn.widgets import cardiac as module

    viewer = widget.viewer
    widget.image_picker.value = viewer.add_image(np.zeros((64, 64, 3), np.uint8), name="photo", rgb=True)
    n = len(viewer.layers)
    run_and_wait(widget, qtbot)
    assert errors == ["photo is an RGB image; cardiac segmentation needs a grey-level cine or stack"]
    assert len(viewer.layers) == n
    warned = []
    monkeypatch.setattr(module, "show_warning", warned.append)
    widget.image_picker.value = viewer.add_image(viewer.layers["cine"].data[0], name="png stack")   # scale 1
    run_and_wait(widget, qtbot)
    assert len(warned) == 1 and "no voxel spacing" in warned[0] and "1 mm" in warned[0]


def test_a_save_that_cannot_be_written_is_one_notification_naming_the_file(done, tmp_path, errors):
    w = done
    (tmp_path / "afile").write_text("not a folder")
    target = tmp_path / "afile" / "labels.nii.gz"
    before = w.labels_layer.data.copy()
    assert w.save_labels(target) is None
    assert errors == [f"cannot write {target}: Not a directory"]
    assert w.export_measures(tmp_path / "afile" / "m.csv") is None
    assert errors[-1] == f"cannot write {tmp_path / 'afile' / 'm.csv'}: Not a directory"
    np.testing.assert_array_equal(w.labels_layer.data, before)          # nothing lost: save again elsewhere
    assert w.save_button.isEnabled() and w.save_labels(tmp_path / "ok.nii.gz") == tmp_path / "ok.nii.gz"
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_backend_setting_runs_that_backend_and_is_recorded(widget, qtbot, errors, monkeypatch):
    """Issue 36: the backend picker beside the device picker; the labels layer records what ran;
    without the CPU runtime its ``onnx`` entry cannot be chosen."""
    from napari_medlearn import inference
    from napari_medlearn.widgets._common import backend_picker

    assert [widget.backend_picker.itemText(i) for i in range(widget.backend_picker.count())] == list(inference.BACKENDS)
    widget.backend_picker.setCurrentText("torch")
    run_and_wait(widget, qtbot)
    assert not errors, errors
    assert widget.labels_layer.metadata["backend"] == "torch"
    monkeypatch.setattr(inference, "runtime_installed", lambda: False)
    combo = backend_picker()
    item = combo.model().item(inference.BACKENDS.index("onnx"))
    assert not item.isEnabled() and inference.INSTALL in item.toolTip()


def test_a_second_run_refreshes_its_layers_and_keeps_an_edited_one(done, qtbot):
    """One layer per output: a new run writes into the widget's unedited layers (no '[1]' copies);
    once the user has painted on the labels, they stay and the new labels are named with the model."""
    w = done
    viewer = w.viewer
    labels, prob = w.labels_layer, w.probability_layer
    n_layers = len(viewer.layers)
    assert viewer.layers.selection.active is labels            # the layer to paint on, not the last added
    run_and_wait(w, qtbot)
    assert len(viewer.layers) == n_layers
    assert w.labels_layer is labels and w.probability_layer is prob
    assert [la.name for la in viewer.layers] == ["cine", "cine [cardiac probability]", "cine [cardiac]"]
    value = (int(labels.data[0, 5, 30, 30]) + 1) % 4
    labels.paint((0, 5, 30, 30), value)                         # a user's stroke
    run_and_wait(w, qtbot)
    assert labels in viewer.layers and labels.name == "cine [cardiac]"
    new = w.labels_layer
    assert new is not labels and new.name == f"cine [cardiac {w.model_name}]"
    assert viewer.layers.selection.active is new
    assert w.probability_layer is prob                          # never painted on: refreshed


def test_saved_labels_reopen_in_the_widgets_colours(done, tmp_path):
    """Save -> reopen through the plugin's reader gives LV red, myocardium green, RV blue again
    (not napari's random colours) and the structure names under the cursor."""
    from napari_medlearn.imaging import structures

    w = done
    out = w.save_labels(tmp_path / "cine_cardiac.nii.gz")
    layer, = w.viewer.open(str(out), plugin="napari-medlearn")
    for value in (1, 2, 3):
        np.testing.assert_allclose(layer.colormap.map(value), w.labels_layer.colormap.map(value))
        np.testing.assert_allclose(layer.colormap.map(value), structures.color_dict("cardiac")[value])
    assert list(layer.features["structure"]) == ["background", "LV cavity", "myocardium", "RV cavity"]
    assert w.viewer.dims.axis_labels == ("t", "z", "y", "x")
