"""The cohort dock widget: find the cases, run them in a worker, the table of statuses and
figures, a case opened as layers with its geometry for review, errors as notifications, cancel."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_medlearn.imaging.io import read_nifti
from napari_medlearn.widgets.batch import BatchWidget

TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from helpers import write_cine_cohort

    return write_cine_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture
def widget(make_napari_viewer, qtbot, tiny_cardiac):
    w = BatchWidget(make_napari_viewer())
    qtbot.addWidget(w)
    w.model_picker.add_checkpoint(tiny_cardiac)
    w.device_picker.setCurrentText("cpu")
    return w


def run_and_wait(w, qtbot):
    worker = w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT_MS)
    return worker


def test_a_cohort_is_run_listed_and_its_cases_opened(widget, qtbot, errors, cohort, tmp_path):
    w = widget
    w.cohort_edit.setText(str(cohort))
    w.out_edit.setText(str(tmp_path / "out"))
    assert [c.name for c in w.find()] == ["case1", "case2", "flat"]
    assert w.cell("case1", "status") == "to do"
    assert run_and_wait(w, qtbot) is not None
    assert not errors, errors
    assert [w.cell(c, "status") for c in ("case1", "case2", "flat")] == ["done", "done", "failed"]
    assert "2-D" in w.cell("flat", "error")
    assert w.table.horizontalHeaderItem(2).text() == "LVEDV (mL)"
    assert "2 done" in w.summary.text() and (tmp_path / "out" / "cohort.csv").exists()
    # a case opens as its cine and its editable labels, on the input's grid
    layers = w.open_case(0)
    assert [type(layer) for layer in layers] == [Image, Labels]
    src = read_nifti(cohort / "case1.nii.gz")
    assert layers[0].data.shape == layers[1].data.shape == src.data.shape
    np.testing.assert_allclose(layers[1].scale, layers[0].scale)
    np.testing.assert_array_equal(layers[1].data, read_nifti(tmp_path / "out" / "case1" / "labels.nii.gz").data)
    # a failed case says why instead of opening
    assert w.open_case(2) == [] and "failed" in errors[-1]
    # running again resumes: nothing is recomputed
    run_and_wait(w, qtbot)
    assert [w.cell(c, "status") for c in ("case1", "case2")] == ["skipped", "skipped"]


def test_bad_choices_are_notifications(widget, qtbot, errors, cohort, tmp_path):
    w = widget
    assert w.run() is None and "no cohort" in errors[-1]
    w.cohort_edit.setText(str(tmp_path / "missing"))
    w.out_edit.setText(str(tmp_path / "out"))
    assert w.run() is None and "no such file" in errors[-1]
    w.cohort_edit.setText(str(cohort))
    w.out_edit.setText(str(cohort / "results"))
    assert w.run() is None and "inside the cohort" in errors[-1]
    assert not (cohort / "results").exists()
    w.job_picker.setCurrentText("segment-lesions")                 # image files are not sessions
    w.out_edit.setText(str(tmp_path / "out"))
    assert w.run() is None and "no cases found" in errors[-1]
    assert w.model_picker.task == "brain-lesion-segmentation"


def test_cancel_stops_between_cases(widget, qtbot, errors, cohort, tmp_path, monkeypatch):
    from napari_medlearn import batch

    w = widget
    w.cohort_edit.setText(str(cohort))
    w.out_edit.setText(str(tmp_path / "out"))
    real = batch.run_case

    def run_then_cancel(*args, **kwargs):          # Cancel pressed while the first case runs
        outcome = real(*args, **kwargs)
        w.runner._cancel = True
        return outcome

    monkeypatch.setattr(batch, "run_case", run_then_cancel)
    assert run_and_wait(w, qtbot) is not None
    assert w.runner.status.text() == "cancelled" and w.result is None and not errors
    assert (tmp_path / "out" / "case1" / "labels.nii.gz").exists()
    assert not (tmp_path / "out" / "case2").exists()
    assert [r.split(",")[0] for r in (tmp_path / "out" / "cohort.csv").read_text().splitlines()] == ["case", "case1"]


def test_a_case_corrected_by_hand_is_measured_again_and_kept(widget, qtbot, errors, cohort, tmp_path):
    import csv

    import numpy as np

    from napari_medlearn.methods.cardiac import measure_with_qc

    w = widget
    w.cohort_edit.setText(str(cohort))
    out = tmp_path / "out"
    w.out_edit.setText(str(out))
    run_and_wait(w, qtbot)
    image, labels = w.open_case(1)                        # case2
    assert not w.save_button.isEnabled()
    # a hand edit: frame 0 all LV cavity, a little myocardium in frame 1 so QC still sees a heart
    idx = np.nonzero(np.ones(labels.data.shape[1:], dtype=bool))
    labels.data_setitem((np.zeros_like(idx[0]),) + idx, 1)
    labels.data_setitem((np.array([1, 1]), np.array([2, 2]), np.array([20, 21]), np.array([20, 20])), 2)
    qtbot.waitUntil(lambda: w.cell("case2", "status") == "edited", timeout=5000)
    expected, _ = measure_with_qc(labels.data, labels.scale[1:])
    assert w.cell("case2", "LVEDV_mL") == f"{expected['LVEDV_mL']:.1f}"
    row = w.save_correction()
    assert not errors, errors
    assert w.cell("case2", "status") == "corrected" and row["corrected"] == "labels_corrected.nii.gz"
    np.testing.assert_array_equal(read_nifti(out / "case2" / "labels_corrected.nii.gz").data, labels.data)
    assert not np.array_equal(read_nifti(out / "case2" / "labels.nii.gz").data, labels.data)   # the model's stays
    with open(out / "cohort.csv", newline="") as f:
        table = {r["case"]: r for r in csv.DictReader(f)}
    assert float(table["case2"]["LVEDV_mL"]) == pytest.approx(expected["LVEDV_mL"], abs=1e-3)
    assert table["case2"]["corrected"] == "labels_corrected.nii.gz" and table["case1"]["corrected"] == ""
    # resuming keeps the correction; opening the case again shows the corrected labels
    run_and_wait(w, qtbot)
    assert w.cell("case2", "status") == "skipped"
    assert w.cell("case2", "LVEDV_mL") == f"{expected['LVEDV_mL']:.1f}"
    again = w.open_case(1)
    assert again[-1].name == "case2 [labels corrected]"
    np.testing.assert_array_equal(again[-1].data, labels.data)


def test_an_output_folder_held_by_another_run_is_one_notification(widget, qtbot, errors, cohort, tmp_path):
    from napari_medlearn.imaging.atomic import folder_lock

    w = widget
    w.cohort_edit.setText(str(cohort))
    w.out_edit.setText(str(tmp_path / "out"))
    with folder_lock(tmp_path / "out", "medlearn batch segment-heart elsewhere"):
        run_and_wait(w, qtbot)
    assert len(errors) == 1 and "is in use by `medlearn batch segment-heart elsewhere`" in errors[0]
    assert not (tmp_path / "out" / "cohort.csv").exists() and not (tmp_path / "out" / "case1").exists()


def test_cases_are_reviewed_into_case_json_and_cohort_csv(widget, qtbot, errors, cohort, tmp_path):
    """Approve / Needs edit / Flag (with a reason) land in case.json and cohort.csv (review_status,
    hand_edited, reviewer, time), survive a resumed run, and Next unreviewed skips reviewed and
    failed cases; an opened case's labels are in the cardiac colours."""
    import csv
    import json

    from napari_medlearn.imaging import structures

    w = widget
    out = tmp_path / "out"
    w.cohort_edit.setText(str(cohort))
    w.out_edit.setText(str(out))
    w.find()
    run_and_wait(w, qtbot)
    assert w.review_case("flagged", row=0, reason="") is None and "reason" in errors[-1]
    assert w.review_case("flagged", row=0, reason="apex cut off")["review_status"] == "flagged"
    review = json.loads((out / "case1" / "case.json").read_text())["review"]
    assert review["status"] == "flagged" and review["reason"] == "apex cut off" and review["at"]
    assert w.cell("case1", "review_status") == "flagged"
    # next unreviewed: case2 (case1 is reviewed, flat failed), opened in the cardiac colours
    assert w.next_unreviewed() == 1
    labels = w.viewer.layers["case2 [labels]"]
    np.testing.assert_allclose(labels.colormap.map(2), structures.color_dict("cardiac")[2])
    w.review_case("approved", row=1)
    assert w.next_unreviewed() is None and "every finished case" in errors[-1]
    run_and_wait(w, qtbot)                                    # a resumed run keeps the verdicts
    with open(out / "cohort.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["case1"]["review_status"] == "flagged" and rows["case1"]["review_reason"] == "apex cut off"
    assert rows["case2"]["review_status"] == "approved" and rows["case2"]["hand_edited"] == "no"
    assert rows["case1"]["reviewed_at"] and "reviewer" in rows["case1"]
    assert w.cell("case2", "review_status") == "approved"
