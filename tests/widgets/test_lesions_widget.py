"""The brain-lesion dock widget: modality pickers from the card, run in a worker, labels and
probability overlays, live volumes after hand edits, bad input, cancel, save without silent
overwrites. A tiny untrained DeepMedic on a 4 mm synthetic case keeps each run well under a
second; its labels are arbitrary, so edits set known regions and compare with known volumes."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_medlearn import zoo
from napari_medlearn.imaging.volume import Volume
from napari_medlearn.methods.lesions import TASK
from napari_medlearn.nets import DeepMedic
from napari_medlearn.samples.brain_lesions import synthetic_lesion_case
from napari_medlearn.widgets.lesions import LesionWidget

TIMEOUT_MS = 60_000
TINY_DEEPMEDIC = dict(in_channels=2, n_classes=4, fms_normal=(3,) * 8, subsample_factors=((3, 3, 3),),
                      fc_fms=(4,), dropout_fc=(0.0, 0.0))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    model = DeepMedic(**TINY_DEEPMEDIC)
    path = tmp_path_factory.mktemp("models") / "tiny-deepmedic.pt"
    zoo.save_checkpoint(model, path, "deepmedic", TINY_DEEPMEDIC, card={
        "name": "tiny-deepmedic", "task": TASK, "n_classes": 4, "label_values": [0, 1, 2, 4],
        "input": {"channels": ["FLAIR", "T1c"]}})
    return path


@pytest.fixture(scope="module")
def case():
    return synthetic_lesion_case(seed=1, spacing_mm=4.0, n_lesions=1)


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_checkpoint, case):
    viewer = make_napari_viewer()
    vols = case.volumes()
    # layer names as the reader gives them for the BraTS files
    for name, file in (("T1c", "T1c_subtrMeanDivStd"), ("FLAIR", "Flair_subtrMeanDivStd")):
        viewer.add_image(vols[name].data.copy(), name=file, **vols[name].layer_kwargs())
    w = LesionWidget(viewer)
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


def voxel_ml(w) -> float:
    return float(np.prod(w.spacing)) / 1000.0


def test_one_picker_per_card_channel_chosen_by_layer_name(widget):
    assert widget.channel_names == ("FLAIR", "T1c")
    assert widget.modality_pickers["FLAIR"].value.name == "Flair_subtrMeanDivStd"
    assert widget.modality_pickers["T1c"].value.name == "T1c_subtrMeanDivStd"
    assert widget.mask_picker.value == "automatic"
    native = widget.mask_picker.native
    names = [native.itemText(i) for i in range(native.count())]
    assert names[:2] == ["automatic", "none"] and "layer: T1c_subtrMeanDivStd" in names


def test_scans_opened_later_go_to_the_modality_they_name(make_napari_viewer, qtbot, tiny_checkpoint, case):
    from napari_medlearn.widgets.lesions import _names

    assert _names("Flair_subtrMeanDivStd", "FLAIR") and _names("sub-01 t1c", "T1c")
    assert not _names("T1c_x", "T1") and not _names("x FLAIR [DeepMedic]", "FLAIR")
    viewer = make_napari_viewer()
    w = LesionWidget(viewer)
    qtbot.addWidget(w)
    w.model_picker.add_checkpoint(tiny_checkpoint)
    vols = case.volumes()
    viewer.add_image(vols["FLAIR"].data, name="case FLAIR", **vols["FLAIR"].layer_kwargs())
    assert w.modality_pickers["T1c"].value.name == "case FLAIR"     # the only choice so far
    viewer.add_image(vols["T1c"].data, name="case T1c", **vols["T1c"].layer_kwargs())
    viewer.add_image(vols["T1c"].data, name="another FLAIR", **vols["T1c"].layer_kwargs())
    assert w.modality_pickers["FLAIR"].value.name == "case FLAIR"
    assert w.modality_pickers["T1c"].value.name == "case T1c"


def test_a_card_with_other_channels_gets_other_pickers(widget, tmp_path):
    import torch

    torch.manual_seed(1)
    args = dict(TINY_DEEPMEDIC, in_channels=1)
    path = tmp_path / "flair-only.pt"
    zoo.save_checkpoint(DeepMedic(**args), path, "deepmedic", args, card={
        "name": "flair-only", "task": TASK, "n_classes": 4, "input": {"channels": ["FLAIR"]}})
    widget.model_picker.add_checkpoint(path)
    assert widget.channel_names == ("FLAIR",)
    assert not widget._all_pickers["T1c"].native.isVisibleTo(widget)
    widget.model_picker.setCurrentIndex(widget.model_picker.findText("tiny-deepmedic.pt"))
    assert widget.channel_names == ("FLAIR", "T1c")


def test_run_adds_labels_and_probabilities_over_the_input(done, case):
    w = done
    viewer = w.viewer
    flair = viewer.layers["Flair_subtrMeanDivStd"]
    np.testing.assert_array_equal(flair.data, case.channels[0])       # inputs untouched
    np.testing.assert_array_equal(viewer.layers["T1c_subtrMeanDivStd"].data, case.channels[1])
    labels = viewer.layers["Flair_subtrMeanDivStd [DeepMedic]"]
    assert labels is w.labels_layer and labels.data.dtype == np.uint8
    assert labels.data.shape == flair.data.shape
    assert set(np.unique(labels.data)) <= {0, 1, 2, 4}
    np.testing.assert_allclose(labels.scale, flair.scale)
    np.testing.assert_allclose(labels.translate, flair.translate)
    np.testing.assert_allclose(labels.metadata["affine"], flair.metadata["affine"])
    assert labels.metadata["model"] == "tiny-deepmedic (file tiny-deepmedic.pt)"
    assert labels.metadata["postprocess"]["decision"] == "argmax"
    assert not labels.data[~case.brain_mask].any()     # the automatic mask: skull-stripped input

    assert sorted(w.probability_layers) == [1, 2, 4]
    shown = [v for v, layer in w.probability_layers.items() if layer.visible]
    assert shown == [2]
    for value, layer in w.probability_layers.items():
        assert tuple(layer.contrast_limits) == (0.0, 1.0) and layer.blending == "additive"
        assert layer.data.shape == flair.data.shape and 0.0 <= layer.data.min() <= layer.data.max() <= 1.0
        np.testing.assert_allclose(layer.scale, flair.scale)
    assert viewer.layers[-1] is labels                 # labels on top of the heat maps

    ml = voxel_ml(w)
    counts = {v: int((labels.data == v).sum()) for v in (1, 2, 4)}
    assert w.volume_text("oedema_mL") == f"{counts[2] * ml:.2f}"
    assert w.volume_text("whole_tumour_mL") == f"{sum(counts.values()) * ml:.2f}"
    assert w.runner.status.text() == "done" and w.save_button.isEnabled()

    viewer.layers.remove(labels)                        # a removed result is not measured any more
    assert w.labels_layer is None and not w.save_button.isEnabled()
    assert w.volume_text("whole_tumour_mL") == "\u2013"


def test_hand_edits_update_the_volumes(done, qtbot):
    w = done
    layer = w.labels_layer
    ml = voxel_ml(w)
    # new data (the `data` event): a known tumour
    known = np.zeros_like(layer.data)
    known[5:7, 10:15, 10:15] = 2          # 50 voxels oedema
    known[5, 11:13, 11:13] = 4            # 4 enhancing
    known[6, 12, 12] = 1                  # 1 necrotic
    layer.data = known
    qtbot.waitUntil(lambda: w.volumes.get("whole_tumour_mL") == pytest.approx(50 * ml), timeout=5000)
    assert w.volume_text("oedema_mL") == f"{45 * ml:.2f}"
    assert w.volume_text("tumour_core_mL") == f"{5 * ml:.2f}"

    # the brush (the `paint` event, before napari writes): erase slice 6 with a wide brush
    layer.brush_size = 1000
    layer.paint((6, 12, 12), 0)
    qtbot.waitUntil(lambda: w.volumes.get("whole_tumour_mL") == pytest.approx(25 * ml), timeout=5000)
    assert w.volume_text("necrotic_core_mL") == f"{0.0:.2f}"

    # data_setitem (fill / paint tools) and an in-place change announced with set_data
    layer.data_setitem((np.array([9]), np.array([9]), np.array([9])), 4)
    qtbot.waitUntil(lambda: w.volumes.get("enhancing_mL") == pytest.approx(5 * ml), timeout=5000)
    layer.data[10, 10, 10:12] = 1
    layer.events.set_data()
    qtbot.waitUntil(lambda: w.volumes.get("necrotic_core_mL") == pytest.approx(2 * ml), timeout=5000)

    # a value outside BraTS: dashes and the reason, not a crash
    layer.data = np.full_like(known, 7)
    qtbot.waitUntil(lambda: not w.volumes, timeout=5000)
    assert w.volume_text("whole_tumour_mL") == "\u2013" and "unknown values [7]" in w.warning.text()


PROBLEMS = {"elsewhere": "register them first", "2d": "3D", "nan": "NaN", "rgb": "is an RGB image",
            "same": "same layer", "mask": "brain mask", "missing": "missing modality"}


def test_bad_input_is_one_notification_and_changes_nothing(widget, qtbot, errors, case):
    viewer = widget.viewer
    flair = viewer.layers["Flair_subtrMeanDivStd"]
    t1c = viewer.layers["T1c_subtrMeanDivStd"]
    kw = case.volumes()["T1c"].layer_kwargs()
    nan = case.channels[1].copy()
    nan[10, 10, 10] = np.nan
    far = case.affine.copy()
    far[:3, 3] += 500.0
    bad = {
        "elsewhere": viewer.add_image(case.channels[1].copy(), name="T1c elsewhere", **Volume(
            case.channels[1], far, ("z", "y", "x")).layer_kwargs()),
        "2d": viewer.add_image(case.channels[1][10].copy(), name="T1c slice"),
        "nan": viewer.add_image(nan, name="T1c with NaN", **kw),
        "rgb": viewer.add_image(np.zeros((40, 50, 3), np.uint8), name="photo", rgb=True),
        "same": flair,
    }
    viewer.add_labels(np.ones((3, 4, 5), np.uint8), name="wrong mask")
    for problem, expected in PROBLEMS.items():
        widget.set_modality("T1c", bad.get(problem, t1c))
        widget.mask_picker.value = viewer.layers["wrong mask"] if problem == "mask" else "automatic"
        if problem == "missing":
            for layer in [layer for layer in viewer.layers if layer is not flair]:
                viewer.layers.remove(layer)
        before = {layer.name: np.array(layer.data, copy=True) for layer in viewer.layers}
        errors.clear()
        run_and_wait(widget, qtbot)
        assert len(errors) == 1 and expected in errors[0], (problem, errors)
        assert widget.labels_layer is None and [layer.name for layer in viewer.layers] == list(before)
        for layer in viewer.layers:
            np.testing.assert_array_equal(layer.data, before[layer.name])
        assert widget.runner.run_button.isEnabled()


def test_a_t1c_on_another_grid_is_resampled_onto_the_flairs(widget, qtbot, errors, case, monkeypatch):
    """A T1c stored on another grid of the same scanner frame (here the same voxels written the
    other way round, so the result must not change) and a brain mask on a third grid."""
    from napari_medlearn.widgets import lesions as lesion_widget

    infos = []
    monkeypatch.setattr(lesion_widget, "show_info", infos.append)
    mask = np.zeros(case.labels.shape, np.uint8)
    mask[6:16, 8:24, 8:24] = 1
    widget.viewer.add_labels(mask, name="my mask", **case.volumes()["labels"].layer_kwargs())
    widget.mask_picker.value = widget.viewer.layers["my mask"]
    run_and_wait(widget, qtbot)
    assert not errors and not infos
    same = np.array(widget.labels_layer.data, copy=True)

    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1, case.labels.shape[1] - 1
    flip[2, 2], flip[2, 3] = -1, case.labels.shape[2] - 1
    swap = np.eye(4)[[2, 1, 0, 3]]
    stored = Volume(np.ascontiguousarray(np.swapaxes(case.channels[1][:, ::-1, ::-1], 0, 2)),
                    case.affine @ flip @ swap, ("z", "y", "x"), {"modality": "T1c"})
    widget.set_modality("T1c", widget.viewer.add_image(stored.data, name="T1c sagittal",
                                                       **stored.layer_kwargs()))
    fz = np.eye(4)
    fz[0, 0], fz[0, 3] = -1, case.labels.shape[0] - 1
    mask_other = Volume(np.ascontiguousarray(mask[::-1]), case.affine @ fz, ("z", "y", "x"))
    widget.viewer.add_labels(mask_other.data, name="mask reversed", **mask_other.layer_kwargs())
    widget.mask_picker.value = widget.viewer.layers["mask reversed"]
    run_and_wait(widget, qtbot)
    assert not errors, errors
    assert len(infos) == 1 and "T1c resampled onto the FLAIR grid" in infos[0]
    np.testing.assert_array_equal(widget.labels_layer.data, same)
    assert widget.labels_layer.data.shape == case.labels.shape


def test_cancel_stops_the_run(widget, qtbot, errors):
    n_layers = len(widget.viewer.layers)
    widget.run()
    assert widget.running and not widget.runner.run_button.isEnabled()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert len(widget.viewer.layers) == n_layers and widget.labels_layer is None
    assert widget.runner.status.text() == "cancelled" and not errors


def test_brain_mask_from_a_layer(widget, qtbot, errors, case):
    mask = np.zeros(case.labels.shape, np.uint8)
    mask[8:14, 10:20, 10:20] = 1
    widget.viewer.add_labels(mask, name="my mask", **case.volumes()["labels"].layer_kwargs())
    widget.mask_picker.value = widget.viewer.layers["my mask"]
    run_and_wait(widget, qtbot)
    assert not errors
    assert not widget.labels_layer.data[mask == 0].any()
    assert widget.viewer.layers["my mask"].data.sum() == mask.sum()


def test_save_writes_nifti_and_csv_and_never_overwrites_silently(done, qtbot, tmp_path, errors,
                                                                  tiny_checkpoint):
    from napari_medlearn.imaging.io import read_nifti

    w = done
    known = np.zeros_like(w.labels_layer.data)
    known[4:6, 10:14, 10:14] = 2
    known[5, 11:13, 11:13] = 4
    w.labels_layer.data = known
    qtbot.waitUntil(lambda: w.volumes.get("whole_tumour_mL") == pytest.approx(32 * voxel_ml(w)), timeout=5000)
    nifti, table = w.save(tmp_path / "case1")          # suffix added
    assert nifti == tmp_path / "case1.nii.gz" and table == tmp_path / "case1_volumes.csv"
    vol = read_nifti(nifti)
    np.testing.assert_array_equal(vol.data, known)
    np.testing.assert_allclose(vol.affine, w.viewer.layers["Flair_subtrMeanDivStd"].metadata["affine"], atol=1e-5)
    with open(table, newline="") as f:
        (row,) = list(csv.DictReader(f))
    ml = voxel_ml(w)
    # not reviewed yet, edited by hand (the known labels above); reopened in the BraTS colours
    assert (row["review_status"], row["hand_edited"]) == ("", "yes")
    assert vol.meta["structures"] == "brats"
    assert float(row["oedema_mL"]) == pytest.approx(28 * ml, abs=1e-3)
    assert float(row["enhancing_mL"]) == pytest.approx(4 * ml, abs=1e-3)
    assert float(row["whole_tumour_mL"]) == pytest.approx(32 * ml, abs=1e-3)
    assert row["model"] == "tiny-deepmedic (file tiny-deepmedic.pt)" and row["labels_file"] == "case1.nii.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case1.nii.gz", "case1_volumes.csv"]

    # again without permission: refused, files untouched; with it: replaced
    stamp = nifti.stat().st_mtime_ns, table.read_bytes()
    w.labels_layer.data = np.zeros_like(known)
    assert w.save(tmp_path / "case1.nii.gz") is None
    assert len(errors) == 1 and "already exists" in errors[0]
    assert (nifti.stat().st_mtime_ns, table.read_bytes()) == stamp
    assert w.save(tmp_path / "case1.nii.gz", overwrite=True) is not None
    assert not read_nifti(nifti).data.any()


def test_save_dialog_asks_before_replacing(done, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog, QMessageBox

    w = done
    target = tmp_path / "mine.nii.gz"
    target.write_bytes(b"precious")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    asked = []

    def answer(reply):
        def question(*args, **kwargs):
            asked.append(args[2])
            return reply
        return question

    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.No))
    assert w.save() is None and target.read_bytes() == b"precious"
    assert "mine.nii.gz already exists" in asked[0]
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.Yes))
    assert w.save() == (target, tmp_path / "mine_volumes.csv")
    assert target.read_bytes() != b"precious" and len(asked) == 2


def test_nothing_to_save_before_a_run(widget, errors, tmp_path):
    assert not widget.save_button.isEnabled()
    assert widget.save(tmp_path / "x.nii.gz") is None
    assert len(errors) == 1 and not list(tmp_path.iterdir())


def test_dock_widget_and_sample_are_registered(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, w = viewer.window.add_plugin_dock_widget("napari-medlearn", "Brain lesion segmentation")
    assert isinstance(w, LesionWidget) and w.model_picker.task == TASK
    viewer.open_sample("napari-medlearn", "brain_lesion")
    assert w.modality_pickers["FLAIR"].value.name == "synthetic lesion FLAIR"
    assert w.modality_pickers["T1c"].value.name == "synthetic lesion T1c"
    truth = viewer.layers["synthetic lesion FLAIR [truth]"]
    np.testing.assert_allclose(truth.colormap.map(np.array([4]))[0], (1.0, 0.9, 0.15, 1.0), atol=1e-6)
    np.testing.assert_allclose(truth.translate, viewer.layers["synthetic lesion FLAIR"].translate)


def test_scans_that_look_not_skull_stripped_give_a_warning_and_still_a_result(widget, qtbot, errors, monkeypatch):
    from napari_medlearn.methods import lesions as lesion_method
    from napari_medlearn.widgets import lesions as lesion_widget

    warnings = []
    monkeypatch.setattr(lesion_widget, "show_warning", warnings.append)
    run_and_wait(widget, qtbot)
    assert not errors and not warnings                     # the synthetic brain is a brain
    assert widget.labels_layer.metadata["warnings"] == []
    # a limit below this brain's volume stands in for a whole head
    monkeypatch.setattr(lesion_method, "BRAIN_VOLUME_LIMIT_ML", 10.0)
    run_and_wait(widget, qtbot)
    assert not errors and len(warnings) == 1 and "skull-stripped" in warnings[0]
    assert widget.labels_layer.metadata["warnings"] == warnings


def test_a_second_run_refreshes_labels_and_probabilities_instead_of_piling_up(done, qtbot):
    """A new run writes into the widget's own unedited layers: no '... [DeepMedic] [1]', no second
    set of probability maps; the labels layer is the active one; p(oedema) is not the oedema's colour."""
    from napari_medlearn.imaging import structures

    w = done
    viewer = w.viewer
    names = [layer.name for layer in viewer.layers]
    labels, probs = w.labels_layer, dict(w.probability_layers)
    probs[4].visible = True                                   # the user's choice of what to see stays
    run_and_wait(w, qtbot)
    assert [layer.name for layer in viewer.layers] == names
    assert w.labels_layer is labels and w.probability_layers == probs and probs[4].visible
    assert viewer.layers.selection.active is labels
    oedema = structures.color_dict("brats")[2]
    assert not np.allclose(probs[2].colormap.map(np.array([1.0]))[0], oedema)
    labels.name = "my reviewed lesions"                       # renamed: the user's now
    run_and_wait(w, qtbot)
    assert labels in viewer.layers and w.labels_layer is not labels
    assert w.labels_layer.name == f"Flair_subtrMeanDivStd [DeepMedic {w.model_name}]"
    assert len(viewer.layers) == len(names) + 1
